"""The export folder's portable formats and `nas predict`, on a real exported model of a real study."""

import json

import numpy as np
import onnxruntime
import optuna
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import nas
from nas.cli import app
from nas.data import load_dataset


def test_onnx_and_torchscript_match_pytorch_at_any_batch_size(finished_study, idx_dir):
    _, out = finished_study
    model = nas.load_model(out)
    session = onnxruntime.InferenceSession(out / "model.onnx", providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(out / "model.ts")
    x = load_dataset("fashion-mnist", idx_dir).x_test.float() / 255  # real test images, as ToTensor gives them
    for n in (1, 7, len(x)):
        with torch.inference_mode():
            expected = model(x[:n])
            assert (scripted(x[:n]) - expected).abs().max().item() < 1e-4
        got = session.run(["logits"], {"images": x[:n].numpy()})[0]
        assert got.shape == (n, 10) and np.abs(got - expected.numpy()).max() < 1e-4


def test_metrics_carry_the_confusion_matrix_and_the_study_records_the_export(finished_study, idx_dir):
    db, out = finished_study
    metrics = json.loads((out / "metrics.json").read_text())
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == len(load_dataset("fashion-mnist", idx_dir).y_test)
    assert np.trace(confusion) / confusion.sum() == pytest.approx(metrics["test_accuracy"])
    per_class = np.diag(confusion) / confusion.sum(1)
    assert list(per_class) == pytest.approx(list(metrics["per_class_accuracy"].values()))
    assert metrics["onnx_max_abs_diff"] < 1e-4 and metrics["torchscript_max_abs_diff"] < 1e-4
    recorded = optuna.load_study(study_name="tiny", storage=db).user_attrs["export"]
    assert recorded["path"] == str(out.resolve()) and recorded["confusion"] == metrics["confusion"]


def test_predict_classifies_png_files_and_npz_as_the_model_does(finished_study, idx_dir, tmp_path):
    _, out = finished_study
    ds = load_dataset("fashion-mnist", idx_dir)
    files = []
    for i in range(4):
        files.append(tmp_path / f"test{i}.png")
        Image.fromarray(ds.x_test[i, 0].numpy()).save(files[-1])
    np.savez(tmp_path / "more.npz", x=ds.x_test[4:6, 0].numpy())
    result = CliRunner().invoke(app, ["predict", str(out), *map(str, files), str(tmp_path / "more.npz"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    with torch.inference_mode():
        probs = torch.softmax(nas.load_model(out)(ds.x_test[:6].float() / 255), 1)
    assert [r["file"] for r in rows] == [*map(str, files), f"{tmp_path / 'more.npz'}[0]", f"{tmp_path / 'more.npz'}[1]"]
    assert [r["top"][0]["class"] for r in rows] == [ds.classes[i] for i in probs.argmax(1)]
    assert [r["top"][0]["probability"] for r in rows] == pytest.approx(probs.max(1).values.tolist(), abs=1e-6)
    assert all(len(r["top"]) == 3 for r in rows)


def test_predict_through_onnx_gives_the_torch_models_probabilities_for_every_class(finished_study, idx_dir, tmp_path):
    """`nas predict` runs model.onnx; every class's probability equals the PyTorch model's (`nas.load_model`),
    for PNG files, a colour photo converted to the model's gray 28×28, and an .npz."""
    _, out = finished_study
    ds = load_dataset("fashion-mnist", idx_dir)
    files = []
    for i in range(3):
        files.append(tmp_path / f"t{i}.png")
        Image.fromarray(ds.x_test[i, 0].numpy()).save(files[-1])
    Image.new("RGB", (40, 30), (200, 120, 30)).save(tmp_path / "photo.png")
    np.savez(tmp_path / "more.npz", x=ds.x_test[3:8, 0].numpy())
    result = CliRunner().invoke(app, ["predict", str(out), *map(str, files), str(tmp_path / "photo.png"),
                                      str(tmp_path / "more.npz"), "--top", "10", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    photo = np.array(Image.open(tmp_path / "photo.png").convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    x = torch.cat([ds.x_test[:3], torch.from_numpy(photo)[None, None], ds.x_test[3:8]]).float() / 255
    with torch.inference_mode():
        expected = torch.softmax(nas.load_model(out)(x), 1)
    assert len(rows) == 9 and all(len(r["top"]) == len(ds.classes) for r in rows)
    for row, probs in zip(rows, expected):
        got = {c["class"]: c["probability"] for c in row["top"]}
        assert [got[c] for c in ds.classes] == pytest.approx(probs.tolist(), abs=1e-4)
        assert [c["probability"] for c in row["top"]] == sorted(got.values(), reverse=True)


def test_predict_resizes_colour_photos_to_the_models_input(finished_study, tmp_path):
    _, out = finished_study
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photo)
    result = CliRunner().invoke(app, ["predict", str(out), str(photo), "--top", 2])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{photo}: ") and result.output.count(".") >= 2


@pytest.mark.parametrize("name, make, expected", [
    ("bad.png", lambda p: p.write_text("not an image"), "not an image PIL can read"),
    ("gone.png", lambda p: None, "no such file"),
    ("small.npz", lambda p: np.savez(p, x=np.zeros((2, 6, 6), np.uint8)), "are 1×6×6 (C×H×W) but the model takes 1×28×28"),
    ("float.npz", lambda p: np.savez(p, x=np.zeros((2, 28, 28))), "expected uint8 images N×H×W or N×H×W×C"),
    ("two.npz", lambda p: np.savez(p, a=np.zeros(1), b=np.zeros(1)), "which array holds the images? Name it x"),
], ids=["predict: not an image", "predict: missing file", "predict: wrong size", "predict: npz floats",
        "predict: npz ambiguous"])
def test_predict_refuses_unreadable_files(finished_study, tmp_path, name, make, expected):
    _, out = finished_study
    bad = tmp_path / name
    make(bad)
    result = CliRunner().invoke(app, ["predict", str(out), str(bad)])
    assert result.exit_code == 2 and expected in " ".join(result.output.split())


MODERN = """architecture:
  blocks:
    - {conv: residual, channels: 8, batch_norm: true}
    - {conv: sepconv, channels: 16, batch_norm: true, padding: same}
  head: {layers: 1, units: 16}
  readout: gap
training: {optimizer: sgd, lr: 0.05, momentum: 0.9, batch_size: 32, schedule: onecycle, label_smoothing: 0.1, augment: crop_flip}
budget: {epochs: 2}
"""


def test_residual_separable_and_gap_nets_train_export_to_onnx_and_load_back(tmp_path, idx_dir):
    (tmp_path / "modern.yaml").write_text(MODERN)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", "--space", str(tmp_path / "modern.yaml"), "--data-dir", str(idx_dir),
                                      "--export", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["onnx_max_abs_diff"] < 1e-4 and metrics["torchscript_max_abs_diff"] < 1e-4
    model = nas.load_model(out)  # rebuilt from arch.yaml: the spec round-trips with the new fields
    assert "residual:8" in metrics["arch"] and "gap" in metrics["arch"] and "onecycle ls=0.1" in metrics["arch"]
    x = load_dataset("fashion-mnist", idx_dir).x_test[:5].float() / 255
    session = onnxruntime.InferenceSession(out / "model.onnx", providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        assert np.abs(session.run(["logits"], {"images": x.numpy()})[0] - model(x).numpy()).max() < 1e-4
