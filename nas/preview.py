"""What a space holds, shown without training anything (`nas validate`): its dimensions and size, and a
few nets drawn from it at random, each sized from its spec on PyTorch's meta device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from nas import autospace, names
from nas.autospace import space_text
from nas.data import dataset_inputs, dataset_shape, load_dataset
from nas.files import WriteError, check_file_target, check_not_input, name_text, write_file
from nas.model import ShapeError, assess
from nas.space import RandomTrial, dim_text, n_combinations, sample
from nas.spacefile import baseline_params, load_space, parse_space
from nas.train import pick_device


@dataclass(frozen=True)
class SampledNet:
    """One net drawn from a space, sized from its spec: `problem` says why a search would not train it."""

    arch: str
    stages: tuple[tuple[int, ...], ...]  # output shape of each block and head layer
    n_params: int | None
    flops: int | None
    problem: str | None


@dataclass(frozen=True)
class SpacePreview:
    """What `nas validate` shows of a space: its dimensions, its size and a few nets drawn from it."""

    name: str
    dimensions: list[tuple[str, str]]  # (parameter, its values in words)
    n_discrete: int
    n_continuous: int
    n_baselines: int
    input_shape: tuple[int, int, int]
    n_classes: int
    epochs: int
    samples: list[SampledNet]
    objectives: tuple[str, ...] = ("accuracy",)  # what a search of the space maximises (accuracy) and minimises


def builtin_space(dataset: str | None, data_dir: str | None = None, device: str = "auto",
                  objectives: Sequence[str] = ("accuracy",)) -> dict[str, Any]:
    """The built-in space `nas search --device DEVICE --objectives ...` uses for `dataset` without a space file
    (`autospace`)."""
    name = dataset or names.DEFAULT_DATASET
    return autospace.builtin_space(name, load_dataset(name, data_dir), str(pick_device(device)), objectives)


def write_builtin_space(out: Path, dataset: str | None, data_dir: str | None = None, device: str = "auto",
                        objectives: Sequence[str] = ("accuracy",)) -> None:
    """Write the built-in space for `dataset` to `out` as a space file to start from (never over the dataset)."""
    check_file_target(out, "the space file")
    check_not_input(out, "--write", dataset_inputs(dataset or names.DEFAULT_DATASET, data_dir))
    if dataset and name_text(dataset) != dataset:
        raise WriteError(f"{name_text(dataset)}: the dataset's path is not UTF-8, so a space file (UTF-8 YAML) "
                         "cannot name it; rename it with UTF-8 characters, or search it without a space file.")
    write_file(out, space_text(builtin_space(dataset, data_dir, device, objectives)))


def preview_space(path: str | None, dataset: str | None = None, data_dir: str | None = None, n_samples: int = 3,
                  seed: int = 0, device: str = "auto", objectives: Sequence[str] = ("accuracy",)) -> SpacePreview:
    """Check a space file (and its baselines), or the built-in space of `dataset` when `path` is None, and
    draw `n_samples` nets from it (one from a fixed architecture), each sized on the meta device (`device`
    picks the built-in space, as `nas search --device` does);
    nothing is trained or allocated."""
    space = load_space(path) if path else parse_space(builtin_space(dataset, data_dir, device, objectives))
    baselines = baseline_params(space)
    shape, n_classes = dataset_shape(dataset or space.dataset, data_dir)
    dims = space.dimensions()
    trial = RandomTrial(seed)
    samples = []
    for _ in range(n_samples if dims else 1):
        spec = sample(space, trial)
        try:
            info, problem, _ = assess(spec, shape, n_classes, torch.device("cpu"), space.max_params, space.max_mflops)
            samples.append(SampledNet(spec.describe(), info.stages, info.n_params, info.flops, problem))
        except ShapeError as e:
            samples.append(SampledNet(spec.describe(), (), None, None, f"invalid: {e}"))
    n_discrete, n_continuous = n_combinations(space)
    return SpacePreview(space.name, [(name, dim_text(dim)) for name, dim in dims.items()], n_discrete, n_continuous,
                        len(baselines), shape, n_classes, space.epochs, samples, space.objectives)
