"""The Optuna objective: sample -> check the spec -> build -> fit, reporting every epoch so the pruner
can stop a trial.

A net that does not fit the input, exceeds the space's constraints or would not fit in memory is
refused from its spec alone, before any of its tensors exist; it is marked `rejected` (a search does
not count it against its trials) and every trial gives Optuna its constraint values, so the sampler
learns where the trainable nets are. Each trial stores what the report and
export need as user attrs: the process that ran it, the ArchSpec and its one-line form, seed, epochs,
parameter count, FLOPs, latency (when an objective or constraint needs it), per-epoch curve, seconds,
and why it was pruned or failed. A trial still training at the search's deadline stops between two
batches and is pruned "stopped at the time limit after epoch k".

With several objectives the trial returns (accuracy, cost, ...). Optuna cannot prune such studies
(`Trial.report` refuses them), so the `pareto` pruner is applied here: at epochs 1, 2, 4, 8, ... a
trial stops when `space.dominated_by` other trials that reached that epoch dominate it there, that is
were at least as accurate at that epoch and cost no more in every other objective, and better in
one (the spirit of MO-ASHA's non-dominated sorting at rungs; a net's costs are known before it trains).
"""

from __future__ import annotations

import time
from typing import Callable, NoReturn

import optuna
import torch

from nas import study as studies
from nas.data import Prepared
from nas.latency import onnx_latency, torch_latency
from nas.model import ShapeError, assess, new_model
from nas.space import Space, sample
from nas.train import BatchRecord, Diverged, EpochRecord, TimeUp, fit


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
        pareto: bool = False,
        deadline: float | None = None,
        grace: float = 0.0,
        on_batch: Callable[[int, BatchRecord], None] | None = None,
    ):
        self.space, self.data, self.epochs, self.device, self.seed = space, data, epochs, device, seed
        self.on_epoch, self.on_batch = on_epoch, on_batch  # called with the trial's number; batches about once a second
        self.objectives, self.pareto = space.objectives, pareto  # pareto: apply the pareto pruner (module doc)
        self.deadline = deadline  # `time.monotonic()` time: a trial still training then stops and is pruned
        self.grace = grace  # seconds more for a trial while none has completed: one cut short leaves nothing to keep

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        try:  # the trial already names its process: the storage recorded it as it began (`study.OwnedTrialsStorage`)
            return self._run(trial)
        except KeyboardInterrupt:  # a signal: Optuna then marks the trial failed and the search stops
            trial.set_user_attr("reason", "interrupted")
            raise

    def _run(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        spec = sample(self.space, trial)
        seed = self.seed + trial.number
        for key, value in {"spec": spec.to_dict(), "arch": spec.describe(), "seed": seed, "epochs": self.epochs}.items():
            trial.set_user_attr(key, value)
        try:
            info, too_large, over = assess(spec, self.data.input_shape, self.data.n_classes, self.device,
                                           self.space.max_params, self.space.max_mflops)
        except ShapeError as e:
            _reject(trial, f"invalid: {e}", {"fits_input": 1.0, "max_params": 0.0, "max_mflops": 0.0, "memory": 0.0}
                    | self._untimed)
        trial.set_user_attr("n_params", info.n_params)
        trial.set_user_attr("flops", info.flops)
        if too_large:
            _reject(trial, too_large, {"fits_input": -1.0} | over | self._untimed)
        model = new_model(spec, self.data, seed, self.device)
        if self.space.needs_latency:
            over["max_latency_ms"] = self._latency(trial, model)
            if over["max_latency_ms"] > 0:
                _reject(trial, f"too slow: {trial.user_attrs['latency_ms']:.3f} ms per image > max_latency_ms "
                               f"{self.space.max_latency_ms}", {"fits_input": -1.0} | over)
        _constrain(trial, {"fits_input": -1.0} | over)

        curve: list[dict] = []

        def report(record: EpochRecord) -> None:
            curve.append(record.to_dict())
            trial.set_user_attr("curve", curve)
            if len(self.objectives) == 1:  # Optuna's pruners see single-objective studies only
                trial.report(record.val_acc, record.epoch)
            if self.on_epoch:
                self.on_epoch(trial.number, record)
            if self.pareto:
                self._pareto_prune(trial, record)
            elif len(self.objectives) == 1 and trial.should_prune():
                _prune(trial, f"pruned at epoch {record.epoch}: val accuracy {record.val_acc:.4f} lags the others")

        start = time.perf_counter()
        try:
            history = fit(model, self.data.train, self.data.val, spec.training, epochs=self.epochs, seed=seed,
                          on_epoch=report, deadline=self._deadline(trial), on_batch=self._batches(trial))
        except (TimeUp, Diverged) as e:  # pruned: the epochs a trial stopped at the time limit trained keep their value
            _prune(trial, str(e) if isinstance(e, TimeUp) else f"diverged: {e}")
        except optuna.TrialPruned:
            raise
        except Exception as e:  # recorded, then Optuna marks the trial failed and the study goes on
            trial.set_user_attr("reason", f"failed: {type(e).__name__}: {e}"[:500])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        if len(self.objectives) == 1:
            return history[-1].val_acc
        return (history[-1].val_acc, *self._costs(trial))

    def _batches(self, trial: optuna.Trial) -> Callable[[BatchRecord], None] | None:
        return None if self.on_batch is None else lambda record: self.on_batch(trial.number, record)

    def _deadline(self, trial: optuna.Trial) -> float | None:
        if self.deadline is None or not self.grace or trial.study.get_trials(deepcopy=False, states=(studies.State.COMPLETE,)):
            return self.deadline
        return self.deadline + self.grace

    @property
    def _untimed(self) -> dict[str, float]:
        """The latency constraint of a net refused before it was timed (every trial gives Optuna the same keys)."""
        return {"max_latency_ms": 0.0} if self.space.needs_latency else {}

    def _costs(self, trial: optuna.Trial) -> list[float]:
        return [trial.user_attrs[studies.OBJECTIVES[o]] for o in self.objectives[1:]]

    def _latency(self, trial: optuna.Trial, model: torch.nn.Module) -> float:
        """Time the net (weights do not change its time) and record it; returns how far it is over
        `max_latency_ms` as a fraction (> 0 over)."""
        times = onnx_latency(model, self.data.input_shape)
        if self.device.type == "cuda":
            times |= torch_latency(model, self.data.input_shape, self.device)
        for key, value in times.items():
            trial.set_user_attr(key, value)
        limit = self.space.max_latency_ms
        return times["latency_ms"] / limit - 1 if limit else -1.0

    def _pareto_prune(self, trial: optuna.Trial, record: EpochRecord) -> None:
        """The pareto pruner (see the module doc), at epochs 1, 2, 4, 8, ... before the last."""
        e = record.epoch
        if e >= self.epochs or e & (e - 1):
            return
        me = (record.val_acc, *self._costs(trial))
        n = studies.dominators(me, studies.points_at(trial.study, e, self.objectives, trial.number))
        if n >= self.space.dominated_by:
            _prune(trial, f"pruned at epoch {e}: {n} trials were at least as accurate and as cheap there")


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
