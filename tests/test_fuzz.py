"""Property-based fuzzing: mutated and random space files and random `.npz` contents may only ever give a
space or dataset, or a NasError, within bounded time and memory (never a traceback, a hang or a blow-up);
hostile names and paths (Rich markup, non-UTF-8 bytes, over-long names, FIFOs, devices) given to the
commands that render or write them may only give success or exit 2 with an `error:` line, in bounded time.

The default suite runs a small budget; NAS_FUZZ_EXAMPLES=5000 runs a long one (docs/reliability.md
records the last long run).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings, strategies as st

from nas.data import load_dataset, split_sizes
from nas.errors import NasError
from nas.model import spec_info
from nas.space import sample
from nas.spacefile import _TRAINING, load_space

SPACES = Path(__file__).parent.parent / "nas" / "spaces"
SEEDS = [p.read_text() for p in sorted(SPACES.glob("*.yaml"))]
EXAMPLES = int(os.environ.get("NAS_FUZZ_EXAMPLES", "60"))
MEMORY = 64 << 20  # bytes any one example may allocate at its peak (numpy's and Python's)
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _bounded(fn):
    """Run `fn()`; it may return or raise NasError, and must stay under MEMORY at its peak. The outcome
    (accepted, or which error) is a Hypothesis event, so --hypothesis-show-statistics tells the spread."""
    tracemalloc.start()
    outcome = "accepted"
    try:
        fn()
    except NasError as e:
        outcome = f"refused: {type(e).__name__}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    event(outcome)
    assert peak < MEMORY, f"peak {peak / 2**20:.0f} MiB"


# --- space files ---------------------------------------------------------------------------------


HOME = Path(tempfile.mkdtemp(prefix="nas-fuzz-"))  # copies of the shipped spaces, so baselines resolve
for _shipped in SPACES.glob("*.yaml"):
    (HOME / _shipped.name).write_text(_shipped.read_text())


@pytest.fixture(scope="module", autouse=True)
def _warm_up():
    """Import and initialise what loading, sampling and sizing touch once, so the memory bound measures
    one example, not torch's and Optuna's first-use set-up."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for seed in SEEDS:
        (HOME / "space.yaml").write_text(seed)
        try:
            spec_info(sample(load_space(HOME / "space.yaml"), study.ask()), (1, 28, 28), 10)
        except NasError:  # a sampled net may not fit the input: sizing it is what warms up
            pass

SNIPPETS = ["&a [1, 2]", "*a", "{choice: []}", "{int: [1, 99999999999999999999999]}", "{float: [.nan, .inf]}",
            "[" * 40 + "]" * 40, "!!binary AAAA", "!!python/name:os.system", "~", "-1e999", "0x1F", "'\\x00'",
            "{choice: [conv5x5, conv5x5]}", "2026-11-24", "{<<: *a}", "? [a]\n: 1", "\t", "\ufeff", "\x85"]


def mutate(text: str, ops: list[tuple[int, int, int, str]]) -> str:
    """Apply (kind, position, length, snippet) edits: delete, insert, duplicate or replace a slice."""
    for kind, pos, length, snippet in ops:
        pos %= len(text) + 1
        if kind == 0:
            text = text[:pos] + text[pos + length:]
        elif kind == 1:
            text = text[:pos] + snippet + text[pos:]
        elif kind == 2:
            text = text[:pos] + text[pos:pos + length] * 3 + text[pos:]
        else:
            text = text[:pos] + snippet + text[pos + length:]
    return text


mutations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4000), st.integers(0, 80),
                               st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=20))), max_size=6)
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
              st.sampled_from(["conv5x5", "relu", "adam", "max", "same", "choice", "int", "float", "log"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["choice", "int", "float", "log", "blocks", "block", "head",
                                                             "layers", "units", "channels", "conv", "lr", *_TRAINING]),
                                            inner, max_size=4)),
    max_leaves=20)
space_dicts = st.fixed_dictionaries({}, optional={
    "name": yaml_values, "dataset": st.sampled_from(["fashion-mnist", "mnist", "cifar10"]), "budget": yaml_values,
    "constraints": yaml_values, "architecture": yaml_values, "training": yaml_values, "baselines": yaml_values})


def check_space_file(data: bytes) -> None:
    """Load the space; if it loads, sample and size a few of its nets from their specs (nothing allocated)."""
    path = HOME / "space.yaml"
    path.write_bytes(data)

    def use() -> None:
        space = load_space(path)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(2):
            try:
                spec_info(sample(space, study.ask()), (1, 28, 28), 10)
            except NasError:
                pass

    _bounded(use)


@FUZZ
@given(seed=st.sampled_from(SEEDS), ops=mutations)
def test_mutated_space_files_load_or_say_why(seed, ops):
    check_space_file(mutate(seed, ops).encode("utf-8", "surrogatepass"))


@FUZZ
@given(raw=space_dicts)
def test_random_space_structures_load_or_say_why(raw):
    check_space_file(yaml.safe_dump(raw, allow_unicode=True).encode())


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_as_a_space_file_say_why(data):
    check_space_file(data)


def test_the_validate_command_on_mutated_spaces_exits_0_or_2():
    """The same through the command line, on a few fixed mutations: no traceback (exit 1) ever."""
    from typer.testing import CliRunner

    from nas.cli import app

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(20):
            seed = SEEDS[i % len(SEEDS)]
            ops = [(int(rng.integers(4)), int(rng.integers(4000)), int(rng.integers(40)), SNIPPETS[int(rng.integers(len(SNIPPETS)))])
                   for _ in range(3)]
            path = Path(tmp) / f"s{i}.yaml"
            path.write_text(mutate(seed, ops))
            result = CliRunner().invoke(app, ["validate", "--space", str(path), "--samples", "2"])
            assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output


# --- .npz datasets -------------------------------------------------------------------------------

DTYPES = [np.uint8, np.int8, np.int64, np.uint64, np.float32, np.float16, np.bool_, "<U3", "S2", np.complex64]
shapes = st.lists(st.sampled_from([0, 1, 2, 3, 4, 6]), min_size=0, max_size=5).map(tuple)


@st.composite
def arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(shapes)
    n = int(np.prod(shape))
    if dtype.kind in "US":
        return np.array(draw(st.lists(st.text("abc", max_size=3), min_size=n, max_size=n)) or [""] * n,
                        dtype=dtype).reshape(shape)
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def plausible_labels(n: int) -> st.SearchStrategy:
    """Mostly labels 0 and 1, sometimes one that breaks the set (a gap, negative, huge)."""
    tamper = st.sampled_from([None] * 4 + [2, -1, 255, 2**31, 2**63 - 1])
    return st.tuples(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n), tamper).map(
        lambda lt: np.array(lt[0][:-1] + [lt[1]] if lt[1] is not None and lt[0] else lt[0], dtype=np.int64))


@st.composite
def npz_contents(draw) -> dict[str, np.ndarray]:
    """Mostly near-valid datasets with one part broken, sometimes anything at all."""
    keys = ["x_train", "y_train", "x_test", "y_test", "classes", "junk"]
    if draw(st.booleans()):
        return draw(st.dictionaries(st.sampled_from(keys), arrays(), max_size=6))
    n_train, n_test = draw(st.integers(0, 10)), draw(st.integers(0, 4))
    hw = draw(st.sampled_from([(1, 1), (6, 6), (3, 5)]))
    layout = draw(st.sampled_from(["gray", "last", "first"]))
    extra = {"gray": (), "last": (draw(st.sampled_from([1, 3, 5])),), "first": ()}[layout]
    def images(n):
        shape = (n, *hw, *extra) if layout != "first" else (n, draw(st.sampled_from([1, 3])), *hw)
        return np.zeros(shape, np.uint8)
    out = {"x_train": images(n_train), "y_train": draw(plausible_labels(n_train)),
           "x_test": images(n_test), "y_test": draw(plausible_labels(n_test))}
    if draw(st.booleans()):
        out["classes"] = draw(arrays())
    broken = draw(st.sampled_from([None] * len(out) + list(out)))
    if broken:
        out[broken] = draw(arrays())
    return out


@FUZZ
@given(contents=npz_contents())
def test_random_npz_datasets_load_or_say_why(contents):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        np.savez(path, **contents)

        def use() -> None:
            ds = load_dataset(str(path))
            assert ds.n_classes >= 2 and int(ds.y_train.max()) < ds.n_classes and int(ds.y_test.max()) < ds.n_classes
            assert ds.x_train.shape[1:] == ds.x_test.shape[1:] and min(ds.input_shape) >= 1
            split_sizes(ds, 0.1)

        _bounded(use)


@FUZZ
@given(data=st.binary(max_size=3000), cut=st.integers(0, 3000))
def test_random_and_truncated_npz_files_say_why(data, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        np.savez(path, x_train=np.zeros((4, 6, 6), np.uint8), y_train=np.array([0, 0, 1, 1]),
                 x_test=np.zeros((2, 6, 6), np.uint8), y_test=np.array([0, 1]))
        whole = path.read_bytes()
        path.write_bytes(whole[:cut % (len(whole) + 1)] + data if data else whole[:cut % len(whole)])
        _bounded(lambda: load_dataset(str(path)))


# --- names and paths through the commands ---------------------------------------------------------

CLI_EXAMPLES = max(3, EXAMPLES // 12)  # each example runs whole commands: 5 by default, 416 in the long run
CLI_FUZZ = settings(max_examples=CLI_EXAMPLES, deadline=60_000, derandomize=EXAMPLES <= 100,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GOOD = "architecture: {blocks: 1, block: {channels: 4}, head: {layers: 1, units: 8}}\nbudget: {epochs: 1}\n"
MARKUP = ["[/]", "[red]", "[/2024]", "[bold red]", "[link=file:///etc]", "[@click=x]", "\\", "\\[", "[", "]", ":x:",
          "%s", "{}", "→", " ", "-", "'", '"', "$HOME", "\x1b[31m", "é"]
name_parts = st.one_of(st.sampled_from(MARKUP), st.text(st.characters(blacklist_categories=("Cs",),
                                                                       blacklist_characters="/\x00"), min_size=1, max_size=6))
short_names = st.lists(name_parts, min_size=1, max_size=6).map("".join)
names = st.one_of(short_names, short_names, short_names,  # and now and then one over a file name's 255 bytes
                  st.integers(200, 300).map(lambda n: "[red]" + "x" * n))
# A file name as the OS hands it over: text, or text with a byte that is not UTF-8 (Latin-1 é, 0xe9).
file_names = st.tuples(names, st.booleans()).map(lambda t: os.fsdecode(os.fsencode(t[0]) + b"\xe9") if t[1] else t[0])


def run_cli(*args: object) -> str:
    """`nas ARGS` in this process, within the time limit: success, or exit 2 with one `error:` paragraph (or
    click's usage error); never a traceback, a Rich MarkupError or a UnicodeEncodeError."""
    from typer.testing import CliRunner

    from nas.cli import app

    done: list = []
    thread = threading.Thread(target=lambda: done.append(CliRunner().invoke(app, [str(a) for a in args])), daemon=True)
    thread.start()
    thread.join(60)
    assert done, f"nas {' '.join(map(str, args))} did not end in 60 s"
    r = done[0]
    assert r.exception is None or isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert "\x1b" not in r.output, r.output  # a name's terminal commands are shown, not obeyed
    assert r.exit_code == 0 or (r.exit_code == 2 and (r.output.startswith("error: ") or "Invalid value" in r.output)), r.output
    if currently_in_test_context():  # the fixture runs commands too
        event(f"{args[0]}: exit {r.exit_code}")
    return r.output


def made(path: Path, write) -> Path:
    """`path` written by `write(path)`, if the file system takes its name (it may be too long)."""
    try:
        write(path)
    except OSError:
        event("name refused by the file system")
    return path


@pytest.fixture(scope="module")
def cli_home():
    """A tiny IDX dataset, a study 'tiny' of one trial on it in SQLite, and an export (made once)."""
    from conftest import write_idx_dataset

    home = Path(tempfile.mkdtemp(prefix="nas-fuzz-cli-"))
    write_idx_dataset(home / "data", n_train=5, n_test=2)
    (home / "s.yaml").write_text(GOOD.replace("budget", "name: tiny\nbudget"))
    run_cli("search", "--space", home / "s.yaml", "--storage", f"sqlite:///{home}/s.db", "--data-dir", home / "data",
            "--trials", 1, "--quiet")
    run_cli("train", "--space", home / "s.yaml", "--data-dir", home / "data", "--export", home / "out", "--quiet")
    assert (home / "s.db").is_file() and (home / "out" / "model.pt").is_file()
    return home


@pytest.mark.slow
@CLI_FUZZ
@given(name=names)
def test_hostile_study_names_in_studies_best_and_report(cli_home, name):
    import shutil
    import sqlite3

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(cli_home / "s.db", Path(tmp) / "s.db")
        with sqlite3.connect(Path(tmp) / "s.db") as db:
            db.execute("UPDATE studies SET study_name = ?", (name,))
        storage = f"sqlite:///{tmp}/s.db"
        assert [r["name"] for r in json.loads(run_cli("studies", "--storage", storage, "--json"))] == [name]
        run_cli("studies", "--storage", storage)
        assert "val acc" in run_cli("best", "--storage", storage, "--study", name, "--data-dir", cli_home / "data")
        out = run_cli("report", "--storage", storage, "--study", name, "--out", Path(tmp) / f"{name}.html")
        assert out.startswith("error: ") or (Path(tmp) / f"{name}.html").is_file()


@CLI_FUZZ
@given(name=file_names, kind=st.sampled_from(["file"] * 4 + ["fifo", "/dev/zero", "folder"]))
def test_hostile_file_names_in_validate_and_predict(cli_home, name, kind):
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        def special(path: Path, write) -> Path:
            return {"file": lambda: made(path, write), "fifo": lambda: made(path, os.mkfifo),
                    "folder": lambda: made(path, Path.mkdir), "/dev/zero": lambda: Path("/dev/zero")}[kind]()

        space = special(Path(tmp) / f"{name}.yaml", lambda p: p.write_text(GOOD))
        run_cli("validate", "--space", space, "--samples", 1)
        run_cli("validate", "--dataset", "fashion-mnist", "--data-dir", cli_home / "data", "--write",
                Path(tmp) / f"w{name}.yaml", "--samples", 0)
        image = special(Path(tmp) / f"{name}.png", lambda p: Image.new("L", (28, 28), 90).save(p, format="PNG"))
        out = run_cli("predict", cli_home / "out", image)
        assert out.startswith("error: ") or "T-shirt/top" in out or "Trouser" in out


@CLI_FUZZ
@given(classes=st.lists(file_names, min_size=2, max_size=3))
def test_hostile_class_folder_names_in_search(classes):
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        for k, c in enumerate(classes):  # numbered: distinct, and never hidden (.x), . or ..
            made(root / f"{k}{c}", lambda d: [d.mkdir(parents=True, exist_ok=True)] + [
                Image.new("L", (6, 6), 40 * k + i).save(d / f"{i}.png") for i in range(4)])
        (Path(tmp) / "s.yaml").write_text(GOOD)
        run_cli("validate", "--dataset", root, "--samples", 0)
        run_cli("search", "--space", Path(tmp) / "s.yaml", "--dataset", root, "--storage", f"sqlite:///{tmp}/s.db",
                "--trials", 1, "--quiet")


@pytest.mark.skipif(EXAMPLES < 1000, reason="the long fuzz run: NAS_FUZZ_EXAMPLES=5000")
def test_long_run_is_recorded():
    """A reminder that a long run's outcome belongs in docs/reliability.md."""
    doc = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    assert "NAS_FUZZ_EXAMPLES" in doc
