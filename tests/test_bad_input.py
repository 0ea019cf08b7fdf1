"""Every bad input in docs/reliability.md: its message, its exit code, and that nothing was left half-written."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nas
from conftest import fill_disk, mount_tmpfs, unmount, write_idx, write_idx_dataset
from nas.cli import app
from nas.export import ExportError

SPACES = Path(__file__).parent.parent / "nas" / "spaces"
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


def multi_studied(tmp: Path) -> str:
    """A storage holding study 'multi', searched for accuracy and parameter count (2 trials)."""
    db = f"sqlite:///{tmp}/s.db"
    r = CliRunner().invoke(app, ["search", "--space", str(space(tmp, GOOD.replace("budget", "name: multi\nbudget"))),
                                 "--objectives", "accuracy,params", "--storage", db, "--data-dir", str(data(tmp)),
                                 "--trials", "2"])
    assert r.exit_code == 0, r.output
    return db


def rejected_study(tmp: Path) -> str:
    """Study 'tiny' whose only trial is a net rejected before training (as `nas search` records one)."""
    import optuna

    db = studied(tmp, trials=0)
    optuna.load_study(study_name="tiny", storage=db).add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={}, distributions={},
        user_attrs={"rejected": True, "reason": "too large: 4,810 parameters > max_params 10"}))
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
     "training.lr.float: low 0.1 is greater than high 0.01; write [low, high]"),  # brackets are no Rich markup
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
    ("cli: unknown device", lambda t: search(t, GOOD, "--device", "gpu"), 2, "expected auto, cpu, mps or cuda[:N], got 'gpu'"),
    ("cli: unknown sampler", lambda t: search(t, GOOD, "--sampler", "cma"), 2, "expected one of tpe, random, got 'cma'"),
    ("cli: unknown pruner", lambda t: search(t, GOOD, "--pruner", "always"), 2, "expected one of median, hyperband, pareto"),
    ("space: objectives without accuracy first", lambda t: ["validate", "--space", space(t, "objectives: [latency, accuracy]")],
     2, "objectives: got ['latency', 'accuracy']; expected accuracy first"),
    ("space: objectives not a list", lambda t: ["validate", "--space", space(t, "objectives: accuracy")], 2,
     "objectives: expected a list such as [accuracy, latency], got str 'accuracy'"),
    ("run: a space of several objectives", lambda t: ["run", "--space", space(t, "objectives: [accuracy, flops]\n" + GOOD),
                                                       "--budget", "1m", "--storage", f"sqlite:///{t}/s.db"], 2,
     "which gives a front of nets, while nas run retrains and exports one best"),
    ("space: unknown objective", lambda t: ["validate", "--space", space(t, "objectives: [accuracy, speed]")], 2,
     "objectives[1]: got str 'speed'; expected one of accuracy, params, flops, latency"),
    ("cli: unknown objective", lambda t: search(t, GOOD, "--objectives", "accuracy,size"), 2,
     "--objectives[1]: got str 'size'"),
    ("cli: Optuna's pruner on several objectives", lambda t: search(t, GOOD, "--objectives", "accuracy,params", "--pruner",
                                                                    "median"), 2,
     "--pruner median cannot stop trials of a search for accuracy,params: Optuna prunes single-objective studies only"),
    ("study: resumed for other objectives", lambda t: search(t, GOOD.replace("budget", "name: tiny\nbudget"), "--objectives",
                                                             "accuracy,latency", "--storage", studied(t)), 2,
     "was searched for accuracy, not accuracy,latency: resume it with `nas search --study tiny --objectives accuracy`"),
    ("best: export from a front without --trial", lambda t: ["best", "--storage", multi_studied(t), "--export", t / "out"], 2,
     "so it has a front of nets rather than one best: pick one with --trial N"),
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
     "missing model.onnx, metrics.json"),
]


# --- hardening: hostile space files, data, targets, devices and studies ------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))  # 9**9 values


def raw_space(tmp: Path, data: bytes) -> Path:
    (tmp / "space.yaml").write_bytes(data)
    return tmp / "space.yaml"


def listed_blocks_space(tmp: Path, what: str) -> list:
    """A space that lists exactly 2 blocks and 2 head layers, with a baseline that has 3 of `what`."""
    blocks, layers = ("[{}, {}, {}]", "[{}, {}]") if what == "blocks" else ("[{}, {}]", "[{}, {}, {}]")
    (tmp / "base.yaml").write_text(f"architecture: {{blocks: {blocks}, head: {{layers: {layers}}}}}\n")
    return ["validate", "--space", space(tmp, "architecture: {blocks: [{}, {}], head: {layers: [{}, {}]}, "
                                               "block: {padding: same}}\nbaselines: [base.yaml]\n")]


_mounts: list[Path] = []  # tmpfs mounts a case made; unmounted after it


def tmpfs(tmp: Path, name: str, read_only: bool = False, full: bool = False) -> Path:
    """A real file system at tmp/name: read-only, or 1 MiB and filled to the last byte."""
    where = tmp / name
    mount_tmpfs(where, "ro" if read_only else "size=1m")
    _mounts.append(where)
    if full:
        fill_disk(where)
    return where


@pytest.fixture(autouse=True)
def _unmount():
    yield
    while _mounts:
        unmount(_mounts.pop())


def exported_earlier(tmp: Path) -> Path:
    """An earlier export of nas at tmp/out (made by `nas train --export`)."""
    r = CliRunner().invoke(app, ["train", "--space", str(space(tmp, GOOD)), "--data-dir", str(data(tmp)),
                                 "--export", str(tmp / "out"), "--quiet"])
    assert r.exit_code == 0, r.output
    return tmp / "out"


def best_export(tmp: Path, target: Path, *extra) -> list:
    return ["best", "--storage", studied(tmp), "--export", target, "--data-dir", tmp / "data", "--retrain-epochs", 1, *extra]


def a_file(tmp: Path, name: str = "file.txt") -> Path:
    (tmp / name).write_text("the user's file")
    return tmp / name


def folder(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


def foreign_study(tmp: Path, directions: int = 1) -> str:
    """A storage holding study 'other', made with Optuna by another tool."""
    import optuna

    db = f"sqlite:///{tmp}/s.db"
    study = optuna.create_study(study_name="other", storage=db, directions=["minimize"] * directions)
    study.optimize(lambda t: [t.suggest_float("x", 0, 1)] * directions if directions > 1 else t.suggest_float("x", 0, 1),
                   n_trials=2)
    return db


def changed_choices(tmp: Path) -> list:
    """A study searched with channels in [4, 8], resumed with the space now offering [4, 8, 16]."""
    text = "name: tiny\nbudget: {epochs: 1}\narchitecture: {blocks: 1, block: {channels: {choice: [4, 8]}}, head: {layers: 1, units: 8}}\n"
    args = ["search", "--space", space(tmp, text), "--storage", f"sqlite:///{tmp}/s.db", "--data-dir", data(tmp),
            "--trials", 2, "--quiet"]
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    space(tmp, text.replace("[4, 8]", "[4, 8, 16]"))
    return args


def npz_header_bomb(tmp: Path) -> Path:
    """An .npz whose x_train header claims 10^6 × 10^6 pixels and holds none of them."""
    import zipfile

    with zipfile.ZipFile(npz(tmp, x_train=None), "a") as z, z.open("x_train.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 1000, 1000)})
    return tmp / "d.npz"


def png_header(tmp: Path, name: str, width: int, height: int, bit_depth: int = 8, body: bytes = b"") -> Path:
    """A PNG file with the given header and `body` as its pixel data (none: a truncated image)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))
    return path


def image_folder(tmp: Path, extra=None) -> Path:
    """Two classes of five 8×8 PNG images each, plus whatever `extra(root)` adds."""
    from PIL import Image

    root = tmp / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    if extra:
        extra(root)
    return root


def exported_model(tmp: Path) -> Path:
    return exported_earlier(tmp)


def _fewer_classes(export: Path) -> None:
    metrics = json.loads((export / "metrics.json").read_text())
    (export / "metrics.json").write_text(json.dumps(metrics | {"classes": ["a", "b", "c"]}))


def damaged_onnx(tmp: Path, damage) -> Path:
    """An export whose model.onnx `damage(path)` has changed (predict reads it; load_model does not)."""
    out = exported_earlier(tmp)
    damage(out / "model.onnx")
    return out


CASES += [
    # Space files a new user (or another tool) may hand over
    ("space: empty file", lambda t: ["validate", "--space", space(t, "")], 2, "the file is empty (or only comments)"),
    ("space: only comments", lambda t: ["validate", "--space", space(t, "# to do\n")], 2, "the file is empty (or only comments)"),
    ("space: null document", lambda t: ["validate", "--space", space(t, "~\n")], 2, "the file is empty"),
    ("space: duplicate key", lambda t: ["validate", "--space", space(t, "name: a\nname: b\n")], 2,
     "duplicate key 'name' (first at line 1); write each key once"),
    ("space: duplicate key on one line", lambda t: ["validate", "--space", space(t, "training: {lr: 0.1, lr: 0.001}\n")], 2,
     "duplicate key 'lr' (first at line 1); write each key once"),
    ("space: duplicate key in a block", lambda t: ["validate", "--space", space(t, "architecture:\n  block:\n    channels: 4\n"
                                                                                  "    channels: 8\n")], 2,
     "at line 4, column 5: duplicate key 'channels' (first at line 3)"),
    ("space: YAML alias bomb", lambda t: ["validate", "--space", space(t, BOMB)], 2,
     "holds more than 10,000 values (counting what its YAML aliases repeat)"),
    ("space: alias bomb in a used field", lambda t: ["validate", "--space", space(t, BOMB.split("e:")[0] + "training: {lr: *d}\n")],
     2, "holds more than 10,000 values"),
    ("space: recursive alias", lambda t: ["validate", "--space", space(t, "training: &a {lr: *a}\n")], 2,
     "an alias refers to the value that contains it"),
    ("space: deep nesting", lambda t: ["validate", "--space", space(t, "[" * 100_000 + "]" * 100_000)], 2,
     "nested deeper than 32 levels"),
    ("space: binary file", lambda t: ["validate", "--space", raw_space(t, bytes(range(256)) * 4)], 2,
     "a binary file, not YAML text"),
    ("space: not UTF-8", lambda t: ["validate", "--space", raw_space(t, "name: café\n".encode("latin-1"))], 2,
     "not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8"),
    ("space: larger than 1 MiB", lambda t: ["validate", "--space", space(t, "# padding\n" * 200_000)], 2,
     "larger than 1 MiB; a space file is a page of YAML"),
    ("space: a folder", lambda t: ["validate", "--space", folder(t, "spaces")], 2, "Invalid value for '--space'"),
    ("space: integer too large for a float", lambda t: ["validate", "--space", space(t, "budget: {epochs: 1" + "0" * 400 + "}\n")],
     2, "budget.epochs: expected an integer in [1, 10000], got int 100000"),
    ("space: infinite constraint", lambda t: ["validate", "--space", space(t, "constraints: {max_params: .inf}\n")], 2,
     "constraints.max_params: expected an integer >= 1, got float inf"),
    ("space: nan learning rate", lambda t: ["validate", "--space", space(t, "training: {lr: .nan}\n")], 2,
     "training.lr: expected a number in [1e-12, 100], got float nan"),
    ("space: huge value, short message", lambda t: ["validate", "--space", space(t, "training: {batch_size: [" + "1, " * 5_000 + "1]}\n")],
     2, "training.batch_size: expected an integer in [1, 1048576], got list [1, 1, 1, 1, ...]"),
    ("space: python object tag", lambda t: ["validate", "--space", space(t, "name: !!python/object/apply:os.system [ls]\n")], 2,
     "could not determine a constructor for the tag"),
    ("space: a date as the name", lambda t: ["validate", "--space", space(t, "name: 2026-11-24\n")], 2,
     "name: expected a non-empty study name, got date datetime.date(2026, 11, 24)"),
    ("space: baseline with more blocks than listed", lambda t: listed_blocks_space(t, "blocks"), 2,
     "has 3 blocks, but the space"),
    ("space: baseline with more head layers than listed", lambda t: listed_blocks_space(t, "layers"), 2,
     "has 3 head layers, but the space"),
    # Devices and storages given on the command line
    ("cli: --device cuda without a GPU", lambda t: search(t, GOOD, "--device", "cuda"), 2,
     "--device cuda: this machine has no CUDA GPU that torch can use"),
    ("cli: --device cuda:3 without a GPU", lambda t: search(t, GOOD, "--device", "cuda:3"), 2, "--device cuda:3: this machine has no CUDA GPU"),
    ("cli: --device mps without one", lambda t: search(t, GOOD, "--device", "mps"), 2, "--device mps: Apple's MPS is not available here"),
    ("cli: train --device cuda without a GPU", lambda t: ["train", "--space", space(t, GOOD), "--data-dir", data(t), "--device", "cuda"],
     2, "this machine has no CUDA GPU"),
    ("cli: in-memory storage", lambda t: search(t, GOOD)[:3] + ["--storage", "sqlite:///:memory:", "--data-dir", data(t)], 2,
     "an in-memory database would be lost when nas exits"),
    ("storage: path is a folder", lambda t: search(t)[:3] + ["--storage", f"sqlite:///{folder(t, 'db')}", "--data-dir", data(t)], 2,
     "is a folder, but the study storage is a file"),
    ("storage: under a file", lambda t: search(t)[:3] + ["--storage", f"sqlite:///{a_file(t)}/s.db", "--data-dir", data(t)], 2,
     "file.txt is a file, not a folder"),
    ("storage: read-only file system", lambda t: search(t)[:3] + ["--storage", f"sqlite:///{tmpfs(t, 'ro', read_only=True)}/s.db",
                                                                  "--data-dir", data(t)], 2,
     "cannot write the study storage in", ),
    ("storage: full disk", lambda t: search(t)[:3] + ["--storage", f"sqlite:///{tmpfs(t, 'full', full=True)}/s.db",
                                                      "--data-dir", data(t)], 2,
     "No space left on device. Free some space, or choose another place"),
    # Export, report and predict targets: checked before any training
    ("export: --force onto the study's own folder", lambda t: best_export(t, t, "--force"), 2,
     "holds files that are not an export of nas (data, s.db, space.yaml); nas replaces only a folder it wrote itself"),
    ("export: earlier export without --force", lambda t: best_export(t, exported_earlier(t)), 2,
     "out already exists; pass --force to replace it"),
    ("export: target is a file", lambda t: best_export(t, a_file(t), "--force"), 2, "file.txt is a file, not a folder"),
    ("export: target under a file", lambda t: best_export(t, a_file(t) / "out"), 2,
     "cannot write the export under"),
    ("export: read-only file system", lambda t: best_export(t, tmpfs(t, "ro", read_only=True) / "out"), 2,
     "Read-only file system. Choose a writable place"),
    ("export: full disk", lambda t: best_export(t, tmpfs(t, "full", full=True) / "out"), 2, "No space left on device"),
    ("train: --export onto a file", lambda t: ["train", "--space", space(t, GOOD), "--data-dir", data(t), "--export", a_file(t)], 2,
     "file.txt is a file, not a folder"),
    ("report: --out is a folder", lambda t: ["report", "--storage", studied(t), "--out", folder(t, "r")], 2,
     "Invalid value for '--out'"),
    ("report: --out under a file", lambda t: ["report", "--storage", studied(t), "--out", a_file(t) / "r.html"], 2,
     "file.txt is a file, not a folder"),
    ("report: read-only file system", lambda t: ["report", "--storage", studied(t), "--out", tmpfs(t, "ro", read_only=True) / "r.html"],
     2, "cannot write the report in"),
    # Datasets that crash, hang or lie
    ("data: empty training set", lambda t: search(t, GOOD, "--dataset", npz(t, x_train=np.zeros((0, 6, 6), np.uint8),
                                                                          y_train=np.zeros(0, np.int64))), 2,
     "the training set holds no images"),
    ("data: empty test set", lambda t: search(t, GOOD, "--dataset", npz(t, x_test=np.zeros((0, 6, 6), np.uint8),
                                                                      y_test=np.zeros(0, np.int64))), 2,
     "the test set holds no images"),
    ("data: zero-size images", lambda t: search(t, GOOD, "--dataset", npz(t, x_train=np.zeros((4, 0, 6), np.uint8),
                                                                        x_test=np.zeros((2, 0, 6), np.uint8))), 2,
     "images have shape C×H×W = 1×0×6; every side must be at least 1"),
    ("data: zero channels", lambda t: search(t, GOOD, "--dataset", npz(t, x_train=np.zeros((4, 6, 6, 0), np.uint8))), 2,
     "neither N×H×W×C nor N×C×H×W with C = 1 to 4 channels"),
    ("data: one class", lambda t: search(t, GOOD, "--dataset", npz(t, y_train=np.zeros(4, np.int64), y_test=np.zeros(2, np.int64))),
     2, "only one class ('0'); a classifier needs at least two"),
    ("data: too few images of a class to split", lambda t: search(t, GOOD, "--dataset", npz(
        t, x_train=np.zeros((2, 6, 6), np.uint8), y_train=np.array([0, 1]))), 2,
     "every class has at most 1 training image, so none is left to validate on; a search needs a class of at least 2 "
     "images, one to train on and one to validate. Add images"),
    ("data: --subset too small to split", lambda t: search(t, GOOD, "--subset", 10), 2,
     "every class has at most 1 training image in the --subset 10, so none is left to validate on"),
    ("data: labels with a gap", lambda t: search(t, GOOD, "--dataset", npz(t, y_train=np.array([0, 0, 2, 2]), y_test=np.array([0, 2]))),
     2, "class '1' has no training images (labels run 0..2); number the classes 0, 1, 2, ... without gaps"),
    ("data: huge labels", lambda t: search(t, GOOD, "--dataset", npz(t, y_train=np.array([0, 0, 10**9, 10**9]))), 2,
     "(at most 65,536 classes), but the largest is 1000000000"),
    ("data: unsigned 64-bit labels", lambda t: search(t, GOOD, "--dataset", npz(t, y_train=np.array([0, 0, 2**64 - 1, 2**64 - 1],
                                                                                                   np.uint64))), 2,
     "but the largest is 18446744073709551615"),
    ("data: npz of pickled objects", lambda t: search(t, GOOD, "--dataset", npz(t, y_train=np.array([0, 0, None, 1], dtype=object))),
     2, "cannot read it as .npz (Object arrays cannot be loaded when allow_pickle=False)"),
    ("data: npz header larger than memory", lambda t: search(t, GOOD, "--dataset", npz_header_bomb(t)), 2,
     "x_train (shape (1000000, 1000, 1000)) would take 931 GiB in memory, but only"),
    ("data: npz class names of the wrong length", lambda t: search(t, GOOD, "--dataset", npz(t, classes=np.array(["a"]))), 2,
     "'classes' is <U1 with shape (1,), but the labels use 2 classes"),
    ("data: npz class named twice", lambda t: search(t, GOOD, "--dataset", npz(t, classes=np.array(["a", "a"]))), 2,
     "'classes' names a class twice"),
    ("data: IDX header with wrong dimensions", idx_damage("train-images-idx3-ubyte.gz", gz(b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(9))),
     2, "its header says 1 dimensions, but IDX images have 3"),
    ("data: IDX header larger than memory", idx_damage("train-images-idx3-ubyte.gz", gz(b"\x00\x00\x08\x03" + b"\xff" * 12)), 2,
     "(header: 4294967295×4294967295×4294967295) would take 7.38e+19 GiB in memory, but only"),
    ("data: IDX gzip bomb (more data than its header)", idx_damage("t10k-labels-idx1-ubyte.gz", gz(b"\x00\x00\x08\x01\x00\x00\x00\x09"
                                                                                                  + bytes(50 << 20))), 2,
     "header says 9 = 9 bytes, the file holds more"),
    ("data: IDX header cut short", idx_damage("train-labels-idx1-ubyte.gz", gz(b"\x00\x00\x08\x01\x00")), 2,
     "the file ends inside its header"),
    ("folder: decompression bomb PNG", lambda t: search(t, GOOD, "--dataset", image_folder(t, lambda r: png_header(r / "a", "bomb.png", 30_000, 30_000))),
     2, "could be decompression bomb DOS attack"),
    ("folder: image over nas's pixel limit", lambda t: search(t, GOOD, "--dataset", image_folder(t, lambda r: png_header(r / "a", "big.png", 5000, 5000))),
     2, "the image is 5000×5000 pixels, over nas's limit of 16,777,216"),
    ("folder: truncated PNG", lambda t: search(t, GOOD, "--dataset", image_folder(t, lambda r: png_header(r / "a", "cut.png", 8, 8)))
     , 2, "cut.png: not an image PIL can read"),
    ("folder: a class with one image", lambda t: search(t, GOOD, "--dataset", image_folder(t, lambda r: png_header(r / "c", "0.png", 8, 8, body=bytes(72)))),
     2, "class 'c' has no training images"),
    ("predict: decompression bomb PNG", lambda t: ["predict", exported_model(t), png_header(t, "bomb.png", 30_000, 30_000)], 2,
     "could be decompression bomb DOS attack"),
    ("predict: .npz and PNG of different sizes", lambda t: ["predict", exported_model(t), png_header(t, "ok.png", 28, 28, body=bytes(28 * 29)),
                                                            npz_images(t, np.zeros((2, 6, 6), np.uint8))], 2,
     "the images are 1×6×6 (C×H×W) but the model takes 1×28×28"),
    ("predict: model.onnx is not a model", lambda t: ["predict", damaged_onnx(t, lambda f: f.write_bytes(b"not onnx")),
                                                     png_header(t, "ok.png", 28, 28, body=bytes(28 * 29))], 2,
     "model.onnx: ONNX Runtime cannot run it on images of 1×28×28"),
    ("predict: model.onnx of another model", lambda t: ["predict", damaged_onnx(t, lambda f: _fewer_classes(f.parent)),
                                                        png_header(t, "ok.png", 28, 28, body=bytes(28 * 29))], 2,
     "model.onnx gives 10 class scores, but metrics.json names 3 classes; the files are of different models"),
    ("predict: model.onnx is a FIFO", lambda t: ["predict", damaged_onnx(t, lambda f: (f.unlink(), os.mkfifo(f))),
                                                 png_header(t, "ok.png", 28, 28, body=bytes(28 * 29))], 2,
     "model.onnx: is a named pipe (FIFO), but an export's model.onnx"),
    # Paths the system refuses to look at
    ("path: a 300-character --out name", lambda t: ["report", "--storage", studied(t), "--out", t / ("r" * 300 + ".html")],
     2, "File name too long. Check the path, or choose another one."),
    ("path: a 300-character --export name", lambda t: ["best", "--storage", studied(t), "--export", t / ("e" * 300)],
     2, "File name too long. Check the path"),
    ("path: a 300-character storage file name", lambda t: search(t, GOOD, "--storage", f"sqlite:///{t}/{'s' * 300}.db"),
     2, "File name too long. Check the path"),
    ("path: a 300-character --data-dir", lambda t: search(t, GOOD, folder=t / ("d" * 300)), 2, "File name too long"),
    ("best: --trial that does not exist", lambda t: ["best", "--storage", studied(t), "--trial", 7, "--export", t / "o"], 2,
     "study 'tiny' has no trial #7; its trials are #0 to #0"),
    ("best: --trial of a rejected net", lambda t: ["best", "--storage", rejected_study(t), "--trial", 0, "--export", t / "o"], 2,
     "trial #0 of study 'tiny' was rejected before training, so there is no trained network to export"),
    # Studies nas did not make, or cannot continue
    ("study: made by another tool (best)", lambda t: ["best", "--storage", foreign_study(t), "--study", "other"], 2,
     "study 'other' in sqlite:///" and "was not made by `nas search` (it records no dataset); nas best and nas report read only"),
    ("study: made by another tool (report)", lambda t: ["report", "--storage", foreign_study(t), "--out", t / "r.html"], 2,
     "was not made by `nas search`"),
    ("study: multi-objective study of another tool", lambda t: ["best", "--storage", foreign_study(t, directions=2)], 2,
     "was not made by `nas search`"),
    ("study: search continuing another tool's study", lambda t: ["search", "--space", space(t, GOOD), "--study", "other",
                                                                 "--storage", foreign_study(t), "--data-dir", data(t)], 2, "nas search continues only studies it started; pass a new --study name"),
    ("study: resumed after the space's choices changed", changed_choices, 2,
     "has trials where `block1.channels` is a choice of [4, 8], but the space now makes it a choice of [4, 8, 16]"),
    ("search: every trial rejected before training", lambda t: search(t, GOOD.replace("budget", "constraints: {max_params: 10}\nbudget"),
                                                                       "--trials", 2), 1,
     "stopped after 0 trained trials: the space's one net cannot be trained: too large: 4,810 parameters > max_params 10",
     {"s.db"}),
    ("search: a space of nets that all do not fit the input", lambda t: search(
        t, GOOD.replace("blocks: 1, block: {channels: 4}", "blocks: 5, block: {channels: {choice: [4, 8]}}"), "--trials", 2),
     1, "stopped after 0 trained trials: the last 50 nets drawn were all rejected before training (50 invalid; the "
        "last: invalid: block 3 (conv5x5, padding valid) gets a 4×4 feature map", {"s.db"}),
    ("search: every trial diverged", lambda t: search(t, GOOD.replace("budget", "training: {optimizer: sgd, lr: 100, batch_size: 8}\nbudget")
                                                      .replace("channels: 4}", "channels: 4, activation: leaky_relu}"), "--trials", 2,
                                                      "--epochs", 3), 1, "none of the 2 trials of this run trained: 2 × diverged", {"s.db"}),
]


def npz_images(tmp: Path, x: np.ndarray) -> Path:
    np.savez(tmp / "imgs.npz", x=x)
    return tmp / "imgs.npz"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name,setup,code,words,writes", [(*c, set())[:5] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error_and_leaves_nothing_behind(tmp_path, name, setup, code, words, writes):
    argv = [str(a) for a in setup(tmp_path)]
    before = _files(tmp_path)
    result = CliRunner().invoke(app, argv)
    text = " ".join(result.output.split())
    assert result.exit_code == code, text
    assert words in text and "Traceback" not in text
    after = _files(tmp_path)
    assert {k: v for k, v in after.items() if k not in writes} == before  # nothing removed, changed or half-written
    if writes:  # a search that ran: its trials are recorded, none left running
        import optuna

        trials = optuna.load_study(study_name="space", storage=f"sqlite:///{tmp_path}/s.db").trials
        assert trials and all(t.state.is_finished() and t.user_attrs.get("reason") for t in trials)


def test_reliability_md_lists_every_case_and_over_100_inputs_and_faults_each_with_a_real_test():
    import re

    doc = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith(("| input |", "| fault |"))]
    assert len(rows) >= 100
    for name, *_ in CASES:
        assert f"| {name} |" in doc, f"{name} is not in docs/reliability.md"
    tests = {m for f in Path(__file__).parent.glob("test_*.py") for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)}
    named = set(re.findall(r"`(test_\w+)", doc))
    assert named and named <= tests, f"docs/reliability.md names tests that do not exist: {sorted(named - tests)}"


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
