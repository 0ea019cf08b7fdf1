"""What `nas` writes never lands on what it reads, on a device, FIFO or socket, and leaves no temporary behind
after a signal or a kill -9: real files, hard and symbolic links, FIFOs, device nodes, processes and signals."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_images
from nas import files, storage, study as studies
from nas.cli import app
from nas.files import WriteError, is_export, write_file

FIXED = "name: fixed\narchitecture: {blocks: 1, block: {channels: 4}, head: {layers: 1, units: 8}}\nbudget: {epochs: 1}\n"


def nas(*args):
    """`nas ARGS` run in this process; returns (exit status, stdout and stderr with Rich's wrapping undone)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_folder(root: Path, n_per_class: int = 12) -> Path:
    """Two classes of 8×8 grey PNG images in class sub-folders."""
    from PIL import Image

    x, y = make_images(n_per_class, 3, shape=(8, 8))
    for i, (img, label) in enumerate(zip(x, y % 2)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{label}" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A folder holding a one-trial study (`s.db`) searched on an image folder (`imgs`) with `fixed.yaml`, and
    that net trained and exported to `out`."""
    folder = tmp_path_factory.mktemp("searched")
    (folder / "fixed.yaml").write_text(FIXED)
    image_folder(folder / "imgs")
    for args in (["search", "--storage", f"sqlite:///{folder}/s.db", "--trials", 1],
                 ["train", "--export", folder / "out"]):
        code, out = nas(*args, "--space", folder / "fixed.yaml", "--dataset", folder / "imgs", "--quiet")
        assert code == 0, out
    return folder


@pytest.fixture
def study(searched, tmp_path) -> Path:
    """A copy of the searched folder in this test's own tmp_path (the test may be the one that breaks it)."""
    shutil.copytree(searched, tmp_path / "w")
    return tmp_path / "w"


# --- 1. outputs written over the command's own inputs ------------------------------------------------------


@pytest.mark.parametrize("how", ["same", "relative", "hard link", "symlink", "journal"])
def test_report_is_never_written_over_the_storage_it_reads(study, how, monkeypatch):
    monkeypatch.chdir(study)
    db, before = study / "s.db", digest(study / "s.db")
    out = {"same": db, "relative": Path("./imgs/../s.db"), "hard link": study / "h.db", "symlink": study / "r.html",
           "journal": study / "s.db-journal"}[how]
    if how == "hard link":
        os.link(db, out)
    if how == "symlink":
        out.symlink_to(db)
    code, text = nas("report", "--storage", f"sqlite:///{db}", "--out", out)
    assert code == 2 and f"--out {out} is the --storage database" in text and "Choose another path for --out" in text
    assert digest(db) == before and (how != "journal" or not out.exists())
    assert how != "symlink" or out.is_symlink()


@pytest.mark.parametrize("how, expected", [
    ("npz", "--write {t}/t.npz is the dataset file {t}/t.npz"),
    ("npz hard link", "--write {t}/h.npz is the dataset file {t}/t.npz"),
    ("idx file", "--write {t}/d/train-labels-idx1-ubyte.gz is the fashion-mnist file {t}/d/train-labels-idx1-ubyte.gz"),
    ("inside image folder", "--write {t}/imgs/c0/s.yaml is inside the dataset folder {t}/imgs; nas writes nothing into it"),
])
def test_validate_write_is_never_written_over_the_dataset(tmp_path, idx_dir, npz_gray, how, expected):
    data = tmp_path / "d"
    shutil.copytree(idx_dir, data)
    shutil.copy(npz_gray, tmp_path / "t.npz")
    os.link(tmp_path / "t.npz", tmp_path / "h.npz")
    image_folder(tmp_path / "imgs")
    args = {"npz": ["--dataset", tmp_path / "t.npz", "--write", tmp_path / "t.npz"],
            "npz hard link": ["--dataset", tmp_path / "t.npz", "--write", tmp_path / "h.npz"],
            "idx file": ["--data-dir", data, "--write", data / "train-labels-idx1-ubyte.gz"],
            "inside image folder": ["--dataset", tmp_path / "imgs", "--write", tmp_path / "imgs" / "c0" / "s.yaml"]}[how]
    before = {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    code, text = nas("validate", *args)
    assert code == 2 and expected.format(t=tmp_path) in text, text
    assert {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written, nothing replaced


@pytest.mark.parametrize("case, expected", [
    (lambda w: ["--report", w / "s.db"], "--report {w}/s.db is the --storage database"),
    (lambda w: ["--report", w / "fixed.yaml"], "--report {w}/fixed.yaml is the --space file"),
    (lambda w: ["--report", w / "imgs" / "c1" / "r.html"], "--report {w}/imgs/c1/r.html is inside the dataset folder {w}/imgs"),
    (lambda w: ["--export", w / "imgs" / "model"], "--export {w}/imgs/model is inside the dataset folder {w}/imgs"),
    (lambda w: ["--export", w / "m", "--report", w / "m" / "r.html"], "--report {w}/m/r.html is inside the --export folder"),
    (lambda w: ["--export", w / "m", "--report", w / "m"], "--report {w}/m is the --export folder"),
])
def test_run_refuses_outputs_over_its_inputs_before_searching(study, case, expected):
    before = {p: digest(p) for p in study.rglob("*") if p.is_file()}
    start = time.monotonic()
    code, text = nas("run", "--space", study / "fixed.yaml", "--dataset", study / "imgs", "--storage",
                     f"sqlite:///{study}/s.db", "--budget", "60s", *case(study))
    assert code == 2 and expected.format(w=study) in text, text
    assert time.monotonic() - start < 20  # up front: not after the minute of searching
    assert {p: digest(p) for p in study.rglob("*") if p.is_file()} == before


def test_run_refuses_a_report_over_a_file_of_a_named_dataset(tmp_path, idx_dir):
    data = tmp_path / "d"
    shutil.copytree(idx_dir, data)
    before = digest(data / "t10k-images-idx3-ubyte.gz")
    code, text = nas("run", "--data-dir", data, "--storage", f"sqlite:///{tmp_path}/s.db", "--budget", "60s",
                     "--report", data / "t10k-images-idx3-ubyte.gz")
    assert code == 2 and "is the fashion-mnist file" in text and digest(data / "t10k-images-idx3-ubyte.gz") == before
    assert not (tmp_path / "s.db").exists()  # refused before the study was made


@pytest.mark.parametrize("storage", ["fixed.yaml", "t.npz"])
def test_search_never_takes_a_file_of_something_else_for_its_storage(study, npz_gray, storage):
    shutil.copy(npz_gray, study / "t.npz")
    before = {p: digest(p) for p in study.rglob("*") if p.is_file()}
    code, text = nas("search", "--space", study / "fixed.yaml", "--dataset", study / "t.npz", "--storage",
                     f"sqlite:///{study / storage}", "--trials", 1)
    assert code == 2 and f"{study / storage} is not a SQLite database" in text, text
    assert {p: digest(p) for p in study.rglob("*") if p.is_file()} == before


def test_best_never_exports_into_the_dataset_folder(study):
    code, text = nas("best", "--storage", f"sqlite:///{study}/s.db", "--dataset", study / "imgs", "--export",
                     study / "imgs" / "model")
    assert code == 2 and f"--export {study}/imgs/model is inside the dataset folder" in text
    assert not (study / "imgs" / "model").exists()


def test_train_never_replaces_the_export_its_space_comes_from(study):
    out = study / "out"
    before = {p.name: digest(p) for p in out.iterdir()}
    code, text = nas("train", "--space", out / "arch.yaml", "--dataset", study / "imgs", "--export", out, "--force")
    assert code == 2 and f"--export {out} holds the --space file {out}/arch.yaml" in text
    assert {p.name: digest(p) for p in out.iterdir()} == before


# --- 2. devices, FIFOs and sockets -------------------------------------------------------------------------


def special(path: Path, kind: str) -> Path:
    """A node of `kind` at `path`: a FIFO, a socket, or (as root) a character device like /dev/null."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


KINDS = {"fifo": (stat.S_ISFIFO, "a FIFO"), "socket": (stat.S_ISSOCK, "a socket"),
         "char device": (stat.S_ISCHR, "a character device")}


@pytest.mark.parametrize("kind", KINDS)
def test_write_file_never_renames_over_a_device_fifo_or_socket(tmp_path, kind):
    node = special(tmp_path / "node", kind)
    link = tmp_path / "link"
    link.symlink_to(node)
    for target in (node, link):
        with pytest.raises(WriteError, match=f"is {KINDS[kind][1]}.*regular file only.*Choose a file path"):
            write_file(target, "x")
    assert KINDS[kind][0](node.stat().st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "node"]  # no temporary left either


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["report", "validate", "train", "search"])
def test_commands_refuse_a_device_fifo_or_socket_as_output_and_leave_it(study, kind, command):
    node = special(study / "node", kind)
    args = {"report": ["report", "--storage", f"sqlite:///{study}/s.db", "--out", node],
            "validate": ["validate", "--dataset", study / "imgs", "--write", node],
            "train": ["train", "--space", study / "fixed.yaml", "--dataset", study / "imgs", "--export", node],
            "search": ["search", "--space", study / "fixed.yaml", "--dataset", study / "imgs", "--storage",
                       f"sqlite:///{node}"]}[command]
    code, text = nas(*args)
    assert code == 2 and f"{node} is {KINDS[kind][1]}" in text, text
    assert KINDS[kind][0](node.stat().st_mode)


def test_write_file_writes_through_a_link_and_keeps_it(tmp_path):
    (tmp_path / "site").mkdir()
    link = tmp_path / "report.html"
    link.symlink_to(tmp_path / "site" / "report.html")
    write_file(link, "<p>new")
    assert link.is_symlink() and (tmp_path / "site" / "report.html").read_text() == "<p>new"


# --- 3. temporaries: cleaned on signals, and after a kill -9 by the next run -------------------------------


def start_train_export(folder: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas.cli", "train", "--space", folder / "fixed.yaml", "--dataset",
                             folder / "imgs", "--export", folder / "out", "--quiet", *extra], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"NAS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def wait_for_temporary(folder: Path, proc: subprocess.Popen) -> Path:
    """The export's temporary folder, as soon as the process has made it (polled, for at most a minute)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        made = list(folder.glob(".out-new-*"))
        if made:
            return made[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError("the export never started")


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".out-", ".nas-")))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_the_export_leaves_no_temporary_and_keeps_the_earlier_export(study, signum):
    before = {p.name: digest(p) for p in (study / "out").iterdir()}
    proc = start_train_export(study, "--force", "--seed", "1")
    wait_for_temporary(study, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "nothing was written to" in " ".join(err.split())
    assert temporaries(study) == []
    assert {p.name: digest(p) for p in (study / "out").iterdir()} == before  # the earlier export, whole


@pytest.mark.parametrize("error, expected", [(ImportError, "Interrupted"), (WriteError, "WriteError")])
def test_an_error_that_a_signal_caused_inside_an_extension_is_the_signal(error, expected):
    """pybind11 turns an exception raised while a module initialises into `ImportError: initialization
    failed`: with a signal pending, that error is the signal; a NasError stays what it says."""
    from nas.signals import signals_interrupt

    with pytest.raises(BaseException) as raised:
        with signals_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)  # ended at once by the handler's exception
            except KeyboardInterrupt:
                raise error("initialization failed") from None
    assert type(raised.value).__name__ == expected and getattr(raised.value, "status", 143) == 143


@pytest.mark.slow
def test_a_kill_9_during_the_export_is_cleaned_by_the_next_run_and_only_ours(study):
    proc = start_train_export(study, "--force")
    left = wait_for_temporary(study, proc)
    proc.kill()
    proc.wait()
    assert left.exists()  # what a kill -9 leaves
    alive = study / f".out-new-{os.getpid()}.{files._host_key()}-abcdefgh"  # ours, but of a process still running
    other_host = study / f".out-new-{proc.pid}.00000000-abcdefgh"
    users = [study / ".out-new-mine", study / ".out-new-keep", alive, other_host]
    for p in users:
        p.mkdir()
        (p / "notes.txt").write_text("keep")
    code, text = nas("train", "--space", study / "fixed.yaml", "--dataset", study / "imgs", "--export",
                     study / "out", "--force", "--quiet")
    assert code == 0, text
    assert not left.exists() and is_export(study / "out")
    assert all((p / "notes.txt").read_text() == "keep" for p in users)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_an_export_moved_aside_by_a_killed_run_is_put_back(study):
    """A kill -9 between replace_folder's two renames: the earlier export is in `.out-old-*`, `out` is gone."""
    before = {p.name: digest(p) for p in (study / "out").iterdir()}
    old = study / f".out-old-{dead_pid()}.{files._host_key()}-abcdefgh"
    old.mkdir()
    (study / "out").rename(old / "out")
    stale = study / f".r.html-tmp-{dead_pid()}.{files._host_key()}-abcdefgh"
    stale.write_text("<p>half")
    code, text = nas("report", "--storage", f"sqlite:///{study}/s.db", "--out", study / "r.html")
    assert code == 0, text
    assert {p.name: digest(p) for p in (study / "out").iterdir()} == before and temporaries(study) == []
    assert not stale.exists()


# --- 4. nas run interrupted after its export --------------------------------------------------------------


@pytest.mark.slow
def test_a_run_interrupted_while_writing_the_report_says_the_export_is_done_and_how_to_finish(tmp_path, idx_dir,
                                                                                              monkeypatch):
    from nas import report as reporting

    write_report = reporting.write_report

    def signalled(*args, **kwargs):  # a real SIGTERM, once the report is being written
        os.kill(os.getpid(), signal.SIGTERM)
        return write_report(*args, **kwargs)

    monkeypatch.setattr(reporting, "write_report", signalled)
    (tmp_path / "fixed.yaml").write_text(FIXED)
    db, out, page = f"sqlite:///{tmp_path}/s.db", tmp_path / "model", tmp_path / "report.html"
    code, text = nas("run", "--space", tmp_path / "fixed.yaml", "--data-dir", idx_dir, "--budget", "10s", "--storage", db,
                     "--export", out, "--report", page, "--quiet")
    assert code == 143 and "interrupted by SIGTERM" in text and f"the model is exported to {out}" in text, text
    assert is_export(out) and not page.exists() and "nothing exported" not in text
    monkeypatch.setattr(reporting, "write_report", write_report)
    advice = shlex.split(text.split("the report is not written: ")[1].split(" writes it")[0])
    code, text = nas(*advice[1:])
    assert code == 0 and page.stat().st_size > 0, text


# --- 5. SQLite URLs are read as SQLAlchemy reads them ------------------------------------------------------


def test_an_escaped_sqlite_url_makes_the_folder_sqlite_uses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///my%20studies/s.db"
    storage.check_storage_target(url)
    storage.open_storage(url, create=True)
    assert (tmp_path / "my studies" / "s.db").is_file() and not (tmp_path / "my%20studies").exists()
    assert studies.list_studies(url) == []  # read back from the same file
