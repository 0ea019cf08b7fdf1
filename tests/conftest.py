"""Tiny datasets written in the real on-disk formats (IDX gz, npz), and isolation from the machine's data."""

from __future__ import annotations

import gzip
import os
import signal
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

N_CLASSES = 10


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, gzip-compressed like the distributed files."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_images(n_per_class: int, seed: int, shape=(28, 28), channels: int | None = None):
    """Easy-to-learn images: class c lights a band of rows c*2..c*2+4, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(N_CLASSES), n_per_class)
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(len(y), *shape), dtype=np.uint8)
    for c in range(N_CLASSES):
        x[y == c, c * 2 : c * 2 + 5, :] = 230
    if channels:
        x = np.repeat(x[..., None], channels, axis=-1)
    return x, y.astype(np.uint8)


def write_idx_dataset(folder: Path, n_train: int = 40, n_test: int = 10, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        x, y = make_images(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz)
    return folder


def pytest_configure(config):
    """Under pytest-xdist the cores are shared between workers: one torch thread each, or they spin
    against each other (measured: twice the CPU time for the same tests).

    The signal tests' processes inherit this one's signal dispositions. Started by `nohup` or as a
    shell's background job, pytest has SIGHUP or SIGINT ignored, and so would every `nas` it starts
    (which keeps an inherited ignore, as nohup asks): reset them so the tests run the same anywhere.
    A test that wants a signal ignored sets that itself."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"  # nas's own choice (`system.pick_threads`) honours it, here and in its processes
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test downloads, reads the user's cache or finds the machine's installed datasets by accident."""
    monkeypatch.setenv("NAS_OFFLINE", "1")
    monkeypatch.delenv("NAS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("nas.data.SYSTEM_DIRS", ())


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    """A tiny Fashion-MNIST-shaped dataset as four IDX gz files (400 train, 100 test images)."""
    return write_idx_dataset(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def npz_gray(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("npz") / "gray.npz"
    (xt, yt), (xs, ys) = make_images(30, 1, shape=(20, 20)), make_images(10, 2, shape=(20, 20))
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path


@pytest.fixture(scope="session")
def npz_colour(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("npz") / "colour.npz"
    (xt, yt), (xs, ys) = make_images(30, 1, shape=(24, 24), channels=3), make_images(10, 2, shape=(24, 24), channels=3)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path


TINY_SPACE = """
name: tiny
dataset: fashion-mnist
budget: {epochs: 2, val_fraction: 0.2}
architecture:
  blocks: {int: [1, 2]}
  block:
    conv: {choice: [conv5x5, conv3x3x2]}
    channels: {choice: [4, 8]}
    activation: {choice: [relu, gelu]}
    batch_norm: {choice: [false, true]}
  head:
    layers: 1
    units: {choice: [16, 32]}
training:
  optimizer: adam
  lr: {float: [1.0e-3, 1.0e-2], log: true}
  batch_size: 32
"""


class Calls(dict):
    """How many times real functions were called (they still run): `calls.count("data", (data, "load_dataset"))`
    counts under "data" the function bound as `load_dataset` in `data`; give each module that binds it (a name
    imported with `from` is bound in each module that imports it)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.monkeypatch = monkeypatch

    def count(self, name: str, *where: tuple[object, str]) -> None:
        fn = getattr(*where[0])

        def counted(*args, **kwargs):
            self[name] += 1
            return fn(*args, **kwargs)

        self[name] = 0
        for owner, attr in where:
            self.monkeypatch.setattr(owner, attr, counted)


@pytest.fixture
def calls(monkeypatch) -> Calls:
    return Calls(monkeypatch)


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 and a free port, stopped after the session (`pg_server`)."""
    import pg_server

    if not pg_server.available():
        pytest.skip(f"no PostgreSQL server binaries in {pg_server.PG_BIN}")
    with pg_server.postgres() as url:
        yield url


@pytest.fixture
def slurm():
    """A real one-node Slurm cluster on this machine (`slurm_cluster`), stopped after the test. Without Slurm
    the test is skipped, or fails where NAS_REQUIRE_CLUSTER=1 says it must run (CI)."""
    import slurm_cluster

    if not slurm_cluster.available():
        why = "needs slurm-wlm and munge installed and root (apt-get install slurm-wlm munge)"
        if os.environ.get("NAS_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"NAS_REQUIRE_CLUSTER=1 but this test {why}")
        pytest.skip(why)
    with slurm_cluster.slurm_cluster() as cluster:
        yield cluster


def made_once(tmp_path_factory, name: str, runs: Callable[[Path], list[list]]) -> Path:
    """A folder `name` of this test run holding a tiny IDX dataset (`fmnist`), a storage (`nas.db`) and what
    the `nas` commands `runs(folder)` (each given --storage and --data-dir) made there. The xdist workers share
    it (the tests only read it): the first to ask makes it, under a lock."""
    from filelock import FileLock
    from typer.testing import CliRunner

    from nas.cli import app

    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name  # this run's, shared
    with FileLock(f"{folder}.lock"):
        if not (folder / "done").exists():
            folder.mkdir(exist_ok=True)
            data = write_idx_dataset(folder / "fmnist")
            for args in runs(folder):
                result = CliRunner().invoke(app, [str(a) for a in args] + ["--storage", f"sqlite:///{folder}/nas.db",
                                                                          "--data-dir", str(data)])
                assert result.exit_code == 0, result.output
            (folder / "done").touch()
    return folder


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory):
    """A real 30-trial search on the tiny data, with its best trial exported: (storage URL, export dir)."""
    space = tmp_path_factory.mktemp("tiny-space") / "tiny.yaml"
    space.write_text(TINY_SPACE)
    folder = made_once(tmp_path_factory, "finished", lambda f: [
        ["search", "--space", space, "--trials", 30, "--quiet"],
        ["best", "--export", f / "export", "--retrain-epochs", 3, "--quiet"]])
    return f"sqlite:///{folder}/nas.db", folder / "export"


@pytest.fixture(scope="session")
def multi_study(tmp_path_factory):
    """A real search for (accuracy, latency) on the tiny data, 12 trials with the pareto pruner: its storage URL."""
    space = tmp_path_factory.mktemp("multi-space") / "multi.yaml"
    space.write_text(TINY_SPACE.replace("name: tiny", "name: multi\nobjectives: [accuracy, latency]")
                     .replace("epochs: 2,", "epochs: 4,"))
    folder = made_once(tmp_path_factory, "multi", lambda f: [["search", "--space", space, "--trials", 12, "--quiet"]])
    return f"sqlite:///{folder}/nas.db"


def mount_tmpfs(where: Path, options: str) -> None:
    """Mount a real tmpfs at `where` (`ro`, or `size=...`); skip the test where this machine cannot."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a read-only or small file system needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")


def unmount(where: Path) -> None:
    """Detach the file system now; the test's own open SQLite connections may still hold it (lazy)."""
    import subprocess

    subprocess.run(["umount", "--lazy", str(where)], check=True)


def fill_disk(folder: Path) -> None:
    """Write a file into `folder` until its file system has no byte left."""
    import os

    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, bytes(1 << 16)):
            pass
    except OSError:  # no space left: the point
        pass
    finally:
        os.close(fd)
