"""Studies: storage URLs, samplers, pruners, create-or-resume, who runs each trial, and results read back.

Optuna does the work (RDB storage, TPE, median / Hyperband pruners, heartbeats); this module only
chooses and wires them, records on the study what a resume or an export must reproduce (dataset,
split), and fails at once the running trials of a worker of this machine that no longer exists. Every
trial names the process that runs it from the moment it exists (`OwnedTrialsStorage`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from nas import names
from nas.errors import NasError
from nas.files import WriteError, check_file_target, check_readable_file
from nas.space import Choice, FloatRange, IntRange, Space

State = optuna.trial.TrialState
FINISHED = (State.COMPLETE, State.PRUNED)
CONNECT_TIMEOUT = 10  # seconds to wait for a PostgreSQL server's answer
MAX_RETRY = 3  # times the parameters of a trial whose worker died are run again
SQLITE_HEADER = b"SQLite format 3\0"  # how every SQLite database file starts (SQLite takes an empty file for an empty one)
CAUGHT = (RuntimeError, ValueError)  # errors that fail their trial alone (CUDA out of memory is a RuntimeError)


class StudyError(NasError):
    """A study that is missing, empty or does not match what was asked of it."""


def quiet_optuna() -> None:
    """The CLI shows its own progress and each trial's fate: Optuna's own log says only errors."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def open_storage(url: str, heartbeat: int = 10, create: bool = False) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats: a trial whose worker died (kill -9, lost machine) is marked
    failed by the next worker that starts a trial once its heartbeat is stale, and its parameters are
    queued to run again (`fail_dead_workers_trials` does it at once for a worker of this machine).
    Only with `create` may a missing SQLite file be made (by `search`, not by commands that read)."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        check_readable_file(path, "the study storage")  # a FIFO would block SQLite; a device is no database
        if not create and not path.is_file():
            raise StudyError(f"{url}: no such study storage ({path} is not an existing regular file); run `nas search` "
                             "first or pass the --storage your search used.")
        if create:
            check_storage_target(url)
            path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # local workers wait for the file lock, not fail
    elif url.startswith("postgresql"):
        try:
            import psycopg  # noqa: F401  (SQLAlchemy's driver for postgresql:// URLs)
        except ImportError as e:
            raise StudyError(f"{url} needs the PostgreSQL driver: pip install 'nas[postgres]' (psycopg 3).") from e
        if "connect_timeout" not in url:  # a server that accepts but never answers: an error in seconds, not a hang
            engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    for _ in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = OwnedTrialsStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=3 * heartbeat,
                    heartbeat_stale_trial_callback=retry_trial,
                )
            _count_transactions(rdb.engine)  # first: its "begin" must run before BEGIN IMMEDIATE waits
            if url.startswith("sqlite"):
                _serialize_sqlite_transactions(rdb.engine)
            return rdb
        except Exception as e:  # bad URL, unknown dialect, server down: all say the same to the user
            error = e
            if "UNIQUE constraint" in str(e) or "already exists" in str(e):
                time.sleep(0.5)  # workers started together raced to create the tables: the winner did
                continue
            break
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    slow = (f" The server did not answer within {CONNECT_TIMEOUT} s; add ?connect_timeout=SECONDS to the URL to "
            "wait longer." if "timeout" in first.lower() else "")
    raise StudyError(
        f"cannot open the study storage {url!r}: {first}.{slow} Use sqlite:///PATH.db or "
        "postgresql://USER@HOST:PORT/DB with the server running."
    ) from error


class OwnedTrialsStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, where a trial records the process that runs it (`process_identity`) as it
    starts running: in the same transaction that creates it, or at once after it leaves the queue.

    Optuna creates a trial, then samples its parameters (seconds with multivariate TPE), then calls the
    objective and starts the heartbeat: a worker killed in between would leave a trial that neither
    the host:pid rule nor the heartbeat rule could ever fail."""

    # Optuna's cache wrapper (`_CachedStorage`) calls `_create_new_trial`, so that is the one to extend.
    def _create_new_trial(self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
                          ) -> optuna.trial.FrozenTrial:
        if template_trial is None:  # a new trial (`study.ask`), not a copy or a queued one
            template_trial = optuna.trial.create_trial(state=State.RUNNING, user_attrs=process_identity())
        return super()._create_new_trial(study_id, template_trial)

    def set_trial_state_values(self, trial_id: int, state: optuna.trial.TrialState,
                               values: Sequence[float] | None = None) -> bool:
        changed = super().set_trial_state_values(trial_id, state, values)
        if changed and state == State.RUNNING:  # a queued trial taken by this process
            try:
                for key, value in process_identity().items():
                    self.set_trial_user_attr(trial_id, key, value)
            except optuna.exceptions.UpdateFinishedTrialError:
                return False  # failed meanwhile as ownerless (`fail_dead_workers_trials`): take another
        return changed

    def record_heartbeat(self, trial_id: int) -> None:
        """Optuna's beat, skipped when the storage is busy past its timeout (a worker stopped with SIGSTOP
        holding SQLite's lock): the next beat tries again, where an error would end Optuna's heartbeat
        thread with a traceback. A storage that is gone fails the trial's own next write instead."""
        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            pass

    def has_heartbeat(self, trial_id: int) -> bool:
        """Whether the trial's process ever recorded a heartbeat (Optuna's stale rule sees only those)."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            return session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial_id).first() is not None


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///PATH` URL, read as SQLAlchemy reads it (`my%20studies` is `my studies`, as
    SQLite opens it); other SQLite URLs (in memory, no path) are refused."""
    try:
        path = make_url(url).database if url.startswith("sqlite:///") else None
    except sqlalchemy.exc.ArgumentError:
        path = None
    if path in (None, "", ":memory:"):
        raise StudyError(f"{url}: a study storage must be a file (sqlite:///PATH.db) or a PostgreSQL URL; an "
                         "in-memory database would be lost when nas exits.")
    return Path(path)


def storage_inputs(url: str) -> list[tuple[str, Path]]:
    """The files of a SQLite storage, named for `files.check_not_input`: its database and the journals SQLite
    keeps beside it (a file written there would be taken for one). A server's storage has none."""
    if not url.startswith("sqlite"):
        return []
    db = sqlite_path(url)
    return [("the --storage database", db)] + [
        ("the --storage database's journal", db.with_name(db.name + suffix)) for suffix in ("-journal", "-wal", "-shm")]


def check_storage_target(url: str) -> None:
    """Fail now, before the dataset is read, if a SQLite storage cannot be created or written, or is a file
    of something else (the dataset, the space: a mistyped --storage must not be taken for a database)."""
    if not url.startswith("sqlite"):
        return
    path = sqlite_path(url)
    try:
        check_file_target(path, "the study storage")
    except WriteError as e:
        raise StudyError(f"--storage {url}: {e} (SQLite also needs to write a journal file beside it.)") from e
    if _head(path) not in (b"", SQLITE_HEADER):
        raise StudyError(f"--storage {url}: {path} is not a SQLite database (it does not start with "
                         f"{SQLITE_HEADER[:-1].decode()!r}), so nas will not write a study into it. Choose a new file "
                         "such as studies/nas.db, or the database an earlier search made.")


def _head(path: Path) -> bytes:
    """The first bytes of the file at `path`, as many as a SQLite header has; none if there is no file."""
    if not path.is_file():
        return b""
    with open(path, "rb") as f:
        return f.read(len(SQLITE_HEADER))


_open_transactions = [0]  # of the main thread, on every storage opened here


def in_transaction() -> bool:
    """Whether the main thread is inside a storage transaction now. A signal handler must not raise
    there: an exception that cuts a transaction short keeps its write lock on SQLite, and the same
    process then cannot record its trial as interrupted ("database is locked")."""
    return _open_transactions[0] > 0


def _count_transactions(engine: Any) -> None:
    from sqlalchemy import event

    def count(step: int) -> Callable[[Any], None]:
        def listener(_connection: Any) -> None:
            if threading.current_thread() is threading.main_thread():  # not the heartbeat thread
                _open_transactions[0] = max(0, _open_transactions[0] + step)
        return listener

    event.listen(engine, "begin", count(1))
    event.listen(engine, "commit", count(-1))
    event.listen(engine, "rollback", count(-1))


def _serialize_sqlite_transactions(engine: Any) -> None:
    """Start every SQLite transaction with BEGIN IMMEDIATE.

    By default a transaction that reads, then writes, can meet another one doing the same, and SQLite
    answers "database is locked" at once instead of waiting (a deadlock): seen in the heartbeat thread
    with a second process reading the study. Taking the write lock up front makes them queue on the
    busy timeout instead. This is SQLAlchemy's documented recipe for pysqlite.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    # group=True lets multivariate TPE model the conditional per-block parameters together.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed, constant_liar=True)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}
PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1),
                                                               reduction_factor=3),
    "pareto": lambda epochs: optuna.pruners.NopPruner(),  # the objective applies `dominators` itself
    "none": lambda epochs: optuna.pruners.NopPruner(),
}
# Where each objective's value is kept on a trial (user attrs); accuracy is the trial's first value.
OBJECTIVES: dict[str, str] = {"accuracy": "val_accuracy", "params": "n_params", "flops": "flops", "latency": "latency_ms"}
names.check_registry(SAMPLERS, names.SAMPLERS, "sampler")
names.check_registry(PRUNERS, names.PRUNERS, "pruner")
names.check_registry(OBJECTIVES, names.OBJECTIVES, "objective")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler called `name` (see `SAMPLERS`), seeded."""
    return names.lookup(SAMPLERS, name, "sampler")(seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner called `name` (see `PRUNERS`) for trials of `epochs` epochs."""
    return names.lookup(PRUNERS, name, "pruner")(epochs)


def open_study(
    name: str,
    storage: str,
    sampler: str,
    pruner: str,
    seed: int,
    epochs: int,
    data_attrs: dict[str, Any] | None = None,
    space: Space | None = None,
    baselines: Sequence[dict[str, Any]] = (),
    heartbeat: int = 10,
    worker: int = 0,
    objectives: Sequence[str] = ("accuracy",),
) -> optuna.Study:
    """Create the study, or resume it; a new one gets the `baselines` (trial parameters) enqueued first.

    A resumed study must have been searched on the same data (`data_attrs`), and the `space` must
    not change the choices of a parameter its trials already have. Trials of dead workers of this
    machine are failed and queued again before anything runs. Without `data_attrs` the study must
    exist (a worker process joining it). `worker` tells apart processes that open the study
    together, so that their samplers draw differently. Accuracy is maximised, any other `objectives`
    minimised; a resumed study must keep the objectives it was made with.
    """
    rdb = open_storage(storage, heartbeat, create=data_attrs is not None)
    kwargs = {"study_name": name, "storage": rdb, "pruner": make_pruner(pruner, epochs)}
    if name in optuna.get_all_study_names(rdb):  # resume: check before writing anything
        study = optuna.load_study(**kwargs)
        if data_attrs is not None:
            _check_resumable(study, storage, data_attrs, space, objectives)
    elif data_attrs is None:
        raise StudyError(f"{storage} holds no study named {name!r}.")
    else:  # load_if_exists: workers started together may race to create it
        study = optuna.create_study(directions=["maximize"] + ["minimize"] * (len(objectives) - 1),
                                    load_if_exists=True, **kwargs)
    if data_attrs is not None and "data" not in study.user_attrs:
        for params in baselines:  # first: a creation cut short by a signal is finished by the next run
            study.enqueue_trial(params, skip_if_exists=True)
        if len(objectives) > 1:  # a single-objective study records what it always did
            study.set_user_attr("objectives", list(objectives))
        study.set_user_attr("data", data_attrs)
    # A resumed run must not replay the first run's random draws: seed by how far the study got (counted
    # before dead workers' trials are queued again, as it always was).
    study.sampler = make_sampler(sampler, seed + len(study.trials) + 10_007 * worker)
    fail_dead_workers_trials(study)
    return study


def objectives_of(study: optuna.Study) -> tuple[str, ...]:
    """The objectives `study` was searched for: accuracy first."""
    return tuple(study.user_attrs.get("objectives", ["accuracy"]))


def _check_resumable(study: optuna.Study, storage: str, data_attrs: dict[str, Any], space: Space | None,
                     objectives: Sequence[str]) -> None:
    known = study.user_attrs.get("data")
    if known is None:
        if any(t.state != State.WAITING for t in study.get_trials(deepcopy=False)):
            raise StudyError(_not_ours(study, storage, "nas search continues only studies it started; pass a new --study name"))
        return  # created by a run stopped before it recorded its data: only baselines wait in it
    if objectives_of(study) != tuple(objectives):
        raise StudyError(f"study {study.study_name!r} in {storage} was searched for {','.join(objectives_of(study))}, not "
                         f"{','.join(objectives)}: resume it with `nas search --study {study.study_name} --objectives "
                         f"{','.join(objectives_of(study))}` (then `nas best --trial N --export DIR` exports a net of its "
                         "front), or pass a new --study name.")
    for key in ("dataset", "subset"):
        if known[key] != data_attrs[key]:
            raise StudyError(
                f"study {study.study_name!r} in {storage} was searched with {key} {known[key]!r}, not "
                f"{data_attrs[key]!r}: resume it with the same --{key}, or pass a new --study name."
            )
    if space is None:
        return
    recorded: dict[str, optuna.distributions.BaseDistribution] = {}
    for t in study.get_trials(deepcopy=False):  # Optuna compares with the first record of each name
        for param, dist in t.distributions.items():
            recorded.setdefault(param, dist)
    for param, dim in space.dimensions().items():
        if param in recorded:
            try:
                optuna.distributions.check_distribution_compatibility(recorded[param], _distribution(dim))
            except ValueError as e:
                raise StudyError(
                    f"study {study.study_name!r} in {storage} has trials where `{param}` is "
                    f"{_dist_text(recorded[param])}, but the space now makes it {_dist_text(_distribution(dim))}; "
                    "Optuna cannot continue a study whose choices changed. Restore the old values, widen only "
                    "int/float ranges, or pass a new --study name."
                ) from e


def _distribution(dim: Any) -> optuna.distributions.BaseDistribution:
    if isinstance(dim, Choice):
        return optuna.distributions.CategoricalDistribution(list(dim.values))
    if isinstance(dim, IntRange):
        return optuna.distributions.IntDistribution(dim.low, dim.high, log=dim.log)
    assert isinstance(dim, FloatRange)
    return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)


def _dist_text(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"a choice of {list(dist.choices)}"
    kind = "an int" if isinstance(dist, optuna.distributions.IntDistribution) else "a float"
    return f"{kind} in [{dist.low}, {dist.high}]" + (" (log)" if dist.log else "")


def _not_ours(study: optuna.Study, storage: str, what: str) -> str:
    return (f"study {study.study_name!r} in {storage} was not made by `nas search` (it records no dataset); "
            f"{what}. `nas dashboard` shows any Optuna study.")


def load_study(name: str | None, storage: str, nas_only: bool = True) -> optuna.Study:
    """An existing study; with no name, the storage's newest (`newest_study`). With `nas_only`, one `nas search` made."""
    rdb = open_storage(storage)
    all_names = optuna.get_all_study_names(rdb)
    if name is None and all_names:
        name = newest_study(rdb, nas_only)[0]
    if name not in all_names:
        have = ", ".join(all_names) or "none yet; run `nas search` first"
        what = f"no study named {name!r}" if name else "no study"
        raise StudyError(f"{storage} holds {what}. Studies there: {have}.")
    study = optuna.load_study(study_name=name, storage=rdb)
    if nas_only and ("data" not in study.user_attrs or len(study.directions) != len(objectives_of(study))):
        raise StudyError(_not_ours(study, storage, "nas best and nas report read only studies nas search wrote; "
                                                   "pass the --study of one"))
    return study


def newest_study(storage: str | optuna.storages.BaseStorage, nas_only: bool = True) -> tuple[str, str | None]:
    """The name of the study last made in `storage` (of those `nas search` made, with `nas_only`), and a note
    naming the others when there are several, for commands given no --study (as after `nas run` beside
    an earlier search)."""
    rdb = open_storage(storage) if isinstance(storage, str) else storage
    summaries = optuna.get_all_study_summaries(rdb, include_best_trial=False)
    ours = [s for s in summaries if "data" in s.user_attrs] if nas_only else summaries
    if not ours:
        return summaries[-1].study_name if summaries else "", None
    newest = max(ours, key=lambda s: s._study_id)  # ids grow with creation
    others = [s.study_name for s in summaries if s is not newest]
    note = (f"{len(summaries)} studies in this storage; showing the newest, {newest.study_name!r} (--study NAME for "
            f"another: {', '.join(map(repr, others))})") if others else None
    return newest.study_name, note


def list_studies(storage: str) -> list[dict[str, Any]]:
    """Every study in `storage` with its trial count, best value and start time."""
    rows = []
    for s in optuna.get_all_study_summaries(open_storage(storage), include_best_trial=True):
        single = len(s.directions) == 1
        rows.append({
            "name": s.study_name,
            "trials": s.n_trials,
            "best": s.best_trial.value if single and s.best_trial else None,  # several objectives: no one best
            "started": s.datetime_start.isoformat(" ", "seconds") if s.datetime_start else None,
        })
    return rows


MAX_REJECTED_IN_A_ROW = 50  # nets refused before training, one after another, before a run gives up


class Infeasible(NasError):
    """The space keeps giving nets that cannot be trained: a run stops rather than draw forever."""


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    take: Callable[[], bool],
    deadline: float | None,
    on_trial: Callable[[dict[str, Any]], None],
    redraw: bool = True,
    built_in: bool = False,
) -> None:
    """Run trials while `take()` grants one, until `deadline` (a `time.monotonic()` time); a trial that
    raises one of CAUGHT fails alone.

    A net rejected before training (see `objective`) does not use up what `take` granted: another is
    drawn, up to MAX_REJECTED_IN_A_ROW in a row, then `Infeasible`; without `redraw` (a space with
    nothing to search draws the same net again) at once. After each trial, `on_trial` gets its row and
    the trials of dead workers of this machine are failed and queued again, so a `kill -9` elsewhere
    on this machine is noticed within one trial. `built_in`: the space is nas's own (the advice differs).

    A process stopped (SIGSTOP) past the heartbeat grace finds, once continued, its trial failed and
    queued again by another: Optuna then refuses to record it ("Cannot tell a FAIL trial", or an
    assertion); that trial is reported as it was left and the run goes on."""
    rows: list[dict[str, Any]] = []

    def after(st: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        rows.append(trial_row(t))
        on_trial(rows[-1])
        fail_dead_workers_trials(st)

    while (deadline is None or time.monotonic() < deadline) and take():
        for n_rejected in range(1, MAX_REJECTED_IN_A_ROW + 1):
            try:
                study.optimize(objective, n_trials=1, catch=CAUGHT, callbacks=[after])
            except (ValueError, AssertionError):  # Optuna's words when another process finished our trial
                mine = _my_last_trial(study)
                if mine is None or mine.state == State.RUNNING or any(r["number"] == mine.number for r in rows):
                    raise
                after(study, mine)
            if not rows[-1]["rejected"]:
                break
            if not redraw or n_rejected == MAX_REJECTED_IN_A_ROW:
                raise Infeasible(_infeasible_message(rows[-n_rejected:], redraw, built_in))
            if deadline and time.monotonic() >= deadline:
                return  # out of time while drawing: a few rejected nets say nothing of the space


def _my_last_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    me = process_identity()["worker"]
    return next((t for t in reversed(study.get_trials(deepcopy=False)) if t.user_attrs.get("worker") == me), None)


def _infeasible_message(rows: list[dict[str, Any]], redraw: bool, built_in: bool = False) -> str:
    if built_in:  # the user wrote no space: telling them to edit one would be advice they cannot follow
        return (f"no net of the built-in space fits these images (the last of {len(rows)} drawn: "
                f"{rows[-1]['reason'].rstrip('.')}): they are too small for its conv blocks, each of which halves "
                "the image with a 2×2 max-pool. Use images of at least 4×4 pixels, or write a space whose blocks have "
                "`pool: none` and `padding: same` (`nas validate --dataset D --write space.yaml` starts one) and "
                "pass it with --space.")
    if not redraw:
        return (f"the space's one net cannot be trained: {rows[-1]['reason']}. Make it smaller or fit it to the "
                "input (fewer blocks, padding same), or raise the constraint.")
    kinds: dict[str, int] = {}
    for r in rows:
        kind = (r["reason"] or "rejected").split(":")[0]  # "invalid" or "too large"
        kinds[kind] = kinds.get(kind, 0) + 1
    return (f"the last {len(rows)} nets drawn were all rejected before training ("
            + ", ".join(f"{n} {kind}" for kind, n in kinds.items()) + f"; the last: {rows[-1]['reason'].rstrip('.')}): this space "
            "has (almost) no nets that fit the input and the constraints. Loosen max_params / max_mflops, use padding "
            "same or fewer blocks, or narrow the widths; `nas validate --space FILE` shows sample nets and their sizes.")


def top_trials(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The k completed trials with the highest validation accuracy, best first; while none has completed,
    those stopped at the time limit after an epoch (a --timeout or --budget shorter than one trial)."""
    trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if "spec" in t.user_attrs]
    done = ([t for t in trials if t.state == State.COMPLETE] or
            [t for t in trials if (t.user_attrs.get("reason") or "").startswith(f"{names.TIME_LIMIT} after")])
    if not done:
        raise StudyError(
            f"study {study.study_name!r} has no completed trial yet ({len(study.trials)} in all): "
            "run `nas search` on it until one completes."
        )
    return sorted(done, key=accuracy, reverse=True)[:k]


def accuracy(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's validation accuracy: its value, or its first of several; for a trial pruned in a study
    of several objectives (Optuna records no values then), its last epoch's; None if it never trained."""
    if t.values:
        return t.values[0]
    curve = t.user_attrs.get("curve")
    return curve[-1]["val_acc"] if curve else None


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The completed trials that no other beats in every objective (feasible ones only), most accurate first."""
    top_trials(study, 1)  # the error when nothing has completed yet
    return sorted(study.best_trials, key=lambda t: (-accuracy(t), t.number))


def dominators(me: Sequence[float], others: Sequence[Sequence[float]]) -> int:
    """How many of `others` dominate `me`, each given as (accuracy, cost, ...): at least as accurate and
    as cheap in every cost, and better in one."""
    def dominates(o: Sequence[float]) -> bool:
        at_least = o[0] >= me[0] and all(c <= m for c, m in zip(o[1:], me[1:]))
        return at_least and (o[0] > me[0] or any(c < m for c, m in zip(o[1:], me[1:])))

    return sum(dominates(o) for o in others)


def points_at(study: optuna.Study, epoch: int, objectives: Sequence[str], but: int) -> list[tuple[float, ...]]:
    """(accuracy at `epoch`, costs...) of every trial but #`but` that trained `epoch` epochs: what the
    pareto pruner compares a trial with at that epoch."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED, State.RUNNING)):
        curve = t.user_attrs.get("curve") or []
        if t.number != but and len(curve) >= epoch and all(OBJECTIVES[o] in t.user_attrs for o in objectives[1:]):
            out.append((curve[epoch - 1]["val_acc"], *(t.user_attrs[OBJECTIVES[o]] for o in objectives[1:])))
    return out


def trained_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial `number` of the study, if it trained a network that can be built again (completed or pruned)."""
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise StudyError(f"study {study.study_name!r} has no trial #{number}; its trials are #0 to #{len(trials) - 1} "
                         "(`nas best --top N` lists the best).")
    t = trials[number]
    if t.state not in (State.COMPLETE, State.PRUNED) or t.user_attrs.get("rejected") or "spec" not in t.user_attrs:
        why = "was rejected before training" if t.user_attrs.get("rejected") else f"is {t.state.name.lower()}"
        raise StudyError(f"trial #{number} of study {study.study_name!r} {why}, so there is no trained network to "
                         "export; pick a completed (or pruned) trial.")
    return t


def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as plain data, for tables and --json."""
    a = t.user_attrs
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "val_accuracy": accuracy(t),
        "n_params": a.get("n_params"),
        "flops": a.get("flops"),
        "latency_ms": a.get("latency_ms"),
        "epochs_run": len(a.get("curve", [])),
        "seconds": a.get("seconds"),
        "arch": a.get("arch"),
        "reason": a.get("reason"),
        "rejected": bool(a.get("rejected")),
        "baseline": "fixed_params" in t.system_attrs,  # enqueued from the space's `baselines:`
    }


def count_trials(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """How many of `trials` were trained (then completed, pruned or failed), are running or waiting, and how
    many nets were rejected before training (they use up trial numbers but never trained)."""
    rejected = sum(bool(t.user_attrs.get("rejected")) for t in trials)
    states = [t.state for t in trials if not t.user_attrs.get("rejected")]
    counts = {"complete": states.count(State.COMPLETE), "pruned": states.count(State.PRUNED),
              "failed": states.count(State.FAIL), "running": states.count(State.RUNNING),
              "waiting": states.count(State.WAITING), "rejected": rejected}
    return counts | {"trained": counts["complete"] + counts["pruned"] + counts["failed"]}


def storage_failure(error: BaseException) -> str | None:
    """The first line of the storage error behind `error`, if a storage error is in its chain, else None.

    Optuna wraps a failed write in StorageInternalError and may meet an AssertionError of its own while
    handling it, so the whole chain is searched, and the innermost (the database's own words) is told."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
            inner = error.orig if isinstance(error, sqlalchemy.exc.DBAPIError) else error
            found = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
        error = error.__cause__ or error.__context__
    return found


# --- who runs a trial, and the trials of workers that are gone ---------------------------------


def process_identity() -> dict[str, str]:
    """What a trial records about the process that runs it: `worker` (host:pid) and `worker_ns`."""
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "worker_ns": _pid_namespace()}


def _pid_namespace() -> str:
    """This kernel boot and pid namespace: pids compare only within one (containers share host names)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


def fail_dead_workers_trials(study: optuna.Study, ownerless_after: float | None = None) -> list[int]:
    """Fail the running trials whose worker ran on this machine and no longer exists, and queue their
    parameters to run again (at most MAX_RETRY times); returns their numbers. Trials of other machines
    are left to the heartbeat rule: only this machine can tell that a process is gone.

    A running trial that names no worker and has no heartbeat (its process died before it could record
    either: an older nas, or a queued trial taken at that instant) is dead too once it started more
    than `ownerless_after` seconds ago (default: the storage's heartbeat grace period)."""
    me, failed = process_identity(), []
    host = me["worker"].rsplit(":", 1)[0]
    for t in study.get_trials(deepcopy=False, states=(State.RUNNING,)):
        worker, ns = t.user_attrs.get("worker", ""), t.user_attrs.get("worker_ns", me["worker_ns"])
        w_host, _, pid = worker.rpartition(":")
        if not worker:
            reason = _ownerless_dead(study, t, ownerless_after)
        elif w_host != host or ns != me["worker_ns"] or not pid.isdigit() or int(pid) == os.getpid():
            continue
        else:
            reason = f"failed: worker {worker} died" if _process_gone(int(pid), t.datetime_start) else None
        if reason and fail_trial(study, t, reason):
            retry_trial(study, t)
            failed.append(t.number)
    return failed


OWNERLESS_GRACE = 30.0  # seconds, where the storage has no heartbeat grace period of its own


def _ownerless_dead(study: optuna.Study, t: optuna.trial.FrozenTrial, after: float | None) -> str | None:
    """The reason to fail `t`, a running trial that names no worker, if it is dead (see above); else None."""
    rdb = getattr(study._storage, "_backend", study._storage)
    if after is None:
        after = getattr(rdb, "grace_period", None) or OWNERLESS_GRACE
    age = (datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0.0
    if age <= after or not isinstance(rdb, OwnedTrialsStorage) or rdb.has_heartbeat(t._trial_id):
        return None
    return (f"failed: no worker recorded itself on it and it had no heartbeat {age:.0f} s after it started "
            "(its process died as it began)")


def fail_own_trials(study: optuna.Study, reason: str, pids: Sequence[int] = ()) -> list[int]:
    """Fail the trials left running by this process (a signal between Optuna's steps), or by its
    `pids` (workers it stopped), with `reason` and no retry; returns their numbers."""
    me = process_identity()
    host = me["worker"].rsplit(":", 1)[0]
    mine = {f"{host}:{pid}" for pid in (pids or [os.getpid()])}
    return [t.number for t in study.get_trials(deepcopy=False, states=(State.RUNNING,))
            if t.user_attrs.get("worker") in mine and t.user_attrs.get("worker_ns", me["worker_ns"]) == me["worker_ns"]
            and fail_trial(study, t, reason)]


def fail_trial(study: optuna.Study, t: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Record `reason` and mark the running trial failed; False if another process finished it first.

    The state is set in one locked update that refuses a finished trial (as Optuna's fail_stale_trials
    does), so of two processes failing the same trial only one is told it did, and only one retries it."""
    try:
        study._storage.set_trial_user_attr(t._trial_id, "reason", reason)
        return study._storage.set_trial_state_values(t._trial_id, state=State.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def retry_trial(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
    """Queue the parameters of a trial whose worker died, unless they already ran MAX_RETRY times.

    Like Optuna's RetryFailedTrialCallback, without copying the user attrs: the new trial must not
    look as if the dead process ran it."""
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if len(history) > MAX_RETRY:
        return
    study.add_trial(optuna.trial.create_trial(
        state=State.WAITING, params=failed.params, distributions=failed.distributions,
        system_attrs={"failed_trial": failed.system_attrs.get("failed_trial", failed.number), "retry_history": history},
    ))


def _process_gone(pid: int, since: datetime | None) -> bool:
    """Whether process `pid` no longer exists, is a zombie, or is a newer process that reused its number."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            return True
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        born = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False  # cannot tell: leave it to the heartbeat
    return since is not None and born > since.timestamp() + 1
