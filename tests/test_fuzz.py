"""Property-based fuzzing: mutated and random space files and random `.npz` contents may only ever give a
space or dataset, or a NasError, within bounded time and memory (never a traceback, a hang or a blow-up).

The default suite runs a small budget; NAS_FUZZ_EXAMPLES=5000 runs a long one (docs/reliability.md
records the last long run).
"""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st

from nas.data import load_dataset, split_sizes
from nas.errors import NasError
from nas.model import spec_info
from nas.space import _TRAINING, load_space, sample

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


@pytest.mark.skipif(EXAMPLES < 1000, reason="the long fuzz run: NAS_FUZZ_EXAMPLES=5000")
def test_long_run_is_recorded():
    """A reminder that a long run's outcome belongs in docs/reliability.md."""
    doc = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    assert "NAS_FUZZ_EXAMPLES" in doc
