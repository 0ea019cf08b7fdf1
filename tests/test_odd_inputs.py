"""Odd files and odd names: pipes and devices where files are expected, names that look like Rich
markup, names that are not UTF-8, consoles that cannot print Unicode or report a tiny width.

Every reader must refuse a FIFO or a device from its stat, so each case here runs with a time limit:
a regression fails the test instead of hanging the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from nas.data import load_dataset
from nas.formats import read_idx, read_images
from nas.errors import NasError
from nas.files import ReadError, check_readable_file
from conftest import write_idx_dataset

LIMIT = 20  # seconds any one case may take; a reader blocked on a FIFO would take for ever


def within(fn, limit: float = LIMIT) -> BaseException | None:
    """Run `fn` in a thread; fail if it has not ended in `limit` seconds; return what it raised."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as e:  # handed to the test, which checks it
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert outcome, f"{fn} did not end in {limit} s: it blocks on a pipe or reads a device for ever"
    return outcome[0]


def nas_cli(*args: object, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `nas` command in a child process, with a time limit, its output decoded leniently."""
    return subprocess.run([sys.executable, "-m", "nas.cli", *map(str, args)], capture_output=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=cwd)


class Ran:
    """What `nas_here` gives back: the exit status and the output as bytes, like a CompletedProcess."""

    def __init__(self, result):
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout_bytes, result.stderr_bytes or b""


def nas_here(*args: object, cwd: Path) -> Ran:
    """`nas ARGS` in this process (faster than `nas_cli`, for what does not depend on the console's set-up)."""
    from contextlib import chdir

    from typer.testing import CliRunner

    from nas.cli import app

    with chdir(cwd):
        return Ran(CliRunner().invoke(app, [str(a) for a in args]))


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def image_folder(root: Path, size: int = 8) -> Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(np.full((size, size), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


# --- pipes and devices -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/urandom", "folder"])
def test_check_readable_file_refuses_what_is_not_a_regular_file_without_opening_it(tmp_path, kind):
    path = {"fifo": lambda: fifo(tmp_path / "p"), "folder": lambda: tmp_path}.get(kind, lambda: Path(kind))()
    words = {"fifo": "is a named pipe (FIFO)", "folder": "is a folder"}.get(kind, "is a character device")
    error = within(lambda: check_readable_file(path, "an image"))
    assert isinstance(error, ReadError) and words in str(error) and "an image must be a regular file" in str(error)
    assert within(lambda: check_readable_file(tmp_path / "missing", "an image")) is None  # the open says so
    (tmp_path / "f").write_bytes(b"")
    assert within(lambda: check_readable_file(tmp_path / "f", "an image")) is None


@pytest.mark.parametrize("setup, words", [
    (lambda t: str(fifo(t / "d.npz")), "d.npz: is a named pipe (FIFO), but an .npz file must be a regular file"),
    (lambda t: str(fifo(t / "data")), "data: is a named pipe (FIFO)"),
    (lambda t: "/dev/zero", "/dev/zero: is a character device"),
    (lambda t: "/dev/urandom", "/dev/urandom: is a character device"),
    (lambda t: str(fifo(image_folder(t / "imgs") / "a" / "pipe.png").parent.parent), "pipe.png: is a named pipe (FIFO)"),
], ids=["npz fifo", "fifo without suffix", "/dev/zero", "/dev/urandom", "fifo in an image folder"])
def test_a_dataset_that_is_a_pipe_or_device_is_refused_not_read(tmp_path, setup, words):
    name = setup(tmp_path)
    error = within(lambda: load_dataset(name))
    assert isinstance(error, NasError) and words in str(error), error


def test_an_idx_or_cifar_file_that_is_a_pipe_is_refused(tmp_path):
    folder = write_idx_dataset(tmp_path / "fm", n_train=2, n_test=1)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    fifo(folder / "t10k-labels-idx1-ubyte.gz")
    error = within(lambda: load_dataset("fashion-mnist", folder))
    assert isinstance(error, NasError) and "t10k-labels-idx1-ubyte.gz: is a named pipe (FIFO)" in str(error)
    error = within(lambda: read_idx(Path("/dev/zero"), 1))
    assert isinstance(error, NasError) and "an IDX file must be a regular file" in str(error)
    cifar = tmp_path / "cifar-10-batches-bin"
    for i in range(1, 6):
        (cifar / f"data_batch_{i}.bin").parent.mkdir(exist_ok=True)
        (cifar / f"data_batch_{i}.bin").write_bytes(bytes(3073))
    fifo(cifar / "test_batch.bin")
    error = within(lambda: load_dataset("cifar10", cifar))
    assert isinstance(error, NasError) and "test_batch.bin: is a named pipe (FIFO)" in str(error)


def test_images_to_classify_that_are_pipes_or_devices_are_refused(tmp_path):
    for path in (fifo(tmp_path / "pipe.png"), fifo(tmp_path / "x.npz"), Path("/dev/zero"), tmp_path):
        error = within(lambda: read_images([path], (1, 8, 8)))
        assert isinstance(error, NasError) and f"{path}: is a" in str(error), error


def test_space_and_baseline_files_that_are_pipes_are_refused(tmp_path):
    from nas.spacefile import load_space

    fifo(tmp_path / "net.yaml")
    (tmp_path / "s.yaml").write_text("baselines: [net.yaml]\n")
    error = within(lambda: load_space(tmp_path / "s.yaml"))
    assert isinstance(error, NasError) and "baselines[0]: " in str(error) and "net.yaml: is a named pipe" in str(error)
    error = within(lambda: load_space(tmp_path / "net.yaml"))
    assert isinstance(error, NasError) and "a space file must be a regular file" in str(error)


@pytest.mark.parametrize("name", ["metrics.json", "arch.yaml", "model.pt"])
def test_an_export_file_that_is_a_pipe_is_refused_not_read(tmp_path, name):
    from nas.export import open_export

    for f in ("metrics.json", "arch.yaml", "model.pt"):
        if f != name:
            (tmp_path / f).write_text("{}")
    fifo(tmp_path / name)
    error = within(lambda: open_export(tmp_path))
    assert isinstance(error, NasError) and f"{name}: is a named pipe (FIFO), but an export's {name}" in str(error)


@pytest.mark.slow
def test_the_commands_refuse_pipes_and_devices_in_a_real_process(tmp_path):
    """The same through the real command line: exit 2 and one `error:` line, in seconds."""
    pipe = fifo(tmp_path / "d.npz")
    for args, words in ((["validate", "--dataset", pipe], "d.npz: is a named pipe (FIFO)"),
                        (["validate", "--space", "/dev/zero"], "/dev/zero: is a character device"),
                        (["studies", "--storage", f"sqlite:///{pipe}"], "d.npz: is a named pipe (FIFO), but the study storage"),
                        (["search", "--dataset", "/dev/urandom", "--storage", f"sqlite:///{tmp_path}/s.db"],
                         "/dev/urandom: is a character device")):
        r = nas_cli(*args)
        err = r.stderr.decode()
        assert r.returncode == 2 and err.startswith("error:") and words in err and "Traceback" not in err, err


# --- names are data, not markup; any encoding; any console ----------------------------------------

HOSTILE = "[/]x[red]y[/2024]:x:"  # Rich would read [red] as a style, [/] as a closing tag (MarkupError), :x: as ❌
GOOD = "architecture: {blocks: 1, block: {channels: 4}, head: {layers: 1, units: 8}}\nbudget: {epochs: 1}\n"
ASCII = {"PYTHONIOENCODING": "ascii"}
C_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}  # stdout ASCII, as on old hosts


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """A folder named like markup, holding a study named like markup (1 trial) on images whose class
    folders are named like markup and in Latin-1 (bytes b'caf\\xe9', not UTF-8), and an export of it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("names") / "[bold]w"
    for c in (b"caf\xe9", b"[red]tea"):
        folder = os.fsencode(root / "imgs") + b"/" + c
        os.makedirs(folder)
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i if c[0] == 99 else 250 - 40 * i, np.uint8)).save(
                os.fsdecode(folder + b"/%d.png" % i))
    (root / "s.yaml").write_text(GOOD)
    r = nas_here("search", "--space", "s.yaml", "--study", HOSTILE, "--storage", "sqlite:///s.db", "--dataset", "imgs",
                 "--trials", 1, "--quiet", cwd=root)
    assert r.returncode == 0, r.stderr.decode()
    r = nas_here("train", "--space", "s.yaml", "--dataset", "imgs", "--export", "[/]out", "--quiet", cwd=root)
    assert r.returncode == 0 and b"written to [/]out" in r.stdout, r.stdout + r.stderr
    return root


def test_study_and_path_names_that_look_like_markup_are_printed_as_they_are(hostile):
    for args, shown in ((["best", "--study", HOSTILE], f"best 1 of 1 trained trial in '{HOSTILE}'"),
                        (["studies"], HOSTILE),
                        (["report", "--study", HOSTILE, "--out", "[/2024]r.html"], f"wrote [/2024]r.html (")):
        r = nas_here(*args, "--storage", "sqlite:///s.db", cwd=hostile)
        out = " ".join(r.stdout.decode().split())
        assert r.returncode == 0 and shown in out and "Traceback" not in r.stderr.decode(), r.stdout + r.stderr
    assert (hostile / "[/2024]r.html").is_file()
    r = nas_here("best", "--study", "[red]none", "--storage", "sqlite:///s.db", cwd=hostile)
    assert r.returncode == 2 and "[red]none" in r.stderr.decode(), r.stderr
    r = nas_here("validate", "--space", "a\x1b[31mb\x1b]0;title\x07.yaml", cwd=hostile)  # terminal commands in a name
    assert r.returncode == 2 and "a\\x1b[31mb\\x1b]0;title\\x07.yaml: no such space file" in r.stderr.decode(), r.stderr
    assert b"\x1b" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("env", [ASCII, C_LOCALE], ids=["PYTHONIOENCODING=ascii", "LANG=C"])
def test_latin1_and_markup_class_names_survive_search_export_and_predict_on_any_console(hostile, env):
    """The classes are the folders' names as text (b'caf\\xe9' as caf\\xe9), the same in the export, so
    predict names them; an ASCII console prints → and × escaped instead of crashing."""
    import json

    assert json.loads((hostile / "[/]out" / "metrics.json").read_text())["classes"] == ["[red]tea", "caf\\xe9"]
    image = os.fsencode(hostile / "imgs") + b"/caf\xe9/1.png"
    if env is ASCII:  # (one console is enough for predict)
        r = nas_cli("predict", "[/]out", os.fsdecode(image), cwd=hostile, env=env)
        out = r.stdout.decode("utf-8", "replace")
        assert r.returncode == 0 and "caf\\xe9 " in out and "[red]tea " in out and "1.png: " in out, r.stdout + r.stderr
    r = nas_cli("validate", "--dataset", "imgs", "--samples", 1, cwd=hostile, env=env)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0 and "\\u2192" in out, out + r.stderr.decode()
    r = nas_cli("validate", "--space", "missing→.yaml", cwd=hostile, env=env)
    assert r.returncode == 2 and r.stderr.decode("utf-8", "replace").startswith("error: missing"), r.stderr


def test_npz_class_names_with_lone_surrogates_become_text_every_writer_takes(tmp_path):
    x = np.zeros((4, 6, 6), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 0, 1, 1]), x_test=x[:2], y_test=np.array([0, 1]),
             classes=np.array(["caf\udce9", "[red]"]))
    classes = load_dataset(str(tmp_path / "d.npz")).classes
    assert classes == ("caf\\xe9", "[red]") and all(c.encode("utf-8") for c in classes)


def test_a_non_utf8_dataset_path_is_searched_and_refused_only_where_it_would_be_written(hostile, tmp_path):
    latin = os.fsdecode(os.fsencode(tmp_path) + b"/d\xe9")
    os.rename(hostile / "imgs", latin)
    try:
        r = nas_here("search", "--dataset", latin, "--storage", f"sqlite:///{tmp_path}/s.db", "--trials", 1, "--epochs", 1,
                     "--quiet", cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()
        assert b"auto-d\\xe9" in nas_here("studies", "--storage", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path).stdout
        r = nas_here("validate", "--dataset", latin, "--write", tmp_path / "w.yaml", cwd=tmp_path)
        assert r.returncode == 2 and b"the dataset's path is not UTF-8" in r.stderr and not (tmp_path / "w.yaml").exists()
        for option, value in (("--study", "caf\udce9"), ("--export", latin)):
            r = nas_here("best", "--storage", f"sqlite:///{tmp_path}/s.db", option, value, cwd=tmp_path)
            said = " ".join(r.stderr.decode().replace("│", " ").split())  # click's usage error, in a box
            assert r.returncode == 2 and "holds bytes that are not UTF-8" in said, said
    finally:
        os.rename(latin, hostile / "imgs")


@pytest.mark.slow
@pytest.mark.parametrize("columns, checks", [("20", ["table"]), ("0", ["table", "error"]), ("²", ["error", "usage"])])
def test_a_tiny_zero_or_odd_console_width_still_shows_the_figures_and_the_errors(hostile, columns, checks):
    """COLUMNS=0 printed nothing at all (typer's usage errors neither), COLUMNS=² crashed Rich's int()."""
    env = {"COLUMNS": columns, "LINES": columns}
    if "table" in checks:
        r = nas_cli("best", "--study", HOSTILE, "--storage", "sqlite:///s.db", cwd=hostile, env=env)
        out = r.stdout.decode()
        assert r.returncode == 0 and "val acc" in out and "0." in out.split("val acc")[1] and HOSTILE in out, out
    if "error" in checks:
        r = nas_cli("validate", "--space", "nothing.yaml", cwd=hostile, env=env)
        assert r.returncode == 2 and "no such space file" in " ".join(r.stderr.decode().split()), r.stderr
    if "usage" in checks:
        r = nas_cli("search", "--workers", "x", cwd=hostile, env=env)
        assert r.returncode == 2 and "Invalid value for '--workers'" in r.stderr.decode(), r.stderr


@pytest.mark.parametrize("args", [["--workers", "²"], ["--workers", "①"], ["--workers", "٣"], ["--device", "cuda:²"]])
def test_digits_of_other_scripts_are_a_usage_error_not_a_traceback(args):
    from typer.testing import CliRunner

    from nas.cli import app

    r = CliRunner().invoke(app, ["search", *args])
    assert r.exit_code == 2 and "Invalid value" in r.output and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(app, ["run", "--budget", "٣m"])
    assert r.exit_code == 2 and "expected a time from 10s to 168h" in r.output, r.output


# --- odd data read right -----------------------------------------------------------------------


@pytest.mark.parametrize("shape, expected", [
    ((4, 3, 4, 4), (3, 4, 4)),  # 3-channel 4×4 (square), not 4-channel 3×4
    ((4, 1, 2, 2), (1, 2, 2)),  # 1-channel 2×2, not 2-channel 1×2
    ((4, 4, 4, 3), (3, 4, 4)),  # channels last: 4×4 RGB, not 4-channel 4×3
    ((4, 2, 2, 4), (4, 2, 2)),  # the square reading: RGBA 2×2
    ((4, 1, 3, 4), (1, 3, 4)),  # neither square: more pixels (3×4 > 1×3)
    ((4, 3, 5, 3), (3, 3, 5)),  # a tie: N×H×W×C, the documented layout
    ((4, 3, 10, 12), (3, 10, 12)),
    ((4, 10, 12, 3), (3, 10, 12)),
], ids=lambda v: "x".join(map(str, v)))
def test_tiny_arrays_are_read_in_the_layout_the_documented_rule_gives(tmp_path, shape, expected):
    x = np.arange(np.prod(shape), dtype=np.int64).reshape(shape).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 0, 1, 1]), x_test=x[:2], y_test=np.array([0, 1]))
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert ds.input_shape == expected
    first = expected == shape[1:]
    assert np.array_equal(ds.x_train.numpy(), x if first else x.transpose(0, 3, 1, 2))  # the pixels, not only the shape


def test_grey_gifs_animated_or_not_are_one_channel_and_colour_ones_three(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "grey" / c).mkdir(parents=True)
        for i in range(6):
            frames = [Image.fromarray(np.full((8, 8), 40 * i + k, np.uint8)) for k in range(3)]
            frames[0].save(tmp_path / "grey" / c / f"{i}.gif", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "grey" / "a" / "0.gif").mode == "P"  # a palette image, whose palette is grey
    ds = load_dataset(str(tmp_path / "grey"))
    assert ds.input_shape == (1, 8, 8) and ds.x_train[ds.y_train == 0][0].unique().tolist() == [40]  # 1.gif, frame 0
    Image.new("RGB", (8, 8), (200, 10, 10)).convert("P").save(tmp_path / "grey" / "a" / "red.gif")
    assert load_dataset(str(tmp_path / "grey")).input_shape == (3, 8, 8)


@pytest.mark.parametrize("mode, channels", [("LA", 2), ("RGBA", 4), ("RGBA", 1), ("L", 4)])
def test_images_to_classify_are_converted_to_the_models_channels_alpha_included(tmp_path, mode, channels):
    from PIL import Image

    pixel = {"LA": (90, 30), "RGBA": (200, 100, 50, 30), "L": 90}[mode]
    Image.new(mode, (8, 8), pixel).save(tmp_path / "i.png")
    names, x = read_images([tmp_path / "i.png"], (channels, 8, 8))
    assert x.shape == (1, channels, 8, 8)
    expected = np.asarray(Image.new(mode, (1, 1), pixel).convert({1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]))
    assert x[0, :, 0, 0].tolist() == np.atleast_1d(expected[0, 0]).tolist()
