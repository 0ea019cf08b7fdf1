"""A trial's record: what nas stores on each trial (Optuna user attrs), written and read through one typed view.

This is the only module that spells the attribute keys: the objective writes with `write`, the storage
names a trial's process with `owner`, and everything that reads a trial (tables, the report, the export,
dead-worker checks) goes through `TrialRecord`. `trial_row` turns a trial into plain data for tables and
--json; `count_trials` and `reason_kinds` are the one way trials are counted by state and by reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import optuna

from nas import names

State = optuna.trial.TrialState
FINISHED = (State.COMPLETE, State.PRUNED)

# name -> the user-attr key it is stored under (today the same words; a rename would change only this table)
FIELDS: dict[str, str] = {name: name for name in (
    "spec",  # the ArchSpec as a dict: what builds the net again
    "arch",  # its one-line form
    "seed", "epochs",  # the training seed and the epochs asked for
    "n_params", "flops", "latency_ms",  # sizes, and latency where an objective or constraint needs it
    "latency_spread_ms",  # that latency's noise: p50 - p10 of its fastest window's runs (`latency.low_percentiles`)
    "arch_key",  # what its latency depends on, hashed (`latency.arch_key`): a study times each once
    "curve",  # one dict per epoch trained (`train.EpochRecord.to_dict`)
    "seconds",  # wall time of its training
    "reason",  # why it was pruned, rejected or failed
    "rejected",  # refused before training: it does not count against a run's trials
    "worker", "worker_ns",  # the process that runs it: host:pid, and the boot and pid namespace pids compare in
)}
# Where each objective's value is kept on a trial; accuracy is the trial's first value (`val_accuracy` its row key).
OBJECTIVES: dict[str, str] = {"accuracy": "val_accuracy", "params": "n_params", "flops": "flops", "latency": "latency_ms"}
names.check_registry(OBJECTIVES, names.OBJECTIVES, "objective")


def write(trial: optuna.Trial, **values: Any) -> None:
    """Record `values` (names of FIELDS) on a running trial; a name not in FIELDS fails here, not in a report."""
    for name, value in values.items():
        trial.set_user_attr(FIELDS[name], value)


def write_measured(trial: optuna.Trial, measured: dict[str, float]) -> None:
    """Record latency figures as `latency` measured them (`latency_ms`, and more per batch size)."""
    for key, value in measured.items():
        trial.set_user_attr(key, value)


def owner(worker: str, worker_ns: str) -> dict[str, str]:
    """The user attrs that name the process running a trial (`storage.process_identity`)."""
    return {FIELDS["worker"]: worker, FIELDS["worker_ns"]: worker_ns}


def reason_attr() -> str:
    """The key of a trial's reason, for the storage's direct write (`storage.fail_trial`) that has no Trial."""
    return FIELDS["reason"]


@dataclass(frozen=True)
class TrialRecord:
    """What nas recorded on one trial, read by name; a field never written reads as None (or empty)."""

    trial: optuna.trial.FrozenTrial

    def _get(self, name: str, default: Any = None) -> Any:
        return self.trial.user_attrs.get(FIELDS[name], default)

    spec = property(lambda self: self._get("spec"), doc="The ArchSpec as a dict, if it was sampled.")
    arch = property(lambda self: self._get("arch"), doc="The net in one line.")
    seed = property(lambda self: self._get("seed"), doc="The seed it trained with.")
    epochs = property(lambda self: self._get("epochs"), doc="The epochs it was asked to train.")
    n_params = property(lambda self: self._get("n_params"), doc="Its parameter count.")
    flops = property(lambda self: self._get("flops"), doc="Its FLOPs per image.")
    latency_ms = property(lambda self: self._get("latency_ms"), doc="Its measured latency, if measured.")
    latency_spread_ms = property(lambda self: self._get("latency_spread_ms"), doc="That latency's noise.")
    curve = property(lambda self: self._get("curve") or [], doc="One dict per epoch trained.")
    seconds = property(lambda self: self._get("seconds"), doc="Wall time of its training.")
    reason = property(lambda self: self._get("reason"), doc="Why it was pruned, rejected or failed.")
    rejected = property(lambda self: bool(self._get("rejected")), doc="Refused before training.")
    worker = property(lambda self: self._get("worker", ""), doc="host:pid of its process, or ''.")
    worker_ns = property(lambda self: self._get("worker_ns"), doc="Where that pid means that process.")

    @property
    def baseline(self) -> bool:
        """Enqueued from the space's `baselines:` (Optuna marks enqueued trials with fixed params)."""
        return "fixed_params" in self.trial.system_attrs

    def has(self, name: str) -> bool:
        """Whether `name` (of FIELDS) was recorded on the trial."""
        return FIELDS[name] in self.trial.user_attrs

    def cost(self, objective: str) -> float | None:
        """The trial's value for `objective` (not accuracy), as recorded."""
        return self.trial.user_attrs.get(OBJECTIVES[objective])

    def stopped_at_time_limit(self) -> bool:
        """Cut by --timeout or --budget after at least one epoch (its epochs keep their value)."""
        return (self.reason or "").startswith(f"{names.TIME_LIMIT} after")


def accuracy(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's validation accuracy: its value, or its first of several; for a trial pruned in a study
    of several objectives (Optuna records no values then), its last epoch's; None if it never trained."""
    if t.values:
        return t.values[0]
    curve = TrialRecord(t).curve
    return curve[-1]["val_acc"] if curve else None


def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as plain data, for tables and --json."""
    r = TrialRecord(t)
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "val_accuracy": accuracy(t),
        "n_params": r.n_params,
        "flops": r.flops,
        "latency_ms": r.latency_ms,
        "latency_spread_ms": r.latency_spread_ms,
        "epochs_run": len(r.curve),
        "seconds": r.seconds,
        "arch": r.arch,
        "reason": r.reason,
        "rejected": r.rejected,
        "baseline": r.baseline,
    }


def count_trials(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """How many of `trials` were trained (then completed, pruned or failed), are running or waiting, and how
    many nets were rejected before training (they use up trial numbers but never trained)."""
    rejected = sum(TrialRecord(t).rejected for t in trials)
    states = [t.state for t in trials if not TrialRecord(t).rejected]
    counts = {"complete": states.count(State.COMPLETE), "pruned": states.count(State.PRUNED),
              "failed": states.count(State.FAIL), "running": states.count(State.RUNNING),
              "waiting": states.count(State.WAITING), "rejected": rejected}
    return counts | {"trained": counts["complete"] + counts["pruned"] + counts["failed"]}


def reason_kinds(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many of `rows` (`trial_row`s) have each kind of reason: the words before its first colon
    ("invalid", "too large", "failed", ...), "rejected" for a row with none."""
    kinds: dict[str, int] = {}
    for r in rows:
        kind = (r["reason"] or "rejected").split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds
