"""The training loop: `fit` trains a model on tensors already on its device; no Optuna here.

Batches are cut from the uint8 dataset on the training device by a shuffled index; loss and correct
counts accumulate on the device and are read once per epoch, so the loop never waits on the host.
On a GPU the forward pass runs under bf16 autocast with cuDNN autotuning; augmentation (random crop
with padding, horizontal flip) is done on the whole batch there too.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas.data import Split

EVAL_BATCH = 4096
CROP_PAD = 2  # random crop: shift by up to this many pixels, zero-filled (RandomCrop(28, padding=2))


class Diverged(Exception):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int):
        super().__init__(f"loss became non-finite in epoch {epoch}")
        self.epoch = epoch


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float
    train_acc: float
    val_acc: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(
    model: nn.Module, optimizer: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    params = model.parameters()
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adadelta": torch.optim.Adadelta}[optimizer]
    return cls(params, lr=lr, weight_decay=weight_decay)


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    *,
    epochs: int,
    optimizer: str,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    augment: str = "none",
    seed: int = 0,
    precision: str = "auto",
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> list[EpochRecord]:
    """Train for `epochs`, scoring `val` after each; `on_epoch` may raise to stop (a pruner does).

    `precision`: `auto` is bf16 autocast on CUDA and fp32 elsewhere; `bf16` or `fp32` force it.
    """
    device = next(model.parameters()).device
    model.to(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU alike
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every batch has the same shape, so the tuning pays off
    dtype = _autocast_dtype(precision, device)
    opt = make_optimizer(model, optimizer, lr, weight_decay, momentum)
    shuffle = torch.Generator(device=device).manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss, train_acc = train_one_epoch(model, train, opt, batch_size, shuffle, augment, dtype)
        val_acc = evaluate(model, val, dtype)
        if not math.isfinite(loss):
            raise Diverged(epoch)
        record = EpochRecord(epoch, loss, train_acc, val_acc, time.perf_counter() - start)
        history.append(record)
        if on_epoch:
            on_epoch(record)
    return history


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if precision in ("fp32", "auto"):
        return None
    raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")


def train_one_epoch(
    model: nn.Module,
    data: Split,
    opt: torch.optim.Optimizer,
    batch_size: int,
    shuffle: torch.Generator,
    augment: str = "none",
    dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """One pass over `data` in shuffled batches; returns (mean loss, accuracy) read once at the end."""
    model.train()
    n = len(data)
    order = torch.randperm(n, device=data.x.device, generator=shuffle)
    total_loss = torch.zeros((), device=data.x.device)
    correct = torch.zeros((), device=data.x.device, dtype=torch.long)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        x, y = data.x[idx], data.y[idx]
        if augment != "none":
            x = augment_batch(x, augment, shuffle)
        with _autocast(x.device, dtype):  # the forward pass only; backward follows the dtypes it chose
            logits = model(_as_input(x))
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    return total_loss.item() / n, correct.item() / n


def augment_batch(x: torch.Tensor, augment: str, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding, shift up to CROP_PAD) and/or horizontal flip of every uint8 image, in batch."""
    n, _, h, w = x.shape
    if "crop" in augment:
        p = CROP_PAD
        shift = torch.randint(0, 2 * p + 1, (2, n), device=x.device, generator=gen)
        rows = (shift[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (shift[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = F.pad(x, (p, p, p, p))[torch.arange(n, device=x.device)[:, None, None, None],
                                    torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    if "flip" in augment:
        flip = torch.rand(n, device=x.device, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Predicted class of every uint8 image in `x`, in large batches."""
    model.eval()
    with _autocast(x.device, dtype):
        return torch.cat([model(_as_input(x[i : i + EVAL_BATCH])).argmax(1) for i in range(0, len(x), EVAL_BATCH)])


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _as_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1], channels-last, as the model expects (it normalises itself)."""
    return x.float().div_(255).contiguous(memory_format=torch.channels_last)


def evaluate(model: nn.Module, data: Split, dtype: torch.dtype | None = None) -> float:
    """Accuracy on `data`."""
    return (predict(model, data.x, dtype) == data.y).float().mean().item() if len(data) else float("nan")

