"""Every bad input in docs/reliability.md: its message, its exit code, and that nothing was left half-written."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nas
from conftest import write_idx, write_idx_dataset
from nas.cli import app
from nas.export import ExportError

SPACES = Path(__file__).parent.parent / "search_spaces"
GOOD = "architecture: {blocks: 1, block: {channels: 4}, head: {layers: 1, units: 8}}\nbudget: {epochs: 1}\n"


def space(tmp: Path, text: str) -> Path:
    (tmp / "space.yaml").write_text(text)
    return tmp / "space.yaml"


def data(tmp: Path, damage=None) -> Path:
    folder = write_idx_dataset(tmp / "data", n_train=5, n_test=2)
    if damage:
        damage(folder)
    return folder


def npz(tmp: Path, **arrays) -> Path:
    base = {"x_train": np.zeros((4, 6, 6), np.uint8), "y_train": np.array([0, 0, 1, 1]), "x_test": np.zeros((2, 6, 6), np.uint8),
            "y_test": np.arange(2)}
    np.savez(tmp / "d.npz", **{k: v for k, v in (base | arrays).items() if v is not None})
    return tmp / "d.npz"


def studied(tmp: Path, trials: int = 1) -> str:
    """A storage holding study 'tiny' with `trials` finished trials."""
    db = f"sqlite:///{tmp}/s.db"
    if trials:
        r = CliRunner().invoke(app, ["search", "--space", str(space(tmp, GOOD.replace("budget", "name: tiny\nbudget"))),
                                     "--storage", db, "--data-dir", str(data(tmp)), "--trials", str(trials)])
        assert r.exit_code == 0, r.output
    else:
        import optuna

        study = optuna.create_study(study_name="tiny", storage=db, direction="maximize")
        study.set_user_attr("data", {"dataset": "fashion-mnist", "val_fraction": 0.1, "split_seed": 0, "subset": None})
    return db


def search(tmp, text=GOOD, *extra, folder=None):
    return ["search", "--space", space(tmp, text), "--storage", f"sqlite:///{tmp}/s.db",
            "--data-dir", folder or data(tmp), *extra]


def export_into_existing(tmp: Path) -> list:
    (tmp / "out").mkdir()
    (tmp / "out" / "keep").write_text("the user's file")
    return ["best", "--storage", studied(tmp), "--export", tmp / "out", "--data-dir", tmp / "data"]


_held = []  # sockets kept open while the case runs


def busy_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    _held.append(sock)
    return sock.getsockname()[1]


def idx_damage(name, fn):
    return lambda t: search(t, folder=data(t, lambda f: fn(f / name)))


def gz(payload: bytes):
    return lambda p: p.write_bytes(gzip.compress(payload))


# (id, setup(tmp) -> argv, exit code, words the message must hold)
CASES = [
    ("space: unknown key", lambda t: ["validate", "--space", space(t, "architecture: {blok: {}}")], 2,
     "architecture.blok: unknown key; did you mean 'block'?"),
    ("space: wrong type", lambda t: ["validate", "--space", space(t, "training: {batch_size: big}")], 2,
     "training.batch_size: expected an integer in [1, 1048576], got str 'big'"),
    ("space: empty choice", lambda t: ["validate", "--space", space(t, "architecture: {block: {conv: {choice: []}}}")],
     2, "architecture.block.conv.choice: expected a non-empty list of one of conv3x3, conv5x5, conv3x3x2"),
    ("space: duplicate choice", lambda t: ["validate", "--space", space(t, "architecture: {block: {channels: {choice: [4, 4]}}}")],
     2, "architecture.block.channels.choice: 4 is listed twice"),
    ("space: low > high", lambda t: ["validate", "--space", space(t, "training: {lr: {float: [0.1, 0.01]}}")], 2,
     "training.lr.float: low 0.1 is greater than high 0.01"),
    ("space: log with low <= 0", lambda t: ["validate", "--space", space(t, "training: {weight_decay: {float: [0, 0.1], log: true}}")],
     2, "training.weight_decay.float: a log range needs low > 0"),
    ("space: unknown op name", lambda t: ["validate", "--space", space(t, "architecture: {block: {activation: rleu}}")], 2,
     "did you mean 'relu'?); expected one of relu, leaky_relu, gelu"),
    ("space: missing baseline", lambda t: ["validate", "--space", space(t, "baselines: [gone.yaml]")], 2,
     "baselines[0]: no such file"),
    ("space: baseline outside the space", lambda t: ["validate", "--space", space(t, "training: {batch_size: {choice: [32]}}\nbaselines: ["
                                                       + str(SPACES / "seed_lenet.yaml") + "]")], 2,
     "does not fit the space"),
    ("space: YAML syntax", lambda t: ["validate", "--space", space(t, "name: [")], 2, "not valid YAML at line"),
    ("space: file missing", lambda t: ["validate", "--space", t / "nope.yaml"], 2, "no such space file"),
    ("space: not a mapping", lambda t: ["validate", "--space", space(t, "- 1\n- 2\n")], 2,
     "top level: expected a mapping, got list"),
    ("space: searched space given to train", lambda t: ["train", "--space", SPACES / "lenet.yaml"], 2,
     "is searched, so this space is not a fixed architecture"),
    ("cli: unknown device", lambda t: search(t, GOOD, "--device", "gpu"), 2, "expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("cli: unknown sampler", lambda t: search(t, GOOD, "--sampler", "cma"), 2, "expected one of tpe, random, got 'cma'"),
    ("cli: unknown pruner", lambda t: search(t, GOOD, "--pruner", "always"), 2, "expected one of median, hyperband, none"),
    ("cli: zero trials", lambda t: search(t, GOOD, "--trials", "0"), 2, "Invalid value for '--trials': Input should be greater than or equal to 1"),
    ("cli: zero epochs", lambda t: search(t, GOOD, "--epochs", "0"), 2, "Invalid value for '--epochs': Input should be greater than or equal to 1"),
    ("cli: unknown storage scheme", lambda t: ["studies", "--storage", "mysql2://x@localhost/db"], 2,
     "cannot open the study storage 'mysql2://x@localhost/db'"),
    ("data: not found, offline", lambda t: ["search", "--space", space(t, GOOD), "--storage", f"sqlite:///{t}/s.db"], 2,
     "Fashion-MNIST was not found"),
    ("data: unknown dataset name", lambda t: search(t, GOOD, "--dataset", "fmnist"), 2,
     "unknown dataset 'fmnist': use one of fashion-mnist, mnist, kmnist, cifar10"),
    ("data: truncated gzip", idx_damage("train-images-idx3-ubyte.gz", lambda p: p.write_bytes(p.read_bytes()[:100])), 2,
     "the file is corrupt or truncated"),
    ("data: corrupt gzip", idx_damage("train-labels-idx1-ubyte.gz", lambda p: p.write_bytes(b"\x1f\x8b" + bytes(40))), 2,
     "the file is corrupt or truncated"),
    ("data: wrong IDX magic", idx_damage("t10k-images-idx3-ubyte.gz", gz(b"\x00\x00\x0d\x03" + bytes(12))), 2,
     "not an IDX file of unsigned bytes"),
    ("data: IDX shorter than its header says", idx_damage("t10k-labels-idx1-ubyte.gz", gz(b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(3))),
     2, "header says 9 = 9 bytes, the file holds 3"),
    ("data: image/label count mismatch", idx_damage("train-labels-idx1-ubyte", lambda p: write_idx(p, np.zeros(3, np.uint8))), 2,
     "has 50 images but"),
    ("data: labels out of range", idx_damage("t10k-labels-idx1-ubyte", lambda p: write_idx(p, np.full(20, 11, np.uint8))), 2,
     "labels up to 11"),
    ("data: npz missing keys", lambda t: search(t, GOOD, "--dataset", npz(t, y_test=None)), 2, "missing y_test"),
    ("data: npz wrong dtype", lambda t: search(t, GOOD, "--dataset", npz(t, x_train=np.zeros((4, 6, 6)))), 2,
     "x_train is float64 with shape (4, 6, 6); expected uint8 images"),
    ("data: npz wrong rank", lambda t: search(t, GOOD, "--dataset", npz(t, x_test=np.zeros((2, 36), np.uint8))), 2,
     "x_test is uint8 with shape (2, 36)"),
    ("data: npz not a zip", lambda t: (t / "d.npz").write_bytes(b"junk") and search(t, GOOD, "--dataset", t / "d.npz"), 2,
     "cannot read it as .npz"),
    ("data: negative labels", lambda t: search(t, GOOD, "--dataset", npz(t, y_train=np.array([0, 1, -1, 2]))), 2,
     "labels must be 0, 1, 2, ... but the smallest is -1"),
    ("study: storage file missing", lambda t: ["best", "--storage", f"sqlite:///{t}/typo.db"], 2,
     "no such study storage"),
    ("study: unknown name", lambda t: ["best", "--storage", studied(t), "--study", "nope"], 2, "no study named 'nope'"),
    ("study: no finished trial", lambda t: ["best", "--storage", studied(t, 0), "--study", "tiny"], 2,
     "has no completed trial yet"),
    ("study: resumed on another dataset", lambda t: studied(t) and search(t, GOOD.replace("budget", "name: tiny\nbudget"),
                                                                    "--dataset", npz(t)), 2,
     "was searched with dataset 'fashion-mnist'"),
    ("export: folder holds the user's files", lambda t: export_into_existing(t), 2,
     "holds files that are not an export of nas (keep); nas replaces only a folder it wrote itself, even with --force"),
    ("cli: bad worker count", lambda t: search(t, GOOD, "--workers", "0"), 2,
     "expected a count ≥ 1 or auto, got '0'"),
    ("report: no completed trial", lambda t: ["report", "--storage", studied(t, 0), "--out", t / "r.html"], 2,
     "has no completed trial yet"),
    ("dashboard: port in use", lambda t: ["dashboard", "--storage", studied(t, 0), "--port", busy_port()], 2,
     "pass another --port, or 0 for any free one"),
    ("predict: not an export folder", lambda t: ["predict", t, t / "a.png"], 2,
     "missing model.pt, arch.yaml, metrics.json"),
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name,setup,code,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error_and_leaves_nothing_behind(tmp_path, name, setup, code, words):
    argv = [str(a) for a in setup(tmp_path)]
    before = _files(tmp_path)
    result = CliRunner().invoke(app, argv)
    text = " ".join(result.output.split())
    assert result.exit_code == code, text
    assert words in text and "Traceback" not in text
    assert _files(tmp_path) == before  # nothing written, nothing half-written


def test_there_are_at_least_30_documented_bad_inputs():
    doc = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    assert len(CASES) >= 30
    for name, *_ in CASES:
        assert f"| {name} |" in doc, f"{name} is not in docs/reliability.md"


@pytest.fixture
def exported(tmp_path, idx_dir):
    out = tmp_path / "e"
    r = CliRunner().invoke(app, ["train", "--space", str(space(tmp_path, GOOD)), "--data-dir", str(idx_dir),
                                 "--export", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("damage,words", [
    (lambda d: (d / "model.pt").unlink(), "missing model.pt"),
    (lambda d: (d / "model.pt").write_bytes(b"not a checkpoint"), "do not load into the architecture"),
    (lambda d: (d / "arch.yaml").write_text((d / "arch.yaml").read_text().replace("channels: 4", "channels: 6")),
     "do not load into the architecture"),
    (lambda d: (d / "metrics.json").write_text("{"), "unreadable or incomplete"),
    (lambda d: (d / "arch.yaml").write_text("training: {lr: {float: [0.1, 0.2]}}"), "is not a fixed architecture"),
], ids=["load_model: missing file", "load_model: corrupt weights", "load_model: weights do not fit",
        "load_model: corrupt metrics", "load_model: arch not fixed"])
def test_load_model_refuses_broken_exports_clearly(exported, damage, words):
    damage(exported)
    with pytest.raises(ExportError, match=words.replace(".", r"\.")):
        nas.load_model(exported)


def test_a_good_export_loads(exported):
    assert nas.load_model(exported)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert json.loads((exported / "metrics.json").read_text())["n_params"] > 0
    shutil.rmtree(exported)
