"""On the real Fashion-MNIST, where it is installed (CI installs Debian's dataset-fashion-mnist)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nas.cli import app
from nas.data import load_dataset
from nas.export import write_export
from nas.retrain import describe_model
from nas.data import prepare_final_data
from nas.model import new_model
from nas.retrain import score_on_test
from nas.train import train_spec
from nas.space import sample
from nas.spacefile import load_space
from nas.train import fit

REAL = Path("/usr/share/datasets/fashion-mnist")
SPACES = Path(__file__).parent.parent / "nas" / "spaces"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_data,
    pytest.mark.skipif(not REAL.is_dir(), reason=f"Fashion-MNIST not installed in {REAL} (apt-get install dataset-fashion-mnist)"),
]


def test_the_debian_files_load_whole_and_balanced():
    ds = load_dataset("fashion-mnist", REAL)
    assert ds.x_train.shape == (60_000, 1, 28, 28) and ds.x_test.shape == (10_000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0


@pytest.mark.slow
def test_the_tutorial_lenet_learns_in_two_epochs_and_predict_names_real_test_images(tmp_path):
    ds = load_dataset("fashion-mnist", REAL)
    ds = dataclasses.replace(ds, x_train=ds.x_train[:30_000], y_train=ds.y_train[:30_000])  # half: it reaches ~0.79
    data = prepare_final_data(ds, torch.device("cpu"))
    spec = sample(load_space(SPACES / "seed_lenet.yaml"))
    model, history = train_spec(spec, data, 2, 0, torch.device("cpu"))
    metrics = describe_model(model, spec, ds) | score_on_test(model, data.test, ds.classes) | {"epochs": 2}
    assert metrics["test_accuracy"] >= 0.75
    write_export(tmp_path / "e", model, spec, metrics, data.test.x)
    files = []
    for i in range(20):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(ds.x_test[i, 0].numpy()).save(files[-1])
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "e"), *map(str, files), "--top", 1, "--json"])
    assert result.exit_code == 0, result.output
    said = [row["top"][0]["class"] for row in json.loads(result.stdout)]
    assert sum(s == ds.classes[y] for s, y in zip(said, ds.y_test[:20])) >= 13  # the model is ~79% right


@pytest.mark.slow
def test_bf16_autocast_learns_as_well_as_fp32():
    """The GPU's default precision path, run on the CPU: it must train, not just run (one epoch on half the
    training set: fp32 reaches about 0.73 there)."""
    ds = load_dataset("fashion-mnist", REAL)
    ds = dataclasses.replace(ds, x_train=ds.x_train[:30_000], y_train=ds.y_train[:30_000])
    data = prepare_final_data(ds, torch.device("cpu"))
    spec = sample(load_space(SPACES / "seed_lenet.yaml"))
    acc = {}
    for precision in ("fp32", "bf16"):
        model = new_model(spec, data, 0, torch.device("cpu"))
        acc[precision] = fit(model, data.train, data.test, spec.training, epochs=1, precision=precision)[-1].val_acc
    assert acc["bf16"] >= 0.65 and abs(acc["bf16"] - acc["fp32"]) < 0.03, acc
