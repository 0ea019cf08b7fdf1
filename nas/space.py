"""The search space as plain data: the validated `Space`, its dimensions, and `sample(space, trial)` -> `ArchSpec`.

A value is a constant, a choice, an int or a float range (`Const`, `Choice`, `IntRange`, `FloatRange`).
Per-block and per-layer values are sampled per block and named by path (`block2.channels`,
`fc1.units`), so a block that does not exist has no parameters. The model builder never sees a
trial: sampling returns an `ArchSpec`, and a space of constants only is a fixed architecture.
Reading space files (YAML) into a `Space` is `spacefile`'s job.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from nas.errors import NasError
from nas.spec import ArchSpec, BlockSpec, LayerSpec, TrainSpec


class SpaceError(NasError):
    """A space file that cannot be used: the message names the file, the path in it and what is allowed."""


# ---------------------------------------------------------------------------------------------
# Dimensions


@dataclass(frozen=True)
class Const:
    """A value that is not searched."""

    value: Any


@dataclass(frozen=True)
class Choice:
    """One of a list of values (`{choice: [...]}`)."""

    values: tuple


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high] (`{int: [lo, hi]}`), log-uniform with `log`."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    """A number in [low, high] (`{float: [lo, hi]}`), log-uniform with `log`."""

    low: float
    high: float
    log: bool = False


Dim = Const | Choice | IntRange | FloatRange


# ---------------------------------------------------------------------------------------------
# The validated space


@dataclass(frozen=True)
class Space:
    """A validated space file: what is searched, its budget, constraints and baselines."""

    name: str
    dataset: str
    epochs: int
    val_fraction: float
    subset: int | None
    max_params: int | None
    max_mflops: float | None
    n_blocks: Dim | None  # None: `blocks` is a fixed list of templates
    blocks: tuple[dict[str, Dim], ...]
    n_layers: Dim | None
    layers: tuple[dict[str, Dim], ...]
    init: Dim
    training: dict[str, Dim]
    readout: Dim = Const("flatten")
    baselines: tuple[Path | Space, ...] = ()  # a baseline file, or a fixed net written inline
    path: Path | None = None
    objectives: tuple[str, ...] = ("accuracy",)
    max_latency_ms: float | None = None

    @property
    def needs_latency(self) -> bool:
        """Whether each net's latency must be measured (an objective or a constraint uses it)."""
        return "latency" in self.objectives or self.max_latency_ms is not None

    def dimensions(self) -> dict[str, Dim]:
        """Every searched (non-constant) dimension by parameter name, blocks at their largest count."""
        out: dict[str, Dim] = {}

        def record(name: str, dim: Dim) -> Any:
            if not isinstance(dim, Const):
                out[name] = dim
            return _largest(dim)

        _walk(self, record)
        momentum, optimizer = self.training["momentum"], self.training["optimizer"]
        if not isinstance(momentum, Const) and _contains(optimizer, "sgd"):
            out["momentum"] = momentum  # conditional on sgd, which the walk above may not have picked
        return out


class Trial(Protocol):
    """What `sample` needs of a trial: Optuna's `Trial` and `FixedTrial` both fit."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


class RandomTrial:
    """A Trial that draws every value at random from a seeded generator (uniform, or log-uniform for log
    ranges): enough to show what a space holds without an Optuna study."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.rng.choice(list(choices))

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        if log:
            return min(high, max(low, round(math.exp(self.rng.uniform(math.log(low), math.log(high))))))
        return self.rng.randint(low, high)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return math.exp(self.rng.uniform(math.log(low), math.log(high))) if log else self.rng.uniform(low, high)


def sample(space: Space, trial: Trial | None = None) -> ArchSpec:
    """Turn a trial into an ArchSpec; a fixed space needs no trial."""

    def pick(name: str, dim: Dim) -> Any:
        if isinstance(dim, Const):
            return dim.value
        if trial is None:
            raise SpaceError(f"{where(space)}: `{name}` is searched, so this space is not a fixed architecture.")
        if isinstance(dim, Choice):
            return trial.suggest_categorical(name, list(dim.values))
        if isinstance(dim, IntRange):
            return trial.suggest_int(name, dim.low, dim.high, log=dim.log)
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log)

    return _walk(space, pick)


def to_params(space: Space, spec: ArchSpec, source: str = "the architecture") -> dict[str, Any]:
    """The trial parameters that make `sample` return `spec`; error if `spec` lies outside `space`."""
    values, params = spec.flat(), {}
    for count, listed, what in ((len(spec.blocks), space.blocks, "blocks"), (len(spec.head), space.layers, "head layers")):
        fixed = space.n_blocks if what == "blocks" else space.n_layers
        if fixed is None and count != len(listed):
            raise SpaceError(
                f"{source} has {count} {what}, but the space {where(space)} lists exactly {len(listed)}; "
                f"give the space {count} {what} (or a count such as {{int: [1, {max(count, len(listed))}]}}), or fix the baseline."
            )

    def pick(name: str, dim: Dim) -> Any:
        value = values[name]
        if not _contains(dim, value):
            raise SpaceError(
                f"{source} does not fit the space {where(space)}: `{name}` is {value!r}, "
                f"but the space allows {dim_text(dim)}. Widen the space or fix the baseline."
            )
        if not isinstance(dim, Const):
            params[name] = value
        return value

    _walk(space, pick)
    return params


def _walk(space: Space, pick: Callable[[str, Dim], Any]) -> ArchSpec:
    """Visit every dimension in one fixed order, naming each; `pick` gives its value."""
    blocks = space.blocks * pick("blocks", space.n_blocks) if space.n_blocks else space.blocks
    layers = space.layers * pick("head.layers", space.n_layers) if space.n_layers else space.layers
    block_specs = tuple(
        BlockSpec(**{k: pick(f"block{i}.{k}", d) for k, d in t.items()}) for i, t in enumerate(blocks, 1)
    )
    layer_specs = tuple(LayerSpec(**{k: pick(f"fc{i}.{k}", d) for k, d in t.items()}) for i, t in enumerate(layers, 1))
    init = pick("init", space.init)
    readout = pick("readout", space.readout)
    tr = {k: pick(k, d) for k, d in space.training.items() if k != "momentum"}
    tr["momentum"] = pick("momentum", space.training["momentum"]) if tr["optimizer"] == "sgd" else 0.0
    return ArchSpec(block_specs, layer_specs, init, TrainSpec(**tr), readout)


def _contains(dim: Dim, value: Any) -> bool:
    if isinstance(dim, Const):
        return value == dim.value
    if isinstance(dim, Choice):
        return value in dim.values
    return dim.low <= value <= dim.high


def _largest(dim: Dim) -> Any:
    if isinstance(dim, Const):
        return dim.value
    if isinstance(dim, Choice):
        return max(dim.values) if all(isinstance(v, (int, float)) for v in dim.values) else dim.values[0]
    return dim.high


def dim_text(dim: Dim) -> str:
    """A dimension in a few words, for tables and errors."""
    if isinstance(dim, Const):
        return f"only {dim.value!r}"
    if isinstance(dim, Choice):
        return f"choice {list(dim.values)}"
    return f"[{dim.low}, {dim.high}]" + (" (log)" if dim.log else "")


def n_combinations(space: Space) -> tuple[int, int]:
    """(discrete architectures and settings, number of continuous dimensions) over all block counts."""
    n_continuous = sum(isinstance(d, FloatRange) for d in space.dimensions())

    def count(dim: Dim) -> int:
        if isinstance(dim, Choice):
            return len(dim.values)
        if isinstance(dim, IntRange):
            return dim.high - dim.low + 1
        return 1

    def product(template: dict[str, Dim]) -> int:
        return math.prod(count(d) for d in template.values())

    def repeated(n_dim: Dim | None, templates: tuple[dict[str, Dim], ...]) -> int:
        if n_dim is None:
            return math.prod(product(t) for t in templates)
        counts = n_dim.values if isinstance(n_dim, Choice) else range(_low(n_dim), _largest(n_dim) + 1)
        return sum(product(templates[0]) ** n for n in counts)

    tr = {k: d for k, d in space.training.items() if k != "momentum"}
    total = repeated(space.n_blocks, space.blocks) * repeated(space.n_layers, space.layers)
    return total * count(space.init) * count(space.readout) * product(tr), n_continuous


def _low(dim: Dim) -> int:
    return dim.value if isinstance(dim, Const) else dim.low


def where(space: Space) -> str:
    """How messages name a space: its file, or its name when it has none."""
    return str(space.path) if space.path else space.name
