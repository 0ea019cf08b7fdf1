"""Live progress of a running job: a search's, a retrain's or `nas run`'s events, routed by their type, as
Rich bars that move batch by batch with ETAs in a terminal, and as a status line every NAS_LOG_EVERY
seconds in a log or a pipe. The console and the escaping of what users typed come from `views`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, get_args

from nas import names
from nas.errors import NasError
from nas.views import console, err_console, plain


class _Ticker:
    """In a log or a pipe, where no live display moves: a plain line of `status()` whenever `every` seconds pass
    without another line, from a thread of its own, so a long epoch or a silent worker still shows the run is alive."""

    def __init__(self, status: Callable[[], str | None], on: bool):
        self.status, self.on, self.last = status, on, time.monotonic()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def said(self) -> None:
        self.last = time.monotonic()

    def __enter__(self) -> _Ticker:
        if self.on:
            every = _log_every()
            self.thread = threading.Thread(target=self._run, args=(every,), daemon=True, name="nas-status")
            self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()

    def _run(self, every: float) -> None:
        while not self.stopped.wait(max(0.05, self.last + every - time.monotonic())):
            if time.monotonic() - self.last >= every:
                line = self.status()
                if line:
                    console.print(f"{time.strftime('%H:%M:%S')} {line}", highlight=False, markup=False, soft_wrap=True)
                self.said()


def _log_every() -> float:
    """Seconds between status lines in a log or pipe: $NAS_LOG_EVERY, else 30."""
    value = os.environ.get("NAS_LOG_EVERY", "30")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0.01 <= seconds <= 86400:  # NaN fails this too
        raise NasError(f"NAS_LOG_EVERY={value!r}: expected the seconds between status lines in a log, from 0.01 to "
                       "86400, such as 30 or 0.5; unset it for every 30 s.")
    return seconds


def _clock(seconds: float) -> str:
    """A duration as m:ss or h:mm:ss."""
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _eta(elapsed: float, done: float, total: float) -> float | None:
    """Seconds left when `done` of `total` took `elapsed`, at that pace; None before anything is done."""
    return elapsed * (total - done) / done if done > 0 else None


class SearchView:
    """Renders a search's events: in a terminal a live bar for the run and one per running trial, batch by batch,
    with their ETAs; in a log a status line every NAS_LOG_EVERY seconds; one line per finished trial."""

    def __init__(self, trials: int | None, quiet: bool, limit: float | None = None):
        self.trials, self.quiet, self.limit = trials, quiet, limit  # limit: --timeout or --budget, in seconds
        self.done = self.pruned = self.epochs = self.n_workers = 0
        self.best: float | None = None
        self.begun = time.monotonic()
        self.took: list[float] = []  # seconds of each trained trial of this run
        self.running: dict[int, tuple[int, Any, float]] = {}  # worker -> (trial, its last BatchRecord, when it began)
        self.bars: dict[int, Any] = {}  # worker -> its progress bar
        self.progress = _progress(quiet)
        self.task = self.progress.add_task("starting", total=trials)  # None: bounded by time, not a count
        self.ticker = _Ticker(self.status, on=not quiet and not console.is_terminal)

    def show(self, event: Any) -> None:
        """Draw one of the search's events, routed by its type."""
        from nas import search as searching
        from nas.workers import WorkerFailed

        handler = {searching.Started: self._started, searching.EpochDone: self._epoch, searching.BatchDone: self._batch,
                   searching.TrialDone: self._trial, WorkerFailed: self._worker_failed}[type(event)]
        handler(event)

    def _say(self, line: str) -> None:
        self.progress.console.print(line, highlight=False, soft_wrap=True)
        self.ticker.said()

    def _started(self, e: Any) -> None:
        self.best, self.epochs, self.n_workers = e.best, e.epochs, e.n_workers
        if self.quiet:
            return
        baselines = f", {names.counted(e.n_baselines, 'baseline')} first" if e.n_baselines and not e.n_finished else ""
        threads = f"{names.counted(e.threads, 'torch thread')} ({e.threads_why})"
        workers = f"; {names.counted(e.n_workers, 'worker')} × {threads}" if e.n_workers > 1 else f"; {threads}"
        self._say(f"study [bold]{plain(e.study)}[/] in {plain(e.storage)}: {names.counted(e.n_finished, 'finished trial')} "
                  f"so far{baselines}; {e.n_train} train / {e.n_val} val images on {', '.join(e.devices)}, "
                  f"{names.counted(e.epochs, 'epoch')} per trial{workers}")

    def _batch(self, e: Any) -> None:
        trial, _, began = self.running.get(e.worker, (None, None, time.monotonic()))
        self.running[e.worker] = (e.trial, e.record, began if trial == e.trial else time.monotonic())
        r = e.record
        if e.worker not in self.bars:
            self.bars[e.worker] = self.progress.add_task("", total=None)
        self.progress.update(self.bars[e.worker], description=f"  {self._trial_status(*self.running[e.worker])}",
                             total=self.epochs * r.n_batches, completed=(r.epoch - 1) * r.n_batches + r.batch)
        self.progress.update(self.task, description=self._run_status())

    def _epoch(self, e: Any) -> None:
        self.progress.update(self.task, description=self._run_status())

    def _trial(self, e: Any) -> None:
        row = e.row
        if self.running.get(e.worker, (None,))[0] == row["number"]:
            del self.running[e.worker]
            self.progress.reset(self.bars[e.worker], total=None, description="  next trial")
        if row["rejected"]:  # not one of the run's trials: another net is drawn in its place
            if not self.quiet:
                self._say(f"[dim]#{row['number']:<4} rejected {plain(row['reason'] or '')}[/]")
            return
        self.done += 1
        self.pruned += row["state"] == "pruned"
        self.took.append(row["seconds"] or 0.0)
        if row["state"] == "complete":
            self.best = max(self.best or 0.0, row["val_accuracy"])
        self.progress.update(self.task, advance=1, description=self._run_status())
        if not self.quiet:
            value = f"{row['val_accuracy']:.4f}" if row["val_accuracy"] is not None else "  -   "
            self._say(f"#{row['number']:<4} {row['state']:<8} val {value}  {row['seconds'] or 0:6.1f}s  "
                      + ("[bold]baseline[/] " if row.get("baseline") else "") + plain(row['arch'] or '')
                      + (f"  [dim]({plain(row['reason'])})[/]" if row["reason"] else "") + f"  · {self._done()}")

    def _trial_status(self, trial: int, r: Any, began: float) -> str:
        """One running trial: where it is, its speed, and when it should end."""
        elapsed = time.monotonic() - began
        left = _eta(elapsed, (r.epoch - 1) * r.n_batches + r.batch, self.epochs * r.n_batches)
        return (f"#{trial} epoch {r.epoch}/{self.epochs} batch {r.batch}/{r.n_batches} · {r.images_per_s:,.0f} img/s · "
                f"{_clock(elapsed)}" + (f", ETA {_clock(left)}" if left is not None else ""))

    def _done(self) -> str:
        return (f"{self.done}/{self.trials} done" if self.trials else f"{self.done} done") + (
            f", {self.pruned} pruned" if self.pruned else "") + (f" · best {self.best:.4f}" if self.best is not None else "")

    def _run_status(self) -> str:
        left = self._run_left()
        return self._done() + (f" · run ETA {_clock(left)}" if left is not None else "")

    def _run_left(self) -> float | None:
        """Seconds until the run ends: the trials left at the mean trial's pace over the workers, or the time
        left to --timeout/--budget when that comes sooner."""
        by_time = None if self.limit is None else self.limit - (time.monotonic() - self.begun)
        running = dict(self.running)  # a copy: the status thread reads it while events change it
        now = [(time.monotonic() - b, _eta(time.monotonic() - b, (r.epoch - 1) * r.n_batches + r.batch,
                                           self.epochs * r.n_batches) or 0.0) for _, r, b in running.values()]
        # a trial's time: the mean of those done, or before any is, what the running ones will have taken
        per_trial = sum(self.took) / len(self.took) if self.took else max((a + b for a, b in now), default=None)
        if not self.trials or per_trial is None:
            return by_time
        n_left = max(0, self.trials - self.done - len(running))
        by_count = max((b for _, b in now), default=0.0) + n_left * per_trial / max(1, self.n_workers)
        return by_count if by_time is None else min(by_count, by_time)

    def status(self) -> str:
        """The line a log gets every NAS_LOG_EVERY seconds."""
        running = dict(self.running)  # a copy: events change it while this thread reads it
        running = "; ".join(self._trial_status(*running[w]) for w in sorted(running)) or "between trials"
        return f"{_clock(time.monotonic() - self.begun)} elapsed · {running} · {self._run_status()}"

    def _worker_failed(self, e: Any) -> None:
        err_console.print(f"[bold red]{plain(e.message)}[/]", highlight=False, soft_wrap=True)


class TrainingView:
    """Renders training events: a progress bar per network moving batch by batch with an ETA (in a log, a status
    line every NAS_LOG_EVERY seconds), and for `nas train` a line per epoch."""

    def __init__(self, quiet: bool, per_epoch_lines: bool):
        self.quiet, self.per_epoch_lines = quiet, per_epoch_lines
        self.progress = _progress(quiet)
        self.task: Any = None
        self.started: Any = None  # the TrainingStarted of the net now training
        self.last: Any = None  # its last BatchRecord
        self.begun = time.monotonic()
        self.ticker = _Ticker(self.status, on=not quiet and not console.is_terminal)
        self.handlers: dict[type, Callable[[Any], None]] = {}

    def show(self, event: Any) -> None:
        """Draw one of the training's events, routed by its type."""
        if not self.handlers:  # on the first event: a view that never hears one (`nas best`'s listing) loads no torch
            from nas.retrain import TrainingStarted
            from nas.train import BatchRecord, EpochRecord

            self.handlers = {TrainingStarted: self._started, EpochRecord: self._epoch, BatchRecord: self._batch}
        self.handlers[type(event)](event)

    def _started(self, e: Any) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        if self.per_epoch_lines and not self.quiet:
            self.progress.console.print(f"{plain(e.arch)}\n{plain(e.dataset)}: {e.n_train} train / {e.n_held_out} "
                                        f"test images on {e.device}", highlight=False, soft_wrap=True)
        self.started, self.last, self.begun = e, None, time.monotonic()
        self.task = self.progress.add_task(self._name(), total=e.epochs)

    def _name(self) -> str:
        e = self.started
        return "training" + (f" #{e.trial}" if e.trial is not None else "") + (f" ({e.index}/{e.count})" if e.count > 1 else "")

    def _batch(self, r: Any) -> None:
        self.last = r
        total = self.started.epochs * r.n_batches
        self.progress.update(self.task, total=total, completed=(r.epoch - 1) * r.n_batches + r.batch,
                             description=self.status(with_elapsed=False))

    def _epoch(self, r: Any) -> None:
        if self.per_epoch_lines and not self.quiet:
            self.progress.console.print(f"epoch {r.epoch:>3}  loss {r.loss:.4f}  train {r.train_acc:.4f}  "
                                        f"eval {r.val_acc:.4f}  {r.seconds:.2f}s", highlight=False)
            self.ticker.said()
        if self.last is None:  # no batch heard of: count epochs
            self.progress.update(self.task, completed=r.epoch)

    def status(self, with_elapsed: bool = True) -> str | None:
        """Where the training is: epoch, batch, speed, elapsed time and ETA."""
        if self.started is None:
            return None
        r, elapsed = self.last, time.monotonic() - self.begun
        if r is None:
            return f"{self._name()}: starting, {_clock(elapsed)} elapsed"
        left = _eta(elapsed, (r.epoch - 1) * r.n_batches + r.batch, self.started.epochs * r.n_batches)
        return (f"{self._name()}: epoch {r.epoch}/{self.started.epochs} batch {r.batch}/{r.n_batches} · "
                f"{r.images_per_s:,.0f} img/s" + (f" · {_clock(elapsed)} elapsed" if with_elapsed else "")
                + (f" · ETA {_clock(left)}" if left is not None else ""))


class RunView:
    """`nas run`'s events: the search's to a search view, then the retrain's to a training view (routed by their
    type), one live display at a time, and in a log one status line of whichever is at work."""

    def __init__(self, quiet: bool, budget: float):
        from nas import search as searching

        self.search, self.train = SearchView(None, quiet, budget), TrainingView(quiet, per_epoch_lines=False)
        self.searched = get_args(searching.Event)
        self.ticker = _Ticker(lambda: (self.train if self.train.started else self.search).status(),
                              on=not quiet and not console.is_terminal)
        self.search.ticker = self.train.ticker = self.ticker

    def show(self, event: Any) -> None:
        """Pass a search's event to the search view, any other to the training view (starting its display)."""
        if not isinstance(event, self.searched) and not self.train.progress.live.is_started:
            self.search.progress.stop()
            self.train.progress.start()
        (self.search if isinstance(event, self.searched) else self.train).show(event)


def _progress(quiet: bool) -> Any:
    """A transient Rich progress display; disabled (but still usable) when quiet or when no terminal shows it
    (a log gets `_Ticker`'s lines instead)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, disable=quiet or not console.is_terminal)
