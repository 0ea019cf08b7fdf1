"""Study storage: storage URLs, opening Optuna's RDB storage, SQLite's locks and transactions, and the
liveness of the processes that run trials.

Every trial names the process that runs it from the moment it exists (`OwnedTrialsStorage`), so the
running trials of a worker of this machine that no longer exists are failed at once and their
parameters queued again (`fail_dead_workers_trials`); workers of other machines are left to Optuna's
heartbeat. `storage_failure` tells a broken storage from other errors.
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

from nas import record
from nas.errors import NasError
from nas.files import WriteError, check_file_target, check_readable_file
from nas.record import State, TrialRecord

CONNECT_TIMEOUT = 10  # seconds to wait for a PostgreSQL server's answer
MAX_RETRY = 3  # times the parameters of a trial whose worker died are run again
SQLITE_HEADER = b"SQLite format 3\0"  # how every SQLite database file starts (SQLite takes an empty file for an empty one)


class StudyError(NasError):
    """A study that is missing, empty or does not match what was asked of it."""


def open_storage(url: str, heartbeat: int = 10, create: bool = False) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats: a trial whose worker died (kill -9, lost machine) is marked
    failed by the next worker that starts a trial once its heartbeat is stale, and its parameters are
    queued to run again (`fail_dead_workers_trials` does it at once for a worker of this machine).
    Only with `create` may a missing SQLite file be made (by `search`, not by commands that read)."""
    engine_kwargs = _engine_kwargs(url, create)
    for _ in range(3):
        try:
            return _connect(url, engine_kwargs, heartbeat)
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


def _engine_kwargs(url: str, create: bool) -> dict[str, Any]:
    """SQLAlchemy's engine options for `url`, after checking a SQLite file (made only with `create`) or the
    PostgreSQL driver."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        check_readable_file(path, "the study storage")  # a FIFO would block SQLite; a device is no database
        if not create and not path.is_file():
            raise StudyError(f"{url}: no such study storage ({path} is not an existing regular file); run `nas search` "
                             "first or pass the --storage your search used.")
        if create:
            check_storage_target(url)
            path.parent.mkdir(parents=True, exist_ok=True)
        return {"connect_args": {"timeout": 60}}  # local workers wait for the file lock, not fail
    if url.startswith("postgresql"):
        try:
            import psycopg  # noqa: F401  (SQLAlchemy's driver for postgresql:// URLs)
        except ImportError as e:
            raise StudyError(f"{url} needs the PostgreSQL driver: pip install 'nas[postgres]' (psycopg 3).") from e
        if "connect_timeout" not in url:  # a server that accepts but never answers: an error in seconds, not a hang
            return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    return {}


def _connect(url: str, engine_kwargs: dict[str, Any], heartbeat: int) -> optuna.storages.RDBStorage:
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
    """What a trial records about the process that runs it (its user attrs): host:pid and its pid namespace."""
    return record.owner(*_identity())


def this_worker() -> str:
    """This process as a trial names it: host:pid."""
    return _identity()[0]


def _identity() -> tuple[str, str]:
    return f"{socket.gethostname()}:{os.getpid()}", _pid_namespace()


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
    me, my_ns = _identity()
    host, failed = me.rsplit(":", 1)[0], []
    for t in study.get_trials(deepcopy=False, states=(State.RUNNING,)):
        r = TrialRecord(t)
        worker, ns = r.worker, r.worker_ns or my_ns
        w_host, _, pid = worker.rpartition(":")
        if not worker:
            reason = _ownerless_dead(study, t, ownerless_after)
        elif w_host != host or ns != my_ns or not pid.isdigit() or int(pid) == os.getpid():
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
    me, my_ns = _identity()
    host = me.rsplit(":", 1)[0]
    mine = {f"{host}:{pid}" for pid in (pids or [os.getpid()])}
    return [t.number for t in study.get_trials(deepcopy=False, states=(State.RUNNING,))
            if TrialRecord(t).worker in mine and (TrialRecord(t).worker_ns or my_ns) == my_ns
            and fail_trial(study, t, reason)]


def fail_trial(study: optuna.Study, t: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Record `reason` and mark the running trial failed; False if another process finished it first.

    The state is set in one locked update that refuses a finished trial (as Optuna's fail_stale_trials
    does), so of two processes failing the same trial only one is told it did, and only one retries it."""
    try:
        study._storage.set_trial_user_attr(t._trial_id, record.reason_attr(), reason)
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
