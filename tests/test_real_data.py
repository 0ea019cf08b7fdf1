"""On the real Fashion-MNIST, where it is installed (CI installs Debian's dataset-fashion-mnist)."""

from pathlib import Path

import pytest
import torch

from nas.data import load_dataset
from nas.objective import prepare_final_data, score_on_test, train_spec
from nas.space import load_space, sample

REAL = Path("/usr/share/datasets/fashion-mnist")
SPACES = Path(__file__).parent.parent / "search_spaces"

pytestmark = [
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
def test_the_tutorial_lenet_learns_in_two_epochs():
    ds = load_dataset("fashion-mnist", REAL)
    data = prepare_final_data(ds, torch.device("cpu"))
    model, history = train_spec(sample(load_space(SPACES / "seed_lenet.yaml")), data, 2, 0, torch.device("cpu"))
    assert score_on_test(model, data.val, ds.classes)["test_accuracy"] >= 0.80
