"""ArchSpec -> `nn.Sequential`, and whether it may be trained here: shapes come from running the layers,
never from hand-worked sizes; parameters, FLOPs and training memory are worked out before any tensor exists.

The model starts with its own input normalisation, so it takes float images in [0, 1], N×C×H×W,
as torchvision's `ToTensor` gives them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

from nas.errors import NasError
from nas import names
from nas.spec import ArchSpec, BlockSpec
from nas.system import ASSUMED_MEMORY, UNKNOWN_MEMORY, available_memory

if TYPE_CHECKING:
    from nas.data import Prepared

MEMORY_SHARE = 0.8  # of a device's free memory that training one net may plan to use

# One registry per kind of name a space may use; a test checks they match the space's names.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),  # the slope of the LeNet tutorial
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
POOLS: dict[str, Callable[[], nn.Module] | None] = {
    "max": lambda: nn.MaxPool2d(2),
    "avg": lambda: nn.AvgPool2d(2),
    "none": None,
}
PADDINGS: dict[str, Callable[[int], int]] = {
    "valid": lambda k: 0,  # 28 -> 24 -> 12 -> 8 -> 4, as in the tutorials
    "same": lambda k: k // 2,
}
INITS: dict[str, Callable[[torch.Tensor], object] | None] = {
    "default": None,  # PyTorch's own
    "xavier": nn.init.xavier_uniform_,
    "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "normal": lambda w: nn.init.normal_(w, 0.0, 0.02),
}
READOUTS: dict[str, Callable[[], list[nn.Module]]] = {
    "flatten": lambda: [nn.Flatten()],  # every position of the last map feeds the head, as in LeNet
    "gap": lambda: [nn.AdaptiveAvgPool2d(1), nn.Flatten()],  # global average pool: one value per channel
}


def _convs(block: BlockSpec, c_in: int, c_out: int, kernel: int, groups: int = 1) -> list[nn.Module]:
    """Conv, then batch norm if the block has it, then the block's activation."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=PADDINGS[block.padding](kernel), groups=groups,
                     bias=not block.batch_norm)
    return [conv] + ([nn.BatchNorm2d(c_out)] if block.batch_norm else []) + [ACTIVATIONS[block.activation]()]


def _stacked(*kernels: int) -> Callable[[BlockSpec, int], list[nn.Module]]:
    def build(block: BlockSpec, c_in: int) -> list[nn.Module]:
        return [m for i, k in enumerate(kernels) for m in _convs(block, c_in if i == 0 else block.channels, block.channels, k)]
    return build


class Residual(nn.Module):
    """Two 3×3 convs (size kept) added to the input, or to its 1×1 projection when the width changes."""

    def __init__(self, block: BlockSpec, c_in: int):
        super().__init__()
        same = dataclasses.replace(block, padding="same")
        c = block.channels
        self.body = nn.Sequential(*_convs(same, c_in, c, 3), *_convs(same, c, c, 3)[:-1])  # activation after the add
        self.shortcut = nn.Identity() if c_in == c else nn.Sequential(
            nn.Conv2d(c_in, c, 1, bias=not block.batch_norm), *([nn.BatchNorm2d(c)] if block.batch_norm else []))
        self.act = ACTIVATIONS[block.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


# The convolution part of each kind of block (pooling and dropout follow it).
BLOCKS: dict[str, Callable[[BlockSpec, int], list[nn.Module]]] = {
    "conv3x3": _stacked(3),
    "conv5x5": _stacked(5),
    "conv3x3x2": _stacked(3, 3),  # the receptive field of a 5×5 with fewer weights
    "residual": lambda block, c_in: [Residual(block, c_in)],
    "sepconv": lambda block, c_in: _convs(block, c_in, c_in, 3, groups=c_in) + _convs(block, c_in, block.channels, 1),
}
for _registry, _names, _what in ((ACTIVATIONS, names.ACTIVATIONS, "activation"), (BLOCKS, names.BLOCKS, "block"),
                                 (POOLS, names.POOLS, "pool"), (PADDINGS, names.PADDINGS, "padding"),
                                 (INITS, names.INITS, "init"), (READOUTS, names.READOUTS, "readout")):
    names.check_registry(_registry, _names, _what)


class ShapeError(NasError):
    """The architecture does not fit the input: a feature map would shrink below 1×1."""


class Normalize(nn.Module):
    """(x - mean) / std per channel; the statistics travel in the state_dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class ModelInfo:
    """Each layer's output shape, the parameter count and the FLOPs of a network."""

    layers: list[tuple[str, tuple[int, ...]]]  # each layer and its output shape (C, H, W) or (F,)
    n_params: int
    flops: int  # forward pass of one image, 2 × multiply-accumulates of convs and linears
    stages: tuple[tuple[int, ...], ...] = ()  # output shape of each block and head layer (from spec_info)


def build_model(
    spec: ArchSpec,
    input_shape: tuple[int, int, int],
    n_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """The network of `spec` for C×H×W inputs; raises ShapeError when it does not fit them."""
    model = nn.Sequential(*(m for stage in _stages(spec, input_shape, n_classes, mean, std) for m in stage)).train()
    _initialize(model, spec.init)
    return model


def _stages(
    spec: ArchSpec,
    input_shape: tuple[int, int, int],
    n_classes: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> list[list[nn.Module]]:
    """The network's layers by stage: input normalisation, each block, the readout (flatten or global
    average pool), each head layer, the output layer. Shapes come from running a zero image through each layer as it is made."""
    c = input_shape[0]
    stages: list[list[nn.Module]] = [[Normalize(mean or [0.0] * c, std or [1.0] * c)]]
    x = torch.zeros(1, *input_shape)
    with torch.no_grad():
        for i, block in enumerate(spec.blocks, 1):
            modules = _block(block, x.shape[1])
            for m in modules:
                m.eval()  # shape inference must not update BatchNorm statistics or draw dropout masks
                if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and min(x.shape[2:]) < _window(m):
                    raise ShapeError(
                        f"block {i} ({block.conv}, padding {block.padding}) gets a {x.shape[2]}×{x.shape[3]} "
                        f"feature map, too small for its {type(m).__name__}: use fewer blocks or padding 'same'."
                    )
                x = m(x)
            stages.append(modules)
    readout = READOUTS[spec.readout]()
    for m in readout:
        x = m(x)
    stages.append(readout)
    width = x[0].numel()
    for h in spec.head:
        stages.append([nn.Linear(width, h.units), ACTIVATIONS[h.activation]()] + ([nn.Dropout(h.dropout)] if h.dropout else []))
        width = h.units
    stages.append([nn.Linear(width, n_classes)])
    return stages


def model_info(model: nn.Sequential, input_shape: tuple[int, int, int]) -> ModelInfo:
    """Output shape of every layer, parameter count and FLOPs, from one forward pass of a zero image."""
    rows, flops = [], 0

    def count(m: nn.Module, _inputs: object, y: torch.Tensor) -> None:  # every conv and linear, nested ones too
        nonlocal flops
        if isinstance(m, nn.Conv2d):
            flops += 2 * y.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            flops += 2 * m.in_features * m.out_features

    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()  # leave BatchNorm statistics and the random number stream untouched
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            for m in model:
                x = m(x)
                rows.append((type(m).__name__, tuple(x.shape[1:])))
    finally:
        for h in hooks:
            h.remove()
    model.train(was_training)
    return ModelInfo(rows, sum(p.numel() for p in model.parameters()), flops)


def spec_info(spec: ArchSpec, input_shape: tuple[int, int, int], n_classes: int) -> ModelInfo:
    """Shapes, parameter count and FLOPs of `spec`'s network, from its layers built and run on PyTorch's
    meta device: nothing is allocated, so a net too large for the constraints or for memory is refused
    before it exists. Raises ShapeError as `build_model` does."""
    with torch.device("meta"):
        stages = _stages(spec, input_shape, n_classes, None, None)
        info = model_info(nn.Sequential(*(m for stage in stages for m in stage)), input_shape)
    ends = list(itertools.accumulate(len(stage) for stage in stages))
    readout = len(spec.blocks) + 1  # the stages after normalisation (0) and the blocks
    shapes = tuple(info.layers[end - 1][1] for i, end in enumerate(ends) if i not in (0, readout))
    return dataclasses.replace(info, stages=shapes)


def training_bytes(info: ModelInfo, batch_size: int) -> int:
    """A generous estimate of the memory training takes, in float32: weights, gradients and two optimizer
    moments, plus every layer's output for one batch kept for the backward pass, and its gradient."""
    activations = sum(math.prod(shape) for _, shape in info.layers)
    return 4 * (4 * info.n_params + 2 * batch_size * activations)


def new_model(spec: ArchSpec, data: Prepared, seed: int, device: torch.device) -> nn.Sequential:
    """The seeded, freshly initialised network of `spec` on `device`, normalising as `data` needs."""
    torch.manual_seed(seed)
    return build_model(spec, data.input_shape, data.n_classes, data.mean, data.std).to(device)


def assess(
    spec: ArchSpec,
    input_shape: tuple[int, int, int],
    n_classes: int,
    device: torch.device,
    max_params: int | None = None,
    max_mflops: float | None = None,
) -> tuple[ModelInfo, str | None, dict[str, float]]:
    """The size of `spec`'s network, worked out without allocating it; why it must not be trained (over
    `max_params` / `max_mflops`, or more memory than `device` has free), or None; and how far it is over
    each limit as a fraction, > 0 over and <= 0 within (what a search gives Optuna as constraints).
    Raises ShapeError for a net that does not fit the input."""
    info = spec_info(spec, input_shape, n_classes)
    need, free = training_bytes(info, spec.training.batch_size), device_memory(device)
    known = free is not None
    free = free if known else ASSUMED_MEMORY
    over = {"max_params": info.n_params / max_params - 1 if max_params else -1.0,
            "max_mflops": info.flops / 1e6 / max_mflops - 1 if max_mflops else -1.0,
            "memory": need / (MEMORY_SHARE * free) - 1 if free else 1.0}
    for value, limit, what, key in ((info.n_params, max_params, "parameters", "max_params"),
                                    (info.flops / 1e6, max_mflops, "MFLOPs", "max_mflops")):
        if over[key] > 0:
            return info, f"too large: {value:,.0f} {what} > {key} {limit:,}", over
    if over["memory"] > 0:
        return info, (f"too large: training needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {device}"
                      + ("" if known else f" ({UNKNOWN_MEMORY})")), over
    return info, None, over


def device_memory(device: torch.device) -> int | None:
    """Bytes free on `device`: the GPU's free memory, or the machine's available memory for the CPU (None where
    the machine does not say)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def _block(block: BlockSpec, in_channels: int) -> list[nn.Module]:
    modules = BLOCKS[block.conv](block, in_channels)
    pool = POOLS[block.pool]
    modules += [pool()] if pool else []
    modules += [nn.Dropout2d(block.dropout)] if block.dropout else []
    return modules


def _window(m: nn.Module) -> int:
    k = m.kernel_size
    k = k[0] if isinstance(k, tuple) else k
    pad = m.padding[0] if isinstance(m.padding, tuple) else m.padding
    return k - 2 * pad if isinstance(pad, int) else 1


def _initialize(model: nn.Module, name: str) -> None:
    init = INITS[name]
    if init is None:
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
