"""The built-in space for a dataset and device, used when `nas search` is given no `--space`: the one place
that decides which space that is (`nas validate --write` writes the same one).

It is scaled to the data: as many conv blocks as halvings the image allows (at most three), a FLOP
budget in proportion to the image's area, and per-trial epochs and a training subset that keep one
trial to seconds on a CPU (more on a GPU). What it searches is what small modern nets use: stacked
3×3, 5×5, residual and depthwise-separable blocks with batch norm, a flatten or global-average-pool
head, AdamW with a cosine or one-cycle schedule, label smoothing and crop/flip augmentation.
No torch here: `nas validate --dataset X --write FILE` writes it out as a space file to start from.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

from nas.files import name_text

if TYPE_CHECKING:
    from nas.data import Dataset

CPU_MFLOPS_AT_28 = 12.0  # a 28×28 net this size trains an epoch of 60k images in about 20 s on 2 CPU cores
GPU_SCALE = 20  # a GPU affords nets this much larger in the same time
CPU_SUBSET, GPU_SUBSET = 15_000, 60_000  # images per trial (train + validation): few enough to try many nets
SUBSET_VAL_FRACTION = 0.3  # of a subset: 4,500 validation images score a net to about ±0.5 points (1 s.d.); a
# tenth of 12,000 gave ±0.9, more than the gap between the top trials, so the best was mostly luck
CPU_EPOCHS, GPU_EPOCHS = 4, 8


def builtin_space(dataset: str, ds: Dataset, device: str, objectives: Sequence[str] = ("accuracy",)) -> dict[str, Any]:
    """The built-in space for `ds` (named `dataset` on the command line) searched on `device`, a device that
    was picked already (`cuda:0`, `cpu`, `mps`): a GPU's is larger than a CPU's. `nas search` and
    `nas validate` both ask here, so one machine and one --device give one space; a search for `objectives`
    that include a cost starts from more baselines (`cost_ladder`)."""
    return default_space(dataset, ds.name, ds.input_shape, len(ds.y_train), gpu=device.startswith("cuda"),
                         objectives=objectives)


def default_space(dataset: str, name: str, input_shape: tuple[int, int, int], n_train: int, gpu: bool,
                  objectives: Sequence[str] = ("accuracy",)) -> dict[str, Any]:
    """The space for a dataset of `n_train` C×H×W images, as the mapping a space file holds."""
    _, h, w = input_shape
    blocks = max(1, min(3, int(math.log2(min(h, w) / 2))))  # each block halves the map: stop at about 2×2
    mflops = CPU_MFLOPS_AT_28 * h * w / 28**2 * (GPU_SCALE if gpu else 1)
    subset = GPU_SUBSET if gpu else CPU_SUBSET
    return {
        "name": f"auto-{name_text(Path(name).stem) or 'data'}",  # a study name: stored as UTF-8 text
        "description": f"the built-in space for {name_text(name)} ({'×'.join(map(str, input_shape))}), for a "
                       f"{'GPU' if gpu else 'CPU'}",
        "dataset": dataset,
        **({"objectives": list(objectives)} if len(objectives) > 1 else {}),
        "budget": {"epochs": GPU_EPOCHS if gpu else CPU_EPOCHS,
                   **({"val_fraction": SUBSET_VAL_FRACTION, "subset": subset} if n_train > subset * 1.25
                      else {"val_fraction": 0.1})},
        "constraints": {"max_mflops": float(f"{mflops:.3g}")},
        "architecture": {
            "blocks": {"int": [1, blocks]} if blocks > 1 else 1,
            "block": {
                "conv": {"choice": ["conv3x3x2", "conv5x5", "residual", "sepconv"]},
                "channels": {"choice": [16, 24, 32, 48, 64]},
                "activation": {"choice": ["relu", "silu", "gelu"]},
                "batch_norm": True,
                "padding": "same",
                "pool": "max",
                "dropout": {"float": [0.0, 0.2]},
            },
            "head": {"layers": {"int": [0, 1]}, "units": {"choice": [64, 128, 256]}, "dropout": {"float": [0.0, 0.4]}},
            "readout": {"choice": ["flatten", "gap"]},
        },
        "training": {
            "optimizer": "adamw",
            "lr": {"float": [5.0e-4, 1.0e-2], "log": True},
            "batch_size": {"choice": [64, 128, 256]},
            "weight_decay": {"choice": [0.0, 5.0e-4, 5.0e-3, 5.0e-2]},
            "schedule": {"choice": ["cosine", "onecycle"]},
            "label_smoothing": {"choice": [0.0, 0.1]},
            "augment": {"choice": ["none", "crop", "crop_flip"]},
        },
        "baselines": warm_start(blocks) + (cost_ladder(blocks) if len(objectives) > 1 else []),
    }


def warm_start(max_blocks: int) -> list[dict[str, Any]]:
    """Known-good nets of the built-in space, run first so that a short search starts from them rather than
    from random draws. Residual then plain blocks with SiLU, a flatten head, AdamW at a few 1e-3 with a
    cosine schedule and label smoothing: small modern nets' recipe, and what won the 40-minute Fashion-MNIST
    search (docs/benchmarks.md). No augmentation: it pays only over more epochs than a trial has. Both fit
    the FLOP budget at any image size, since that budget grows with the image's area."""
    # a block of its own in each net: a dict shared by two would be written as a YAML anchor and alias
    return [_net([_block("residual", 16), _block("conv3x3x2", 32)][:max_blocks], "flatten", 4e-3, 5e-4),
            _net([_block("residual", 16), _block("conv5x5", 24, "relu")][:max_blocks], "flatten", 5e-3, 5e-3)]


def cost_ladder(max_blocks: int) -> list[dict[str, Any]]:
    """Cheaper nets run after the warm start when a cost (latency, params, FLOPs) is an objective, so that a
    short search starts with a front of several distinct architectures: at 28×28 on one CPU thread they take
    about 0.06, 0.15 and 0.17 ms where the warm start's take 0.2–0.3 ms, at 0.83–0.85 validation accuracy
    after a trial's 4 epochs (docs/benchmarks.md); TPE alone drew the same few nets again with other
    training settings. (A global-average-pool head is cheaper still, but learns next to nothing in 4
    epochs.) Those the image's block count makes equal to an earlier baseline are left out."""
    ladder = [_net(blocks, "flatten", 4e-3, 5e-4) for blocks in (
        [_block("conv5x5", 16)], [_block("conv5x5", 16), _block("conv5x5", 32)][:max_blocks], [_block("residual", 16)])]
    known = [net["architecture"] for net in warm_start(max_blocks)]
    distinct = []
    for net in ladder:
        if net["architecture"] not in known:
            known.append(net["architecture"])
            distinct.append(net)
    return distinct


def _block(conv: str, channels: int, activation: str = "silu") -> dict[str, Any]:
    return {"conv": conv, "channels": channels, "activation": activation}


def _net(blocks: list[dict[str, Any]], readout: str, lr: float, weight_decay: float) -> dict[str, Any]:
    """A baseline of the built-in space: these blocks, no hidden head layer, small modern nets' training recipe."""
    return {"architecture": {"block": {"batch_norm": True, "padding": "same", "pool": "max", "dropout": 0.1},
                             "blocks": blocks, "head": {"layers": 0}, "readout": readout},
            "training": {"optimizer": "adamw", "lr": lr, "batch_size": 64, "weight_decay": weight_decay,
                         "schedule": "cosine", "label_smoothing": 0.1, "augment": "none"}}


def space_text(space: dict[str, Any]) -> str:
    """The space as a commented YAML file."""
    return (f"# {space['description']}: written by `nas validate --write`. Edit it and pass it to\n"
            f"# `nas search --space FILE`; `nas validate --space lenet` shows a space with every key.\n"
            + yaml.safe_dump(space, sort_keys=False, width=100, allow_unicode=True, default_flow_style=None))
