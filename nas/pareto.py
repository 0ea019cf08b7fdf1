"""Pareto dominance over (accuracy, cost, ...) points: the one notion of a front nas has, and the pareto
pruning rule built on it.

A point is (accuracy, cost1, cost2, ...): accuracy is maximised, every cost minimised. One point dominates
another when it is at least as accurate and as cheap in every cost, and better in one. A study's front is
its completed, feasible trials that no other such trial dominates (what Optuna's `best_trials` gives, from
the same rule). The pareto pruner ranks points by non-dominated sorting (rank 0: the front; rank 1: the
front once rank 0 is set aside; ...) and stops a trial at any epoch but the last when at
least 5 finished trials reached that epoch and the trial's rank there among them is off the front and
worse than their median rank: OptunaHub's MultiMetricPruner (Pareto ranks handed to a median pruner),
which beat our earlier rule (stop when 3 others dominate) on hypervolume per hour (docs/benchmarks.md).
"""

from __future__ import annotations

import statistics
from typing import Sequence

import numpy as np
import optuna
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.study._multi_objective import _fast_non_domination_rank

from nas.record import State, TrialRecord, accuracy

Point = Sequence[float]

MIN_FINISHED = 5  # finished trials that reached an epoch before the pruner judges there (MedianPruner's n_startup_trials)


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


def ranks(points: Sequence[Point]) -> list[int]:
    """Each point's non-dominated sorting depth: 0 for the front, 1 for the front of the rest, and so on.
    Optuna's own sorting (NSGA-II's): peeling fronts with `non_dominated` took 10 s for 1,000 points, and
    the pruner ranks every finished trial at every epoch."""
    if not points:
        return []
    loss = np.array([(-p[0], *p[1:]) for p in points], dtype=float)  # every objective minimised
    return [int(r) for r in _fast_non_domination_rank(loss)]


def front(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The completed trials within every constraint that no other such trial dominates, most accurate first."""
    done = [t for t in trials if t.state == State.COMPLETE and _feasible(t)]
    kept = [done[i] for i in non_dominated([t.values for t in done])]
    return sorted(kept, key=lambda t: (-accuracy(t), t.number))


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    """Within every constraint Optuna was given (`Trial.set_constraint`: > 0 is over), or given none."""
    return all(c <= 0 for c in t.system_attrs.get(_CONSTRAINTS_KEY) or ())


def points_at(study: optuna.Study, epoch: int, objectives: Sequence[str], but: int) -> list[tuple[float, ...]]:
    """(accuracy at `epoch`, costs...) of every finished (complete or pruned) trial but #`but` that trained
    `epoch` epochs: what the pareto pruner ranks a trial among at that epoch."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED)):
        r = TrialRecord(t)
        costs = [r.cost(o) for o in objectives[1:]]
        if t.number != but and len(r.curve) >= epoch and None not in costs:
            out.append((r.curve[epoch - 1]["val_acc"], *costs))
    return out


def prune_reason(study: optuna.Study, number: int, epoch: int, me: Point, objectives: Sequence[str]) -> str | None:
    """Why trial #`number`, at point `me` after `epoch`, is pruned by the pareto rule; None if it goes on."""
    others = points_at(study, epoch, objectives, number)
    if len(others) < MIN_FINISHED:
        return None
    *theirs, mine = ranks([*others, me])
    median = statistics.median(theirs)
    if mine > 0 and mine > median:
        return (f"pruned at epoch {epoch}: Pareto rank {mine} there, behind the median rank {median:g} "
                f"of the {len(others)} finished trials that reached it")
    return None
