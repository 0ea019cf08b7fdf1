"""The names a user may write, each kind in one place: in space files and on the command line.

This module imports nothing, so the CLI can offer them as choices without loading torch or Optuna.
The modules that build what a name stands for (`model`, `train`, `study`) each hold one registry
keyed by these names and check it against them when imported; `lookup` refuses an unknown name
with the valid ones listed, so nothing falls back silently.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

from nas.errors import NasError

DEFAULT_DATASET = "fashion-mnist"  # what a space without `dataset:`, or a search without a space, uses
DATASETS = ("fashion-mnist", "mnist", "kmnist", "cifar10")  # named datasets (data.py finds and downloads them)

# Space values (model.py and train.py build them)
BLOCKS = ("conv3x3", "conv5x5", "conv3x3x2", "residual", "sepconv")
READOUTS = ("flatten", "gap")  # how the last feature map becomes the head's input
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "elu", "silu", "tanh", "sigmoid")
POOLS = ("max", "avg", "none")
PADDINGS = ("valid", "same")
INITS = ("default", "xavier", "kaiming", "normal")
OPTIMIZERS = ("adam", "adamw", "sgd", "adadelta")
AUGMENTATIONS = ("none", "flip", "crop", "crop_flip")
SCHEDULES = ("constant", "cosine", "onecycle")

# Search options (study.py builds them)
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "pareto", "none")  # pareto: nas's own rule, the one multi-objective studies can use
OBJECTIVES = ("accuracy", "params", "flops", "latency")  # accuracy is maximised and comes first; the rest minimised

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """`registry[name]`, or an error that lists the names `what` may take."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise NasError(f"unknown {what} {name!r}; expected one of {', '.join(registry)}.") from None

TIME_LIMIT = "stopped at the time limit"  # the reason of a trial cut by --timeout or --budget (train, study, search)


def check_registry(registry: Mapping[str, Any], names: tuple[str, ...], what: str) -> None:
    """Fail at import if a module's registry and the names users may write have drifted apart."""
    if tuple(registry) != names:
        raise AssertionError(f"the {what} registry {tuple(registry)} differs from nas.names {names}")


def counted(n: int, word: str, words: str | None = None) -> str:
    """`n` and the noun it counts, in the singular for one: `1 trial`, `2 trials` (`words`: an irregular plural)."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"
