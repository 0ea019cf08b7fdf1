"""Pareto dominance over (accuracy, cost, ...) points: the one notion of a front nas has, and the pareto
pruning rule built on it.

A point is (accuracy, cost1, cost2, ...): accuracy is maximised, every cost minimised. One point dominates
another when it is at least as accurate and as cheap in every cost, and better in one. A study's front is
its completed, feasible trials that no other such trial dominates (what Optuna's `best_trials` gives, from
the same rule); the pareto pruner stops a trial at epochs 1, 2, 4, 8, ... when enough trials that reached
that epoch dominate it there (the spirit of MO-ASHA's non-dominated sorting at rungs).
"""

from __future__ import annotations

from typing import Sequence

import optuna
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

from nas.record import State, TrialRecord, accuracy

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """Whether `a` is at least as accurate as `b` and as cheap in every cost, and better in one."""
    at_least = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))
    return at_least and (a[0] > b[0] or any(x < y for x, y in zip(a[1:], b[1:])))


def dominators(me: Point, others: Sequence[Point]) -> int:
    """How many of `others` dominate `me`."""
    return sum(dominates(o, me) for o in others)


def non_dominated(points: Sequence[Point]) -> list[int]:
    """The indices of the `points` no other point dominates (equal points are all kept), in order."""
    return [i for i, p in enumerate(points) if not dominators(p, points)]


def front(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The completed trials within every constraint that no other such trial dominates, most accurate first."""
    done = [t for t in trials if t.state == State.COMPLETE and _feasible(t)]
    kept = [done[i] for i in non_dominated([t.values for t in done])]
    return sorted(kept, key=lambda t: (-accuracy(t), t.number))


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    """Within every constraint Optuna was given (`Trial.set_constraint`: > 0 is over), or given none."""
    return all(c <= 0 for c in t.system_attrs.get(_CONSTRAINTS_KEY) or ())


def is_rung(epoch: int, epochs: int) -> bool:
    """Whether the pareto pruner judges a trial after `epoch` of `epochs`: 1, 2, 4, 8, ..., never the last."""
    return epoch < epochs and not epoch & (epoch - 1)


def points_at(study: optuna.Study, epoch: int, objectives: Sequence[str], but: int) -> list[tuple[float, ...]]:
    """(accuracy at `epoch`, costs...) of every trial but #`but` that trained `epoch` epochs: what the
    pareto pruner compares a trial with at that epoch."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED, State.RUNNING)):
        r = TrialRecord(t)
        costs = [r.cost(o) for o in objectives[1:]]
        if t.number != but and len(r.curve) >= epoch and None not in costs:
            out.append((r.curve[epoch - 1]["val_acc"], *costs))
    return out


def prune_reason(study: optuna.Study, number: int, epoch: int, me: Point, objectives: Sequence[str],
                 dominated_by: int) -> str | None:
    """Why trial #`number`, at point `me` after `epoch`, is pruned by the pareto rule; None if it goes on."""
    n = dominators(me, points_at(study, epoch, objectives, number))
    if n >= dominated_by:
        return f"pruned at epoch {epoch}: {n} trials were at least as accurate and as cheap there"
    return None

