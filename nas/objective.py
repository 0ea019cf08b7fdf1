"""The Optuna objective: sample -> build -> fit, reporting every epoch so the pruner can stop a trial.

Each trial stores what the report and export need as user attrs: the ArchSpec, its one-line form,
seed, epochs, the worker (host:pid) that ran it, parameter count, FLOPs, per-epoch curve, seconds,
and why it was pruned or failed.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Callable, NoReturn

import optuna
import torch
from torch import nn

from nas.data import Dataset, Split, channel_stats, full_train, split_train_val, test_split
from nas.model import ShapeError, build_model, model_info
from nas.space import ArchSpec, Space, sample
from nas.train import Diverged, EpochRecord, fit, predict


@dataclass(frozen=True)
class Prepared:
    """A dataset cut for training, already on the training device, with its normalisation."""

    train: Split
    val: Split
    input_shape: tuple[int, int, int]
    n_classes: int
    mean: list[float]
    std: list[float]


def prepare_search_data(
    ds: Dataset, val_fraction: float, seed: int, device: torch.device, subset: int | None = None
) -> Prepared:
    """The seeded stratified train/val split the search scores on; the test set stays out of it."""
    train, val = split_train_val(ds, val_fraction, seed, subset)
    return Prepared(train.to(device), val.to(device), ds.input_shape, ds.n_classes, *channel_stats(train.x))


def prepare_final_data(ds: Dataset, device: torch.device) -> Prepared:
    """The whole training set to train on and the test set to score: for `train` and export."""
    train = full_train(ds)
    return Prepared(train.to(device), test_split(ds).to(device), ds.input_shape, ds.n_classes, *channel_stats(train.x))


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
) -> tuple[nn.Sequential, list[EpochRecord]]:
    model = new_model(spec, data, seed, device)
    return model, fit(model, data.train, data.val, epochs=epochs, seed=seed, on_epoch=on_epoch, **asdict(spec.training))


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


class Objective:
    """Called by `study.optimize`: one trial = one sampled network trained on the search split."""

    def __init__(
        self,
        space: Space,
        data: Prepared,
        epochs: int,
        device: torch.device,
        seed: int = 0,
        on_epoch: Callable[[int, EpochRecord], None] | None = None,
    ):
        self.space, self.data, self.epochs, self.device, self.seed = space, data, epochs, device, seed
        self.on_epoch = on_epoch

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except KeyboardInterrupt:  # Optuna then marks the trial failed and the CLI exits 130
            trial.set_user_attr("reason", "interrupted")
            raise

    def _run(self, trial: optuna.Trial) -> float:
        spec = sample(self.space, trial)
        seed = self.seed + trial.number
        attrs = {"spec": spec.to_dict(), "arch": spec.describe(), "seed": seed, "epochs": self.epochs,
                 "worker": f"{socket.gethostname()}:{os.getpid()}"}  # which process ran it, for the dashboard and logs
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        try:
            model = new_model(spec, self.data, seed, self.device)
        except ShapeError as e:
            _prune(trial, f"invalid: {e}")
        info = model_info(model, self.data.input_shape)
        trial.set_user_attr("n_params", info.n_params)
        trial.set_user_attr("flops", info.flops)
        limits = ((info.n_params, self.space.max_params, "parameters", "max_params"),
                  (info.flops / 1e6, self.space.max_mflops, "MFLOPs", "max_mflops"))
        for value, limit, what, key in limits:
            if limit is not None and value > limit:
                _prune(trial, f"too large: {value:,.0f} {what} > {key} {limit:,}")

        curve: list[dict] = []

        def report(record: EpochRecord) -> None:
            curve.append(record.to_dict())
            trial.set_user_attr("curve", curve)
            trial.report(record.val_acc, record.epoch)
            if self.on_epoch:
                self.on_epoch(trial.number, record)
            if trial.should_prune():
                _prune(trial, f"pruned at epoch {record.epoch}: val accuracy {record.val_acc:.4f} lags the others")

        start = time.perf_counter()
        try:
            history = fit(model, self.data.train, self.data.val, epochs=self.epochs, seed=seed, on_epoch=report,
                          **asdict(spec.training))
        except Diverged as e:
            _prune(trial, f"diverged: {e}")
        except optuna.TrialPruned:
            raise
        except Exception as e:  # recorded, then Optuna marks the trial failed and the study goes on
            trial.set_user_attr("reason", f"failed: {type(e).__name__}: {e}"[:500])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        return history[-1].val_acc


def _prune(trial: optuna.Trial, reason: str) -> NoReturn:
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)
