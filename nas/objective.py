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
(`Trial.report` refuses them), so the `pareto` pruner is applied here: at each epoch but the last,
once 5 finished trials reached that epoch, a trial stops when its Pareto rank there (non-dominated
sorting on accuracy at that epoch and the costs; a net's costs are known before it trains) is off the
front and worse than the finished trials' median rank (`pareto.prune_reason`).
"""

from __future__ import annotations

import time
from typing import Callable, NoReturn

import optuna
import torch

from nas import pareto, record
from nas.data import Prepared
from nas.errors import NasBug, NasError
from nas.latency import arch_key, onnx_latency, timed_once, torch_latency
from nas.model import ShapeError, assess, new_model
from nas.space import Space, sample
from nas.spec import ArchSpec
from nas.storage import storage_failure
from nas.study import TrialFailed
from nas.train import BatchRecord, Diverged, EpochRecord, TimeUp, fit


OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")  # torch's words, CPU and GPU


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
        """Run one trial. Only what a trial may legitimately meet (out of memory) fails it alone (`TrialFailed`);
        bad input stops the search with its own message, and anything else is a bug in nas (`NasBug`)."""
        try:  # the trial already names its process: the storage recorded it as it began (`storage.OwnedTrialsStorage`)
            return self._run(trial)
        except KeyboardInterrupt:  # a signal: Optuna then marks the trial failed and the search stops
            record.write(trial, reason="interrupted")
            raise
        except (optuna.TrialPruned, optuna.exceptions.UpdateFinishedTrialError):
            raise  # pruned; or failed meanwhile by another process (`study.run_trials` reports it as it was left)
        except Exception as e:
            if storage_failure(e) is not None:
                raise  # the storage itself: the search says so, and a trial's reason could not be written anyway
            record.write(trial, reason=f"failed: {type(e).__name__}: {e}"[:500])  # then Optuna marks it failed
            if isinstance(e, NasError):
                raise
            if out_of_memory(e):
                raise TrialFailed(str(e)) from e
            raise NasBug(f"trial #{trial.number}", e) from e

    def _run(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        spec = sample(self.space, trial)
        seed = self.seed + trial.number
        record.write(trial, spec=spec.to_dict(), arch=spec.describe(), seed=seed, epochs=self.epochs)
        model = self._admit(trial, spec, seed)
        history = self._train(trial, spec, model, seed)
        if len(self.objectives) == 1:
            return history[-1].val_acc
        return (history[-1].val_acc, *self._costs(trial))

    def _admit(self, trial: optuna.Trial, spec: ArchSpec, seed: int) -> torch.nn.Module:
        """The seeded net of `spec`, once it is known to fit the input, the constraints and the memory (else the
        trial is rejected); Optuna is given how far it is from each limit."""
        try:
            info, too_large, over = assess(spec, self.data.input_shape, self.data.n_classes, self.device,
                                           self.space.max_params, self.space.max_mflops)
        except ShapeError as e:
            _reject(trial, f"invalid: {e}", {"fits_input": 1.0, "max_params": 0.0, "max_mflops": 0.0, "memory": 0.0}
                    | self._untimed)
        record.write(trial, n_params=info.n_params, flops=info.flops)
        if too_large:
            _reject(trial, too_large, {"fits_input": -1.0} | over | self._untimed)
        model = new_model(spec, self.data, seed, self.device)
        if self.space.needs_latency:
            over["max_latency_ms"] = self._latency(trial, model, spec)
            if over["max_latency_ms"] > 0:
                _reject(trial, f"too slow: {record.TrialRecord(trial).latency_ms:.3f} ms per image > max_latency_ms "
                               f"{self.space.max_latency_ms}", {"fits_input": -1.0} | over)
        _constrain(trial, {"fits_input": -1.0} | over)
        return model

    def _train(self, trial: optuna.Trial, spec: ArchSpec, model: torch.nn.Module, seed: int) -> list[EpochRecord]:
        """Train `model` on the search split, reporting each epoch to the pruner; a net stopped at the time limit
        or whose loss diverged is pruned (the epochs it trained keep their value)."""
        curve: list[dict] = []

        def report(epoch: EpochRecord) -> None:
            curve.append(epoch.to_dict())
            record.write(trial, curve=curve)
            if len(self.objectives) == 1:  # Optuna's pruners see single-objective studies only
                trial.report(epoch.val_acc, epoch.epoch)
            if self.on_epoch:
                self.on_epoch(trial.number, epoch)
            if self.pareto:
                self._pareto_prune(trial, epoch)
            elif len(self.objectives) == 1 and trial.should_prune():
                _prune(trial, f"pruned at epoch {epoch.epoch}: val accuracy {epoch.val_acc:.4f} lags the others")

        start = time.perf_counter()
        try:
            return fit(model, self.data.train, self.data.val, spec.training, epochs=self.epochs, seed=seed,
                       on_epoch=report, deadline=self._deadline(trial), on_batch=self._batches(trial))
        except (TimeUp, Diverged) as e:
            _prune(trial, str(e) if isinstance(e, TimeUp) else f"diverged: {e}")
        finally:
            record.write(trial, seconds=round(time.perf_counter() - start, 3))

    def _batches(self, trial: optuna.Trial) -> Callable[[BatchRecord], None] | None:
        return None if self.on_batch is None else lambda batch: self.on_batch(trial.number, batch)

    def _deadline(self, trial: optuna.Trial) -> float | None:
        if self.deadline is None or not self.grace or trial.study.get_trials(deepcopy=False, states=(record.State.COMPLETE,)):
            return self.deadline
        return self.deadline + self.grace

    @property
    def _untimed(self) -> dict[str, float]:
        """The latency constraint of a net refused before it was timed (every trial gives Optuna the same keys)."""
        return {"max_latency_ms": 0.0} if self.space.needs_latency else {}

    def _costs(self, trial: optuna.Trial) -> list[float]:
        return [record.TrialRecord(trial).cost(o) for o in self.objectives[1:]]

    def _latency(self, trial: optuna.Trial, model: torch.nn.Module, spec: ArchSpec) -> float:
        """Time the net, once per architecture in the study (`latency.timed_once`), and record it; returns how far
        it is over `max_latency_ms` as a fraction (> 0 over)."""
        key = arch_key(spec, self.device.type)
        times = timed_once(key, lambda: trial.study.user_attrs, trial.study.set_user_attr, lambda: self._measure(model))
        record.write(trial, arch_key=key)
        record.write_measured(trial, times)
        limit = self.space.max_latency_ms
        return times["latency_ms"] / limit - 1 if limit else -1.0

    def _measure(self, model: torch.nn.Module) -> dict[str, float]:
        times = onnx_latency(model, self.data.input_shape)
        return times | torch_latency(model, self.data.input_shape, self.device) if self.device.type == "cuda" else times

    def _pareto_prune(self, trial: optuna.Trial, epoch: EpochRecord) -> None:
        """The pareto pruner (see the module doc), at every epoch before the last (from epoch 1, as the rival
        does: waiting for epoch 2 lost it on hypervolume per hour, docs/benchmarks.md)."""
        if epoch.epoch >= self.epochs:  # the last epoch is paid for: keep it
            return
        me = (epoch.val_acc, *self._costs(trial))
        why = pareto.prune_reason(trial.study, trial.number, epoch.epoch, me, self.objectives)
        if why:
            _prune(trial, why)


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` says a net did not fit in memory: a trial may meet that (the estimate before training is an
    estimate, and other processes share the device), so it fails that trial alone."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and any(words in str(e) for words in OUT_OF_MEMORY))


def _constrain(trial: optuna.Trial, values: dict[str, float]) -> None:
    """Give Optuna how far the net is over each limit (> 0 infeasible), so the sampler learns where
    the nets that can be trained are (TPE reads a trial's constraints)."""
    for key, value in values.items():
        trial.set_constraint(key, value)


def _reject(trial: optuna.Trial, reason: str, constraints: dict[str, float]) -> NoReturn:
    """Refuse the net before training: it does not count against the run's trials (see study.run_trials)."""
    _constrain(trial, constraints)
    record.write(trial, rejected=True)
    _prune(trial, reason)


def _prune(trial: optuna.Trial, reason: str) -> NoReturn:
    record.write(trial, reason=reason)
    raise optuna.TrialPruned(reason)
