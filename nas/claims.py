"""A study-wide trial count kept in the study's storage (`nas search --study-trials N`): processes on any
number of machines each claim the next trial in one atomic update, so together they run exactly N.

The count lives in a table of its own beside Optuna's (`nas_trial_claims`: study id, trials taken).
A claim is one `UPDATE ... WHERE taken < limit`: SQLite runs it under its write lock, PostgreSQL
re-reads the row after waiting for a concurrent update, so of two workers racing for the last trial
exactly one is granted it. Trials that ended without their worker (interrupted by a signal, the worker
dead) do not use up the count: the limit grows by them, and another worker runs their part.
Trials recorded by other runs (plain --trials) are counted too: the study ends with N trials, however made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import sqlalchemy

from nas.record import State, TrialRecord

if TYPE_CHECKING:
    from optuna import Study

TABLE = "nas_trial_claims"
COUNTED = (State.COMPLETE, State.PRUNED, State.FAIL, State.RUNNING)
_TAKEN = "CASE WHEN taken > :seen THEN taken ELSE :seen END"  # the larger of the claims and the trials seen


def is_lost(reason: str | None) -> bool:
    """Whether a failed trial's `reason` says it ended without its worker (signal, death, stale heartbeat),
    as opposed to a net that trained and failed (diverged, an error): its part is run again."""
    if reason is None:  # failed by Optuna's stale-heartbeat rule, which records no reason
        return True
    return reason == "interrupted" or (reason.startswith("failed: ") and (
        reason.endswith(" died") or "no worker recorded itself" in reason))


def tally(study: Study) -> tuple[int, int]:
    """(trials that count or ran, those of them lost): rejected nets and queued trials left out."""
    seen = lost = 0
    for t in study.get_trials(deepcopy=False, states=COUNTED):
        if TrialRecord(t).rejected:
            continue
        seen += 1
        lost += t.state == State.FAIL and is_lost(TrialRecord(t).reason)
    return seen, lost


def claimer(study: Study, n_total: int, take: Callable[[], bool] | None = None) -> Callable[[], bool]:
    """A `take` for `studies.run_trials` that grants a trial while the study has fewer than `n_total`
    (claimed, running or finished, lost ones left out), and `take` (this process's own share) grants one."""
    engine = _engine(study)
    study_id = study._study_id
    _ensure_table(engine)

    def claim() -> bool:
        if take is not None and not take():
            return False
        seen, lost = tally(study)  # read before the update: lost only grows, so a stale read refuses, never overshoots
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"INSERT INTO {TABLE} (study_id, taken) VALUES (:id, 0) "
                                         "ON CONFLICT (study_id) DO NOTHING"), {"id": study_id})
            granted = conn.execute(sqlalchemy.text(
                f"UPDATE {TABLE} SET taken = {_TAKEN} + 1 WHERE study_id = :id AND {_TAKEN} < :limit"),
                {"id": study_id, "seen": seen, "limit": n_total + lost})
            return granted.rowcount == 1

    return claim


def claimed(study: Study) -> int:
    """How many trials of `study` have been claimed so far (0 before the first claim)."""
    engine = _engine(study)
    _ensure_table(engine)
    with engine.connect() as conn:
        row = conn.execute(sqlalchemy.text(f"SELECT taken FROM {TABLE} WHERE study_id = :id"),
                           {"id": study._study_id}).fetchone()
    return int(row[0]) if row else 0


def _engine(study: Study) -> sqlalchemy.engine.Engine:
    rdb = getattr(study._storage, "_backend", study._storage)  # Optuna wraps its RDB storage in a cache
    return rdb.engine


def _ensure_table(engine: sqlalchemy.engine.Engine) -> None:
    """Create the claims table unless it exists; workers starting together may race to create it."""
    for _ in range(3):
        try:
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text(f"CREATE TABLE IF NOT EXISTS {TABLE} "
                                             "(study_id INTEGER PRIMARY KEY, taken INTEGER NOT NULL)"))
            return
        except sqlalchemy.exc.IntegrityError:  # PostgreSQL: another made it between the check and the create
            continue
