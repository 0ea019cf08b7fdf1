"""Torch only: a dataset cut for training on a device, the seeded network of a spec, its training, and
its score on the test set. The search's objective, `nas train`, the export and the benchmarks share it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from nas.data import Dataset, Split, channel_stats, full_train, split_train_val, test_split
from nas.system import available_memory
from nas.model import ModelInfo, build_model, spec_info, training_bytes
from nas.spec import ArchSpec
from nas.system import pick_threads
from nas.train import BatchRecord, Diverged, DivergedError, EpochRecord, TimeUp, evaluate, fit, predict

MEMORY_SHARE = 0.8  # of a device's free memory that training one net may plan to use


@dataclass(frozen=True)
class Prepared:
    """A dataset cut for training, already on the training device, with its normalisation.

    A search scores on `val` (taken from the training set) and never sees the test set; a final
    model trains on the whole training set and is scored on `test`."""

    train: Split
    val: Split | None
    test: Split | None
    input_shape: tuple[int, int, int]
    n_classes: int
    mean: list[float]
    std: list[float]

    @property
    def held_out(self) -> Split:
        """What training scores after every epoch: the validation split, or the test set of a final model."""
        return self.val if self.val is not None else self.test


def prepare_search_data(
    ds: Dataset, val_fraction: float, seed: int, device: torch.device, subset: int | None = None
) -> Prepared:
    """The seeded stratified train/val split the search scores on; the test set stays out of it."""
    train, val = split_train_val(ds, val_fraction, seed, subset)
    return Prepared(train.to(device), val.to(device), None, ds.input_shape, ds.n_classes, *channel_stats(train.x))


def prepare_final_data(ds: Dataset, device: torch.device) -> Prepared:
    """The whole training set to train on and the test set to score: for `train` and export."""
    train = full_train(ds)
    return Prepared(train.to(device), None, test_split(ds).to(device), ds.input_shape, ds.n_classes,
                    *channel_stats(train.x))


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
    over = {"max_params": info.n_params / max_params - 1 if max_params else -1.0,
            "max_mflops": info.flops / 1e6 / max_mflops - 1 if max_mflops else -1.0,
            "memory": need / (MEMORY_SHARE * free) - 1 if free else 1.0}
    for value, limit, what, key in ((info.n_params, max_params, "parameters", "max_params"),
                                    (info.flops / 1e6, max_mflops, "MFLOPs", "max_mflops")):
        if over[key] > 0:
            return info, f"too large: {value:,.0f} {what} > {key} {limit:,}", over
    if over["memory"] > 0:
        return info, f"too large: training needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {device}", over
    return info, None, over


def device_memory(device: torch.device) -> int:
    """Bytes free on `device`: the GPU's free memory, or the machine's available memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def new_model(spec: ArchSpec, data: Prepared, seed: int, device: torch.device) -> nn.Sequential:
    """The seeded, freshly initialised network of `spec` on `device`."""
    torch.manual_seed(seed)
    return build_model(spec, data.input_shape, data.n_classes, data.mean, data.std).to(device)


def train_spec(
    spec: ArchSpec,
    data: Prepared,
    epochs: int,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    deadline: float | None = None,
    on_batch: Callable[[BatchRecord], None] | None = None,
) -> tuple[nn.Sequential, list[EpochRecord]]:
    """Build `spec`'s seeded network and train it on `data.train`, scoring `data.held_out` every epoch.
    With a `deadline` (monotonic), the epochs are cut to fit it (`fit`'s shrink) and training stops at it:
    fewer records than `epochs` say so. `on_batch` hears of progress inside an epoch about once a second."""
    model = new_model(spec, data, seed, device)
    fit_threads()
    try:
        return model, fit(model, data.train, data.held_out, spec.training, epochs=epochs, seed=seed, on_epoch=on_epoch,
                          deadline=deadline, shrink=True, on_batch=on_batch)
    except TimeUp as e:
        return model, e.history
    except Diverged as e:
        lr = spec.training.lr
        raise DivergedError(f"training {spec.describe()} diverged: its loss became NaN or infinite in epoch {e.epoch} "
                       f"(learning rate {lr:g}, {spec.training.optimizer}). Lower the learning rate (training.lr, say "
                       f"to {lr / 10:g}) and train it again; of a searched study, `nas best --trial N --export DIR` "
                       "exports another trial.") from None


def fit_threads() -> None:
    """Train with the threads that other processes leave free now (or OMP_NUM_THREADS): more would make a small
    net's training several times slower, not a little (`system`)."""
    torch.set_num_threads(pick_threads().n)


def seconds_per_epoch(spec: ArchSpec, data: Prepared, device: torch.device, sample: int = 2048) -> float:
    """How long one epoch of `train_spec` on `data` takes here (`epoch_pace`'s two parts together)."""
    return sum(epoch_pace(spec, data, device, sample))


def epoch_pace(spec: ArchSpec, data: Prepared, device: torch.device, sample: int = 2048) -> tuple[float, float]:
    """Seconds to train one epoch of `data.train` here and to score `data.held_out` once, timed on `sample`
    images of each (after a warm-up batch) and scaled: what plans a retrain to fit a time budget. Kept
    short (seconds on a busy CPU), since the budget pays for it; the retrain checks its own pace after
    its first epoch anyway."""
    model = new_model(spec, data, 0, device)
    fit_threads()
    n, none = min(sample, len(data.train)), Split(data.train.x[:0], data.train.y[:0])
    fit(model, Split(data.train.x[: spec.training.batch_size], data.train.y[: spec.training.batch_size]), none,
        spec.training, epochs=1)  # the first steps allocate and pick kernels: not part of an epoch's pace
    start = time.perf_counter()
    fit(model, Split(data.train.x[:n], data.train.y[:n]), none, spec.training, epochs=1)
    train = (time.perf_counter() - start) * len(data.train) / n
    held_out, m = data.held_out, min(sample, len(data.held_out))
    start = time.perf_counter()
    evaluate(model, Split(held_out.x[:m], held_out.y[:m]))
    return train, (time.perf_counter() - start) * len(held_out) / max(m, 1)


def score_on_test(model: nn.Module, test: Split, classes: tuple[str, ...]) -> dict:
    """Accuracy, per-class accuracy (by class name) and the confusion matrix on the test set."""
    pred = predict(model, test.x)
    n = len(classes)
    confusion = torch.bincount(test.y * n + pred, minlength=n * n).reshape(n, n)  # rows: true, columns: predicted
    return {
        "test_accuracy": (pred == test.y).float().mean().item(),
        "per_class_accuracy": dict(zip(classes, (confusion.diag() / confusion.sum(1).clamp_min(1)).tolist())),
        "confusion": confusion.tolist(),
    }
