"""Worker processes: N processes on this machine that each run a share of a study's trials.

Workers are forked from a fork server that imported torch once, get their data in shared memory, die
with their parent, and send it nothing but events, each down its own pipe. They take trials from a
shared count (a semaphore): a worker that dies has its trial failed and its parameters queued again at
once, and the others take its part. The parent watches them: it says which one stopped and why, and
stops those still there past the time limit (frozen, stopped) or after a signal, recording their trials.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from nas import storage, system
from nas.record import State, TrialRecord
from nas.errors import NasBug, NasError
from nas.signals import SIGNALS, Interrupted, checkpoint, signals_interrupt
from nas.train import pick_device

if TYPE_CHECKING:
    from optuna import Study

STOP_GRACE = 30  # seconds a worker has to record its trial after a signal, before it is killed
DEADLINE_GRACE = 5  # seconds past --timeout a worker has to record its trial, then as many after a SIGTERM
OWNERLESS_AFTER_DEATH = 1.0  # seconds: a running trial with no worker named, once a worker is known dead
MAX_WORKERS_PER_CORE = 4
MAX_TICKETS = 2**31 - 1  # a semaphore's largest count (Linux's SEM_VALUE_MAX): more trials than anyone runs

# What a worker runs: work(worker, device, send, take) runs trials on `device`, each after `take()` grants
# one, and passes its events to `send`. A module-level function or a partial of one: it is pickled.
Work = Callable[[int, str, Callable[[Any], None], Callable[[], bool]], None]


@dataclass(frozen=True)
class WorkerFailed:
    """Event: a worker process stopped early; `message` says how and what became of its trial."""

    worker: int
    message: str
    bug: bool = False  # a bug in nas: the parent stops every worker and the command with it


def check_count(n_workers: int | None) -> None:
    """Refuse more workers than this machine's cores can carry (each loads torch and the data)."""
    cores = system.usable_cores()
    if n_workers and n_workers > MAX_WORKERS_PER_CORE * cores:
        raise NasError(f"--workers {n_workers}: this machine has {cores} cores; run at most "
                       f"{MAX_WORKERS_PER_CORE * cores} workers here (each loads torch and the data), or --workers auto.")


def run_workers(study: Study, devices: list[str], work: Work, n_trials: int, on_event: Callable[[Any], None],
                late_after: float | None) -> list[str]:
    """Run `n_trials` trials of `study` in one worker process per device, each taking them one at a time
    from a shared count; returns what stopped any of them early. A worker that dies has its running
    trial failed and queued again at once; the others go on.
    A signal here stops every worker (each records its trial as interrupted) and re-raises. Each
    worker stops at its deadline by itself; one still there DEADLINE_GRACE past `late_after` (frozen,
    stopped) is stopped by this process, and its trial recorded as stopped at the time limit.
    """
    procs, pipes, tickets = _start(devices, work, n_trials)  # the count must outlive the workers' start: see _start
    watch = _Watch(study, procs, pipes, on_event)
    try:
        while any(p.is_alive() for p in procs):
            watch.drain(0.2)
            watch.note_ended()
            watch.note_stopped()
            checkpoint()
            if late_after is not None and time.monotonic() > late_after + DEADLINE_GRACE and watch.stop_late():
                late_after = time.monotonic()  # the others get one more grace to record their last trial
            if watch.bug:  # as with one process, a bug stops the search: the others' trials are interrupted
                raise NasBug.relayed(watch.bug)
    except (Interrupted, NasBug):
        _stop(procs)
        watch.drain(0)
        storage.fail_own_trials(study, "interrupted", [p.pid for p in procs])  # of a worker that had to be killed
        raise
    except Exception:  # the storage failed here: no worker may be left behind, a stopped one included
        _stop(procs)
        raise
    finally:
        for p in procs:
            p.join()
        watch.drain(0)
    watch.note_ended()
    if watch.bug:  # one hit it in its last trial, after which nothing was left to stop
        raise NasBug.relayed(watch.bug)
    return watch.failed


def _start(devices: list[str], work: Work, n_trials: int) -> tuple[list[Any], list[Connection], Any]:
    """One started worker process per device, the pipe each sends its events down, and the semaphore they
    take trials from (`n_trials` in all). The caller holds on to the semaphore until the workers are done:
    `Process.start` lets go of its arguments, and a semaphore no one holds is removed before a worker
    forked from the fork server can open it."""
    # A fork server that has imported torch once forks each worker, ready in a moment; a plain fork
    # would copy this process's torch and SQLite state, spawn would import torch again in every worker.
    # torch's optimizers import torch._dynamo on first use (about a second): once, in the server (and the work's module).
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([getattr(work, "func", work).__module__, "torch._dynamo"])
    else:  # Windows
        ctx = multiprocessing.get_context("spawn")
    # Nothing the workers share may be held by one of them: a worker killed or stopped (SIGSTOP) while
    # holding a lock would stall the others for ever. So each worker sends its events down its own pipe
    # (one write per event, atomic at these sizes) and takes trials from a semaphore (one atomic step).
    tickets = ctx.Semaphore(min(n_trials, MAX_TICKETS))
    pipes = [ctx.Pipe(duplex=False) for _ in devices]
    procs = [ctx.Process(target=_worker, args=(work, i, d, send, os.getpid(), tickets), name=f"nas-worker-{i}",
                         daemon=True) for i, (d, (_, send)) in enumerate(zip(devices, pipes))]
    for p, (_, send) in zip(procs, pipes):
        p.start()
        send.close()  # the worker's end: once the worker is gone, its pipe reads as ended
    return procs, [receive for receive, _ in pipes], tickets


class _Watch:
    """What the parent of the workers knows of them: their events, which ended early, and why."""

    def __init__(self, study: Study, procs: list[Any], pipes: list[Any], on_event: Callable[[Any], None]):
        self.study, self.procs, self.pipes, self.on_event = study, procs, pipes, on_event
        self.failed: list[str] = []
        self.said: set[int] = set()  # workers that reported their own error
        self.ended: set[int] = set()  # workers whose end has been dealt with
        self.stopped: set[int] = set()  # workers seen stopped, and told of
        self.bug: str | None = None  # what the first worker to hit a bug in nas said of it

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
                    if event.bug:  # the command ends with it, and says it then (once)
                        self.bug = self.bug or event.message
                        continue
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
            retried = storage.fail_dead_workers_trials(self.study, ownerless_after=OWNERLESS_AFTER_DEATH)
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

    def stop_late(self) -> bool:
        """Stop the workers still there past the deadline's grace (a frozen or stopped one) and record
        their trials as stopped at the time limit: the time the user gave bounds the whole command.
        A stopped (SIGSTOP) worker may hold the study's SQLite lock that the others wait on to record their
        last trial: such ones are stopped first, alone, and True returned (the others are still there)."""
        late = [(i, p) for i, p in enumerate(self.procs) if p.is_alive() and i not in self.ended]
        frozen = [(i, p) for i, p in late if _is_stopped(p.pid)]
        if frozen:
            late = frozen
        self.ended.update(i for i, _ in late)  # stopped here: not a worker that failed
        _stop([p for _, p in late], DEADLINE_GRACE)
        self.drain(0)
        stopped = storage.fail_own_trials(self.study, "stopped at the time limit", [p.pid for _, p in late])
        for i, p in late:
            self.on_event(WorkerFailed(i, f"worker {i} (pid {p.pid}) was still running {DEADLINE_GRACE} s past the "
                                          "time limit and was stopped" + (f"; its trial {', '.join(f'#{n}' for n in stopped)}"
                                                                          " is recorded as stopped" if stopped else "")))
        return any(p.is_alive() for i, p in enumerate(self.procs) if i not in self.ended)


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
    """The trials recorded as failed because worker `pid` of this machine died (`storage.fail_dead_workers_trials`)."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(State.FAIL,))
            if (TrialRecord(t).reason or "").endswith(f":{pid} died")]


def _how_it_ended(exitcode: int) -> str:
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    if exitcode - 128 in {int(s) for s in SIGNALS}:
        return f"was stopped by {signal.Signals(exitcode - 128).name}"
    return f"stopped with exit status {exitcode}"


def _worker(work: Work, worker: int, device: str, events: Connection, parent: int, tickets: Any) -> None:
    """One worker process: run `work` on `device` while trials are left, sending its events to the parent; a
    signal, a user error or a storage that fails ends it with the conventional status, said as an event."""
    _die_with_parent(parent)
    put = partial(_send, events)
    try:
        with signals_interrupt():
            try:
                work(worker, device, put, partial(_take, tickets))
            except Interrupted as e:  # the work recorded its trial as interrupted
                sys.exit(e.status)
    except NasError as e:
        put(WorkerFailed(worker, f"worker {worker}: {e}"))
        sys.exit(2)
    except NasBug as e:
        put(WorkerFailed(worker, f"worker {worker}: {e}", bug=True))
        sys.exit(1)
    except Exception as e:
        cause = storage.storage_failure(e)
        if cause is None:
            raise
        held = (" (another process holds the study's SQLite file: a worker stopped with SIGSTOP or Ctrl-Z? `kill -CONT` it "
                "or end it)" if "locked" in cause else "")
        put(WorkerFailed(worker, f"worker {worker}: the study storage stopped accepting writes ({cause}){held}"))
        sys.exit(1)


def _take(tickets: Any) -> bool:
    """Take one of the trials left to the workers; False when none is."""
    return tickets.acquire(block=False)


def _send(pipe: Connection, event: Any) -> None:
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
