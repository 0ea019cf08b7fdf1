"""One search: the space, the dataset and the study opened once, then trials in this process or in N
worker processes, progress reported as events, and SIGINT, SIGTERM and SIGHUP ending it cleanly.

A signal records the running trials as failed with reason `interrupted` and raises `Interrupted`
(exit status 128 + the signal's number). Workers are forked from a fork server that imported torch
once, get the dataset in shared memory, die with their parent, and forward nothing but events; a
worker that dies has its trial failed and its parameters queued again at once.

A timeout bounds the whole command, reading the data included: a trial still training then stops
between two batches (pruned, `stopped at the time limit after epoch k`), and a worker still there a
few seconds later (frozen, stopped) is stopped by the parent and its trial recorded.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import select
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from nas import data, names, study as studies, system
from nas.data import Dataset
from nas.errors import NasError
from nas.objective import Objective
from nas.pipeline import prepare_search_data
from nas.autospace import default_space
from nas.space import Space, baseline_params, load_space, parse_space
from nas.train import BatchRecord, EpochRecord, TimeUp, pick_device

if TYPE_CHECKING:
    from optuna import Study

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TRAINED_BUT_STOPPED = ("pruned at epoch", TimeUp.prefix + " after epoch")  # reasons of trials that have a value
STOP_GRACE = 30  # seconds a worker has to record its trial after a signal, before it is killed
DEADLINE_GRACE = 5  # seconds past --timeout a worker has to record its trial, then as many after a SIGTERM
OWNERLESS_AFTER_DEATH = 1.0  # seconds: a running trial with no worker named, once a worker is known dead
MAX_WORKERS_PER_CORE = 4
MAX_TICKETS = 2**31 - 1  # a semaphore's largest count (Linux's SEM_VALUE_MAX): more trials than anyone runs
RECHECK = 10.0  # seconds between looks at the machine's load, before a trial


class Interrupted(KeyboardInterrupt):
    """A search stopped by a signal; `status` is the conventional exit status, 128 + its number."""

    def __init__(self, signum: int, n_done: int = 0, best: list[dict[str, Any]] | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.n_done = signum, n_done
        self.best = best or []  # the study's best trials (or front) as it was left, for the table said at the end

    @property
    def status(self) -> int:
        return 128 + self.signum


@dataclass(frozen=True)
class SearchJob:
    """What the user asked of one search, as plain (picklable) data; None takes the space's value."""

    space: Path | None  # None: the built-in space for the dataset
    study: str | None = None
    storage: str = "sqlite:///studies/nas.db"
    dataset: str | None = None
    data_dir: str | None = None
    device: str = "auto"
    epochs: int | None = None
    subset: int | None = None
    sampler: str = "tpe"
    pruner: str | None = None  # None: median, or pareto when there are several objectives
    objectives: tuple[str, ...] | None = None
    seed: int = 0
    heartbeat: int = 10
    trials: int = 1
    timeout: float | None = None
    trial_grace: float = 0.0  # seconds past the timeout a trial may go on while none has completed (`nas run`)
    workers: int | None = 1  # None: as many as pay on this machine (`auto_workers`)
    started: float | None = None  # time.monotonic() when the command started: --timeout counts from there
    threads: int | None = None  # torch threads per worker; None: what the machine leaves free (`system.pick_threads`)


# --- events, in the order a search sends them -------------------------------------------------


@dataclass(frozen=True)
class Started:
    """Event: the search has opened its study and read its data, and the first trial starts."""

    study: str
    storage: str
    n_finished: int  # trials the study had finished before this run
    n_baselines: int  # baselines waiting to run first
    best: float | None  # the study's best value so far
    n_train: int
    n_val: int
    devices: tuple[str, ...]
    epochs: int
    n_workers: int
    threads: int  # torch threads per worker, at the start (looked at again between trials)
    threads_why: str


@dataclass(frozen=True)
class EpochDone:
    """Event: a worker's trial finished an epoch."""

    worker: int
    trial: int
    record: EpochRecord


@dataclass(frozen=True)
class BatchDone:
    """Event: a worker's trial is training; about one a second per worker (`train.fit`'s `batch_every`)."""

    worker: int
    trial: int
    record: BatchRecord


@dataclass(frozen=True)
class TrialDone:
    """Event: a worker's trial ended (its row: state, value, reason, ...)."""

    worker: int
    row: dict[str, Any]


@dataclass(frozen=True)
class WorkerFailed:
    """Event: a worker process stopped early; `message` says how and what became of its trial."""

    worker: int
    message: str


Event = Started | EpochDone | BatchDone | TrialDone | WorkerFailed


@dataclass
class Outcome:
    """What a finished search leaves: the study's counts and best trials, and what went wrong."""

    study: str
    storage: str
    counts: dict[str, int]
    best: list[dict[str, Any]]
    n_workers: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # the trials of this run
    failed_workers: list[str] = field(default_factory=list)
    gave_up: str | None = None  # why the run stopped early: the space kept giving nets that cannot train
    objectives: tuple[str, ...] = ("accuracy",)  # several: `best` is the Pareto front
    built_in: bool = False  # the space searched is nas's own (no --space): advice must not send the user to edit it
    tally: dict[str, int] = field(default_factory=dict)  # the study's trials, trained and rejected apart (`study.count_trials`)
    dataset: Dataset | None = field(default=None, repr=False)  # what was searched: `nas run` retrains on it

    @property
    def n_trained(self) -> int:
        """Trials of this run that were not rejected before training (what --trials counts)."""
        return n_trained(self.rows)

    @property
    def nothing_trained(self) -> bool:
        """Every trial of this run failed or was rejected before training: the search achieved nothing."""
        return bool(self.rows) and not any(r["state"] == "complete" or (r["reason"] or "").startswith(TRAINED_BUT_STOPPED)
                                           for r in self.rows)

    @property
    def out_of_time(self) -> bool:
        """Nothing trained because the time limit came before any trial finished an epoch."""
        return self.nothing_trained and all((r["reason"] or "").startswith(TimeUp.prefix) for r in self.rows
                                            if not r["rejected"])

    @property
    def advice(self) -> str:
        """What to do when nothing of this run trained, for the reasons its trials give and whose space it is."""
        reasons = [r["reason"] or r["state"] for r in self.rows if not r["rejected"]]
        if self.out_of_time:
            return "Give it a longer --timeout (or --budget)."
        if reasons and all(r.startswith("diverged") for r in reasons):
            where = ("write a space from the built-in one (`nas validate --dataset D --write space.yaml`) with a lower "
                     "`training.lr` range and pass it with --space" if self.built_in else
                     "lower the space's `training.lr` range")
            return ("Every net diverged (its loss became NaN or infinite): the learning rates were too high for these "
                    f"images, or the images hold extreme values; {where}.")
        if self.built_in:
            return "Check the data those reasons point at (`nas validate --dataset D` shows it), then run it again."
        return "Fix the space or the data those reasons point at, then run it again."


def n_trained(rows: list[dict[str, Any]]) -> int:
    """Trials among `rows` that were not rejected before training: what --trials counts."""
    return sum(not r["rejected"] for r in rows)


def run(job: SearchJob, on_event: Callable[[Event], None]) -> Outcome:
    """Run `job.trials` more trials of the job's study (creating or resuming it); see the module doc.

    Everything that can be refused is checked before the study is touched or any work starts: the
    space's baselines, the device, the storage's folder, the dataset. A signal at any point, reading
    the data included, ends the run as `Interrupted`.
    """
    studies.quiet_optuna()  # progress and each trial's fate arrive as events
    deadline = None if job.timeout is None else (job.started or time.monotonic()) + job.timeout  # so does reading the data
    rows: list[dict[str, Any]] = []
    study = space = None
    with signals_interrupt():
        try:
            study, space, ds, job, devices = _open(job)
            return _search(study, space, ds, job, devices, rows, on_event, deadline)
        except Interrupted as e:
            if study is not None:
                _record_interrupted(study)
            raise Interrupted(e.signum, n_trained(rows), _best_rows(study, space) if study is not None else None) from None
        except Exception as e:
            cause = studies.storage_failure(e)
            if cause is None:
                raise
            raise studies.StudyError(
                f"the study storage {job.storage} stopped accepting writes ({cause}) after {names.counted(len(rows), 'trial')} of "
                "this run; those are saved. Fix the storage (free space, permissions, the server) and run the same "
                "command again to go on: a trial left running is failed then and its parameters run again."
            ) from e


def _open(job: SearchJob) -> tuple[Study, Space, Dataset, SearchJob, list[str]]:
    """Read the space and the dataset, check the device and the storage, then create or resume the study.
    Without a space file, the built-in space for the dataset (`autospace`) is searched."""
    cores = system.usable_cores()
    if job.workers and job.workers > MAX_WORKERS_PER_CORE * cores:
        raise NasError(f"--workers {job.workers}: this machine has {cores} cores; run at most "
                       f"{MAX_WORKERS_PER_CORE * cores} workers here (each loads torch and the data), or --workers auto.")
    devices = worker_devices(job.device, min(job.workers or auto_workers(job.device), job.trials))
    ds = None
    if job.space is None:
        ds = data.load_dataset(job.dataset or names.DEFAULT_DATASET, job.data_dir)
        space = dataset_space(job.dataset or names.DEFAULT_DATASET, ds, devices[0])
    else:
        space = load_space(job.space)
    space = replace(space, objectives=job.objectives or space.objectives)
    job = replace(job, study=job.study or space.name, dataset=job.dataset or space.dataset,
                  epochs=job.epochs or space.epochs, subset=job.subset or space.subset,
                  pruner=_pruner(job.pruner, space.objectives))
    baselines = baseline_params(space)
    studies.check_storage_target(job.storage)
    ds = ds or data.load_dataset(job.dataset, job.data_dir)
    wanted = {"dataset": ds.name, "val_fraction": space.val_fraction, "split_seed": job.seed, "subset": job.subset}
    data.split_sizes(ds, space.val_fraction, job.subset)  # a dataset too small to split fails before the study
    study = studies.open_study(job.study, job.storage, job.sampler, job.pruner, job.seed, job.epochs, wanted,
                               space, baselines, job.heartbeat, objectives=space.objectives)
    return study, space, ds, job, devices


def _pruner(name: str | None, objectives: tuple[str, ...]) -> str:
    """The pruner asked for, or the default; Optuna's own cannot prune a study of several objectives."""
    if len(objectives) == 1:
        return name or "median"
    if name in ("median", "hyperband"):
        raise NasError(f"--pruner {name} cannot stop trials of a search for {','.join(objectives)}: Optuna prunes "
                       "single-objective studies only. Use --pruner pareto (the default there) or none.")
    return name or "pareto"


def dataset_space(dataset: str, ds: Dataset, device: str) -> Space:
    """The built-in space for `ds` (given as `dataset` on the command line), sized for `device`."""
    return parse_space(default_space(dataset, ds.name, ds.input_shape, len(ds.y_train), device.startswith("cuda")))


def _search(study: Study, space: Space, ds: Dataset, job: SearchJob, devices: list[str], rows: list[dict[str, Any]],
            on_event: Callable[[Event], None], deadline: float | None) -> Outcome:
    """Run the trials here or in workers until `deadline`, collecting the rows of this run's trials into `rows`."""
    split = study.user_attrs["data"]  # a resumed study keeps the split it started with
    n_train, n_val = data.split_sizes(ds, split["val_fraction"], split["subset"])
    trials = study.get_trials(deepcopy=False)
    n_workers, threads = len(devices), system.pick_threads(len(devices), job.threads)
    done = [studies.accuracy(t) for t in trials if t.state == studies.State.COMPLETE]
    on_event(Started(study.study_name, job.storage, sum(t.state in studies.FINISHED for t in trials),
                     sum(t.state == studies.State.WAITING for t in trials), max(done, default=None), n_train, n_val,
                     tuple(sorted(set(devices))), job.epochs, n_workers, threads.n, threads.why))

    def count(event: Event) -> None:
        if isinstance(event, TrialDone):
            rows.append(event.row)
        on_event(event)

    failed, gave_up = [], None
    if n_workers == 1:
        try:
            _run_here(study, space, ds, job, devices[0], count, deadline)
        except studies.Infeasible as e:
            gave_up = str(e)
    else:
        failed = _run_workers(study, space, ds, job, devices, threads.n, count, deadline)
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    return Outcome(study.study_name, job.storage, {s: states.count(s) for s in sorted(set(states))},
                   _best_rows(study, space), n_workers, rows, failed, gave_up, space.objectives, job.space is None,
                   studies.count_trials(study.get_trials(deepcopy=False)), ds)


def _best_rows(study: Study, space: Space | None) -> list[dict[str, Any]]:
    """The study's front, or its 5 best completed trials (while there are none, those stopped at the time
    limit: `study.top_trials`); none when there is nothing to rank or the storage cannot say."""
    try:
        if space is not None and len(space.objectives) > 1:
            return [studies.trial_row(t) for t in studies.front(study)]
        return [studies.trial_row(t) for t in studies.top_trials(study, 5)]
    except Exception as e:  # after a signal the storage may be gone too: the table is a courtesy then
        if isinstance(e, studies.StudyError) or studies.storage_failure(e) is not None:
            return []
        raise


def resume_command(argv: list[str], n_left: int) -> str:
    """The shell-quoted `nas search` command line that runs the `n_left` trials an interrupted run did not."""
    return shlex.join(["nas", "search", *argv, "--trials", str(n_left)])


# --- in this process ---------------------------------------------------------------------------


def _run_here(study: Study, space: Space, ds: Dataset, job: SearchJob, device: str, on_event: Callable[[Event], None],
              deadline: float | None, worker: int = 0, tickets: Any = None) -> None:
    """Run the job's trials in this process until `deadline` (a trial still training then stops and is
    recorded as such); events go to `on_event`. A worker is given the shared
    count of trials left (`tickets`) instead and takes one before each trial, so a worker that dies or
    is slow leaves its part to the others and the run still makes exactly `job.trials` trials. Nets
    rejected before training do not count (`study.run_trials`)."""
    device = torch.device(device)
    split = study.user_attrs["data"]
    prepared = prepare_search_data(ds, split["val_fraction"], split["split_seed"], device, split["subset"])
    objective = Objective(space, prepared, job.epochs, device, job.seed,
                          on_epoch=lambda number, record: (checkpoint(), on_event(EpochDone(worker, number, record))),
                          pareto=job.pruner == "pareto", deadline=deadline, grace=job.trial_grace,
                          on_batch=lambda number, record: (checkpoint(), on_event(BatchDone(worker, number, record))))

    def on_trial(row: dict[str, Any]) -> None:
        on_event(TrialDone(worker, row))
        checkpoint()

    if tickets is None:
        granted = iter(range(job.trials))
        take = lambda: next(granted, None) is not None  # noqa: E731
    else:
        take = lambda: _take(tickets)  # noqa: E731
    studies.run_trials(study, objective, _fitting_threads(take, job), deadline, on_trial, redraw=bool(space.dimensions()),
                       built_in=job.space is None)


def _fitting_threads(take: Callable[[], bool], job: SearchJob) -> Callable[[], bool]:
    """`take`, which before a trial sets torch's threads to what other processes leave free now (at most every
    RECHECK seconds): a load that starts or stops mid-search changes the next trial's threads. A worker's
    job says how many workers share the machine."""
    last = [-RECHECK]

    def take_fitting() -> bool:
        if time.monotonic() - last[0] >= RECHECK:
            torch.set_num_threads(system.pick_threads(job.workers or 1, job.threads).n)
            last[0] = time.monotonic()
        return take()

    return take_fitting


def _take(tickets: Any) -> bool:
    """Take one of the trials left to the workers; False when none is."""
    return tickets.acquire(block=False)


def _record_interrupted(study: Study) -> None:
    """The objective records its trial as interrupted; a signal between Optuna's steps may leave one running."""
    try:
        studies.fail_own_trials(study, "interrupted")
    except Exception as e:
        if studies.storage_failure(e) is None:
            raise  # the storage is gone too: the next search fails the trial (this process will not exist)


_pending: list[int] = []  # the signal this process was asked to stop by, once one came


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise `Interrupted` in the main thread. SIGINT does so even when this
    process inherited it ignored (a shell starts background jobs so); SIGHUP and SIGTERM inherited as
    ignored stay ignored (`nohup` asks for that). Only the first: later ones are ignored while the
    running trials are recorded and the workers stop.

    Python drops an exception raised where it cannot propagate (a weakref callback, a __del__), and a
    signal inside a storage transaction is not raised there (`study.in_transaction`), so the signal
    is also remembered and `checkpoint` raises it where the search can stop cleanly."""

    def handler(signum: int, _frame: Any) -> None:
        if not _pending:
            _pending.append(signum)
            if not studies.in_transaction():  # else the next checkpoint raises it, the transaction done
                raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may handle signals: a search run from another one stops on its caller's terms
        return
    _pending.clear()
    previous = {s: signal.signal(s, handler) for s in SIGNALS
                if s == signal.SIGINT or signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    except Exception as e:
        if not isinstance(e, NasError):  # a signal raised inside an extension (its import, say) came out as this
            checkpoint()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def checkpoint() -> None:
    """Raise the signal that came, if it was not raised or was swallowed: called between epochs and trials."""
    if _pending:
        raise Interrupted(_pending[0])


# --- in N worker processes ---------------------------------------------------------------------


def _run_workers(study: Study, space: Space, ds: Dataset, job: SearchJob, devices: list[str],
                 threads: int | None, on_event: Callable[[Event], None], deadline: float | None) -> list[str]:
    """Run the job's trials in worker processes that take them one at a time from a shared count;
    returns what stopped any of them early.

    A worker that dies has its running trial failed and queued again at once; the others go on.
    A signal here stops every worker (each records its trial as interrupted) and re-raises. Each
    worker stops at `deadline` by itself; one still there DEADLINE_GRACE later (frozen, stopped) is
    stopped by this process, and its trial recorded as stopped at the time limit.
    """
    # A fork server that has imported torch once forks each worker, ready in a moment; a plain fork
    # would copy this process's torch and SQLite state, spawn would import torch again in every worker.
    # torch's optimizers import torch._dynamo on first use (about a second): once, in the server.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__, "torch._dynamo"])
    else:  # Windows
        ctx = multiprocessing.get_context("spawn")
    # Nothing the workers share may be held by one of them: a worker killed or stopped (SIGSTOP) while
    # holding a lock would stall the others for ever. So each worker sends its events down its own pipe
    # (one write per event, atomic at these sizes) and takes trials from a semaphore (one atomic step).
    tickets = ctx.Semaphore(min(job.trials, MAX_TICKETS))
    pipes = [ctx.Pipe(duplex=False) for _ in devices]
    procs = [ctx.Process(target=_worker, args=(replace(job, device=d, workers=len(devices)), space, i, threads, ds, send,
                                               os.getpid(), tickets, deadline), name=f"nas-worker-{i}", daemon=True)
             for i, (d, (_, send)) in enumerate(zip(devices, pipes))]
    for p, (_, send) in zip(procs, pipes):
        p.start()
        send.close()  # the worker's end: once the worker is gone, its pipe reads as ended
    watch = _Watch(study, procs, [receive for receive, _ in pipes], on_event)
    try:
        while any(p.is_alive() for p in procs):
            watch.drain(0.2)
            watch.note_ended()
            watch.note_stopped()
            checkpoint()
            if deadline is not None and time.monotonic() > deadline + job.trial_grace + DEADLINE_GRACE:
                watch.stop_late()
    except Interrupted:
        _stop(procs)
        watch.drain(0)
        studies.fail_own_trials(study, "interrupted", [p.pid for p in procs])  # of a worker that had to be killed
        raise
    except Exception:  # the storage failed here: no worker may be left behind, a stopped one included
        _stop(procs)
        raise
    finally:
        for p in procs:
            p.join()
        watch.drain(0)
    watch.note_ended()
    return watch.failed


class _Watch:
    """What the parent of the workers knows of them: their events, which ended early, and why."""

    def __init__(self, study: Study, procs: list[Any], pipes: list[Any], on_event: Callable[[Event], None]):
        self.study, self.procs, self.pipes, self.on_event = study, procs, pipes, on_event
        self.failed: list[str] = []
        self.said: set[int] = set()  # workers that reported their own error
        self.ended: set[int] = set()  # workers whose end has been dealt with
        self.stopped: set[int] = set()  # workers seen stopped, and told of

    def drain(self, wait: float) -> None:
        """Pass on the events the workers have sent, waiting up to `wait` seconds for the first."""
        ready = multiprocessing.connection.wait(self.pipes, timeout=wait)
        while ready:
            for pipe in ready:
                try:
                    event = pipe.recv()
                except (EOFError, OSError):  # its worker is gone (a message cut short by a kill included)
                    self.pipes.remove(pipe)
                    pipe.close()
                    continue
                if isinstance(event, WorkerFailed):
                    self.said.add(event.worker)
                    self.failed.append(event.message)
                self.on_event(event)
            ready = multiprocessing.connection.wait(self.pipes, timeout=0)

    def note_ended(self) -> None:
        """Fail and queue again at once the trial of a worker that died (its process is known to be gone:
        a trial it left without its name on it is failed too, after a moment, not the heartbeat's grace)."""
        for i, p in enumerate(self.procs):
            if p.exitcode in (None, 0) or i in self.ended:
                continue
            self.ended.add(i)
            self.drain(0)  # its own last words first
            retried = studies.fail_dead_workers_trials(self.study, ownerless_after=OWNERLESS_AFTER_DEATH)
            retried = retried or _failed_for(self.study, p.pid)  # another worker may have seen it die first
            if i not in self.said:
                message = f"worker {i} (pid {p.pid}) {_how_it_ended(p.exitcode)}" + (
                    f"; its trial {', '.join(f'#{r}' for r in retried)} failed and was queued to run again"
                    if retried else "")
                self.failed.append(message)
                self.on_event(WorkerFailed(i, message))

    def note_stopped(self) -> None:
        """Tell once of a worker stopped by SIGSTOP or Ctrl-Z: while it holds the study's SQLite lock the
        others wait for it, and the user should know why nothing moves."""
        for i, p in enumerate(self.procs):
            if i not in self.stopped and p.is_alive() and _is_stopped(p.pid):
                self.stopped.add(i)
                self.on_event(WorkerFailed(i, f"worker {i} (pid {p.pid}) is stopped (SIGSTOP or Ctrl-Z): the others "
                                              f"wait while it holds the study's storage; `kill -CONT {p.pid}` resumes it"))

    def stop_late(self) -> None:
        """Stop the workers still there past the deadline's grace (a frozen or stopped one) and record
        their trials as stopped at the time limit: the time the user gave bounds the whole command."""
        late = [(i, p) for i, p in enumerate(self.procs) if p.is_alive()]
        self.ended.update(i for i, _ in late)  # stopped here: not a worker that failed
        _stop([p for _, p in late], DEADLINE_GRACE)
        self.drain(0)
        stopped = studies.fail_own_trials(self.study, "stopped at the time limit", [p.pid for _, p in late])
        for i, p in late:
            self.on_event(WorkerFailed(i, f"worker {i} (pid {p.pid}) was still running {DEADLINE_GRACE} s past the "
                                          "time limit and was stopped" + (f"; its trial {', '.join(f'#{n}' for n in stopped)}"
                                                                          " is recorded as stopped" if stopped else "")))


def _stop(procs: list[multiprocessing.Process], grace: float = STOP_GRACE) -> None:
    """Ask every worker to stop (SIGTERM: each records its trial as interrupted; SIGCONT too, or a stopped
    one would never see it), then kill those still there after `grace` (their trials are recorded by the caller)."""
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
            os.kill(p.pid, signal.SIGCONT)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _is_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (by SIGSTOP, SIGTSTP or a debugger), read from /proc (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def _failed_for(study: Study, pid: int) -> list[int]:
    """The trials recorded as failed because worker `pid` of this machine died (`study.fail_dead_workers_trials`)."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(studies.State.FAIL,))
            if (t.user_attrs.get("reason") or "").endswith(f":{pid} died")]


def _how_it_ended(exitcode: int) -> str:
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    if exitcode - 128 in {int(s) for s in SIGNALS}:
        return f"was stopped by {signal.Signals(exitcode - 128).name}"
    return f"stopped with exit status {exitcode}"


def _worker(job: SearchJob, space: Space, worker: int, threads: int | None, ds: Dataset, events: Connection,
            parent: int, tickets: Any, deadline: float | None) -> None:
    """One worker process: join the study and run trials while any are left, sending events to the parent."""
    _die_with_parent(parent)
    if threads:
        torch.set_num_threads(threads)
    put = partial(_send, events)
    study = None
    try:
        with signals_interrupt():
            try:
                studies.quiet_optuna()
                study = studies.open_study(job.study, job.storage, job.sampler, job.pruner, job.seed, job.epochs,
                                           heartbeat=job.heartbeat, worker=worker)
                _run_here(study, space, ds, job, job.device, put, deadline, worker, tickets)
            except Interrupted as e:
                if study is not None:
                    _record_interrupted(study)
                sys.exit(e.status)
    except NasError as e:
        put(WorkerFailed(worker, f"worker {worker}: {e}"))
        sys.exit(2)
    except Exception as e:
        cause = studies.storage_failure(e)
        if cause is None:
            raise
        held = (" (another process holds the study's SQLite file: a worker stopped with SIGSTOP or Ctrl-Z? `kill -CONT` it "
                "or end it)" if "locked" in cause else "")
        put(WorkerFailed(worker, f"worker {worker}: the study storage stopped accepting writes ({cause}){held}"))
        sys.exit(1)


def _send(pipe: Connection, event: Event) -> None:
    """Send `event` to the parent; if it is gone there is no one to tell (its SIGTERM follows: `_die_with_parent`)."""
    try:
        pipe.send(event)
    except BrokenPipeError:
        pass


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker (it records its trial as interrupted) as soon as the command that started it
    ends, even by SIGKILL, so no worker outlives it; stop now if it is already gone. The parent is
    watched directly: the fork server between them waits for its workers, so it cannot pass it on."""
    try:
        fd = os.pidfd_open(parent) if hasattr(os, "pidfd_open") else None  # Linux: readable once it ends
        os.kill(parent, 0)
    except ProcessLookupError:
        sys.exit(1)
    threading.Thread(target=_sigterm_when_gone, args=(parent, fd), daemon=True, name="nas-parent-watch").start()


def _sigterm_when_gone(pid: int, fd: int | None) -> None:
    if fd is not None:
        select.select([fd], [], [])
    else:  # no process descriptors here (macOS): ask once a second
        while True:
            time.sleep(1)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
    os.kill(os.getpid(), signal.SIGTERM)


# --- where workers run ----------------------------------------------------------------------------


def worker_devices(device: str, n: int) -> list[str]:
    """The device of each of `n` workers: `auto`/`cuda` spread them over all GPUs, else all share `device`.

    A device this machine does not have is an error here, before any study is created."""
    picked = pick_device(device)
    if device in ("auto", "cuda") and picked.type == "cuda":
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(n)]
    return [str(picked)] * n


def auto_workers(device: str) -> int:
    """How many workers `--workers auto` runs: see docs/benchmarks.md for the measurements behind it."""
    if device != "cpu" and torch.cuda.is_available():
        gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 1
        return max(1, min(4 * gpus, system.usable_cores()))  # one small net leaves a GPU idle between its kernels
    return max(1, min(system.usable_cores(), 8))  # one single-threaded worker per core beats threads inside one small net
