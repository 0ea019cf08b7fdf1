"""The Optuna objective: sample -> check the spec -> build -> fit, reporting every epoch so the pruner
can stop a trial.

A net that does not fit the input, exceeds the space's constraints or would not fit in memory is
refused from its spec alone, before any of its tensors exist; it is marked `rejected` (a search does
not count it against its trials) and every trial gives Optuna its constraint values, so the sampler
learns where the trainable nets are. Each trial stores what the report and
export need as user attrs: the process that ran it, the ArchSpec and its one-line form, seed, epochs,
parameter count, FLOPs, per-epoch curve, seconds, and why it was pruned or failed.
"""

from __future__ import annotations

import time
from typing import Callable, NoReturn

import optuna
import torch

from nas.model import ShapeError
from nas.pipeline import Prepared, assess, new_model
from nas.space import Space, sample
from nas.train import Diverged, EpochRecord, fit


class Objective:
    """Called by `study.optimize`: one trial = one sampled network trained on the search split."""

    def __init__(
        self,
        space: Space,
        data: Prepared,
        epochs: int,
        device: torch.device,
        seed: int = 0,
        identity: dict[str, str] | None = None,
        on_epoch: Callable[[int, EpochRecord], None] | None = None,
    ):
        self.space, self.data, self.epochs, self.device, self.seed = space, data, epochs, device, seed
        self.identity = identity or {}  # which process runs the trials (`study.process_identity`)
        self.on_epoch = on_epoch

    def __call__(self, trial: optuna.Trial) -> float:
        for key, value in self.identity.items():  # first: a trial found running knows its process
            trial.set_user_attr(key, value)
        try:
            return self._run(trial)
        except KeyboardInterrupt:  # a signal: Optuna then marks the trial failed and the search stops
            trial.set_user_attr("reason", "interrupted")
            raise

    def _run(self, trial: optuna.Trial) -> float:
        spec = sample(self.space, trial)
        seed = self.seed + trial.number
        for key, value in {"spec": spec.to_dict(), "arch": spec.describe(), "seed": seed, "epochs": self.epochs}.items():
            trial.set_user_attr(key, value)
        try:
            info, too_large, over = assess(spec, self.data.input_shape, self.data.n_classes, self.device,
                                           self.space.max_params, self.space.max_mflops)
        except ShapeError as e:
            _reject(trial, f"invalid: {e}", {"fits_input": 1.0, "max_params": 0.0, "max_mflops": 0.0, "memory": 0.0})
        trial.set_user_attr("n_params", info.n_params)
        trial.set_user_attr("flops", info.flops)
        if too_large:
            _reject(trial, too_large, {"fits_input": -1.0} | over)
        _constrain(trial, {"fits_input": -1.0} | over)
        model = new_model(spec, self.data, seed, self.device)

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
            history = fit(model, self.data.train, self.data.val, spec.training, epochs=self.epochs, seed=seed,
                          on_epoch=report)
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


def _constrain(trial: optuna.Trial, values: dict[str, float]) -> None:
    """Give Optuna how far the net is over each limit (> 0 infeasible), so the sampler learns where
    the nets that can be trained are (TPE reads a trial's constraints)."""
    for key, value in values.items():
        trial.set_constraint(key, value)


def _reject(trial: optuna.Trial, reason: str, constraints: dict[str, float]) -> NoReturn:
    """Refuse the net before training: it does not count against the run's trials (see study.run_trials)."""
    _constrain(trial, constraints)
    trial.set_user_attr("rejected", True)
    _prune(trial, reason)


def _prune(trial: optuna.Trial, reason: str) -> NoReturn:
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)
