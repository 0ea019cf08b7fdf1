"""The training loop: `fit` trains a model on tensors already on its device; no Optuna here.

Batches are cut from the uint8 dataset on the training device by a shuffled index; loss and correct
counts accumulate on the device and are read once per epoch, so the loop never waits on the host.
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

EVAL_BATCH = 2048


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
    seed: int = 0,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> list[EpochRecord]:
    """Train for `epochs`, scoring `val` after each; `on_epoch` may raise to stop (a pruner does)."""
    device = next(model.parameters()).device
    model.to(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU alike
    opt = make_optimizer(model, optimizer, lr, weight_decay, momentum)
    shuffle = torch.Generator(device=device).manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss, train_acc = train_one_epoch(model, train, opt, batch_size, shuffle)
        if not math.isfinite(loss):
            raise Diverged(epoch)
        record = EpochRecord(epoch, loss, train_acc, evaluate(model, val), time.perf_counter() - start)
        history.append(record)
        if on_epoch:
            on_epoch(record)
    return history


def train_one_epoch(
    model: nn.Module, data: Split, opt: torch.optim.Optimizer, batch_size: int, shuffle: torch.Generator
) -> tuple[float, float]:
    """One pass over `data` in shuffled batches; returns (mean loss, accuracy) read once at the end."""
    model.train()
    n = len(data)
    order = torch.randperm(n, device=data.x.device, generator=shuffle)
    total_loss = torch.zeros((), device=data.x.device)
    correct = torch.zeros((), device=data.x.device, dtype=torch.long)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        x, y = _as_input(data.x[idx]), data.y[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    return total_loss.item() / n, correct.item() / n


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted class of every uint8 image in `x`, in large batches."""
    model.eval()
    return torch.cat([model(_as_input(x[i : i + EVAL_BATCH])).argmax(1) for i in range(0, len(x), EVAL_BATCH)])


def _as_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1], channels-last, as the model expects (it normalises itself)."""
    return x.float().div_(255).contiguous(memory_format=torch.channels_last)


def evaluate(model: nn.Module, data: Split) -> float:
    """Accuracy on `data`."""
    return (predict(model, data.x) == data.y).float().mean().item() if len(data) else float("nan")

