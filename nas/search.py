"""One search: the space, the dataset and the study opened once, then trials in this process or in N
worker processes (`workers`), progress reported as events, and a signal ending it cleanly (`signals`):
the running trials are recorded as failed with reason `interrupted` and `Interrupted` is raised.

A timeout bounds the whole command, reading the data included: a trial still training then stops
between two batches (pruned, `stopped at the time limit after epoch k`), and a worker still there a
few seconds later (frozen, stopped) is stopped by the parent and its trial recorded.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import yaml

from nas import claims, data, names, record, storage, study as studies, system, workers
from nas.data import Dataset
from nas.errors import NasError
from nas.objective import Objective
from nas.autospace import builtin_space
from nas.signals import Interrupted, checkpoint, signals_interrupt
from nas.space import Space
from nas.spacefile import baseline_params, load_space, parse_space
from nas.train import BatchRecord, EpochRecord, TimeUp
from nas.workers import WorkerFailed

if TYPE_CHECKING:
    from optuna import Study

TRAINED_BUT_STOPPED = ("pruned at epoch", TimeUp.prefix + " after epoch")  # reasons of trials that have a value
RECHECK = 10.0  # seconds between looks at the machine's load, before a trial


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
    study_trials: int | None = None  # the study's total, counted in its storage across every process and machine
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
    space: Space | None = field(default=None, repr=False)  # and in what space
    opened: Study | None = field(default=None, repr=False)  # the study itself, still open: `nas run` reads its best

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


def run(job: SearchJob, on_event: Callable[[Event], None], space: Space | None = None) -> Outcome:
    """Run `job.trials` more trials of the job's study (creating or resuming it); see the module doc.
    `space` is `job.space` already loaded, if the caller has read it (`nas run` checks it first).

    Everything that can be refused is checked before the study is touched or any work starts: the
    space's baselines, the device, the storage's folder, the dataset. A signal at any point, reading
    the data included, ends the run as `Interrupted`.
    """
    studies.quiet_optuna()  # progress and each trial's fate arrive as events
    deadline = None if job.timeout is None else (job.started or time.monotonic()) + job.timeout  # so does reading the data
    rows: list[dict[str, Any]] = []
    study = None
    with signals_interrupt():
        try:
            study, space, ds, job, devices = _open(job, space)
            return _search(study, space, ds, job, devices, rows, on_event, deadline)
        except Interrupted as e:
            if study is not None:
                _record_interrupted(study)
            raise Interrupted(e.signum, n_trained(rows), _best_rows(study, space) if study is not None else None) from None
        except Exception as e:
            cause = storage.storage_failure(e)
            if cause is None:
                raise
            raise storage.StudyError(
                f"the study storage {job.storage} stopped accepting writes ({cause}) after {names.counted(len(rows), 'trial')} of "
                "this run; those are saved. Fix the storage (free space, permissions, the server) and run the same "
                "command again to go on: a trial left running is failed then and its parameters run again."
            ) from e


def _open(job: SearchJob, space: Space | None) -> tuple[Study, Space, Dataset, SearchJob, list[str]]:
    """Read the space (unless given) and the dataset, check the device and the storage, then create or resume
    the study. Without a space file, an existing study's recorded space is searched, else the built-in space
    for the dataset (`autospace`)."""
    workers.check_count(job.workers)
    devices = workers.worker_devices(job.device, min(job.workers or workers.auto_workers(job.device), job.trials))
    space, text, ds, known = _space_of(job, space, devices[0])
    space = replace(space, objectives=job.objectives or (known.objectives if known else space.objectives))
    job = replace(job, study=job.study or space.name, dataset=job.dataset or (known.dataset if known else space.dataset),
                  epochs=job.epochs or (known and known.epochs) or space.epochs,
                  subset=job.subset or (known.subset if known else space.subset),
                  pruner=_pruner(job.pruner, space.objectives))
    baselines = baseline_params(space)
    storage.check_storage_target(job.storage)
    ds = ds or data.load_dataset(job.dataset, job.data_dir)
    built_in = known.built_in if known else job.space is None
    made = studies.new_record(ds.name, space.val_fraction, job.seed, job.subset, space.objectives, text,
                              ds.fingerprint(), job.epochs, built_in)
    data.split_sizes(ds, space.val_fraction, job.subset)  # a dataset too small to split fails before the study
    study = studies.open_study(job.study, job.storage, job.sampler, job.pruner, job.seed, job.epochs, made,
                               space, baselines, job.heartbeat)
    return study, space, ds, job, devices


def _space_of(job: SearchJob, space: Space | None, device: str
              ) -> tuple[Space, str, Dataset | None, studies.StudyRecord | None]:
    """The space to search and its text for the study's record, the dataset if it had to be read for it, and the
    record of the existing study whose recorded space it is (joined without --space), else None."""
    if job.space is not None or space is not None:
        space = space or load_space(job.space)
        return space, space.path.read_text(errors="replace") if space.path else "", None, None
    name, ds = job.study, None
    known = studies.recorded(job.storage, name) if name else None
    if not (known and known.space):
        ds = data.load_dataset(job.dataset or names.DEFAULT_DATASET, job.data_dir)
        raw = builtin_space(job.dataset or names.DEFAULT_DATASET, ds, device, job.objectives or ("accuracy",))
        name = name or raw["name"]
        known = studies.recorded(job.storage, name)
        if not (known and known.space):  # a new study, or one made before nas recorded its space
            return parse_space(raw), yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), ds, None
    return studies.recorded_space(known, name), known.space, ds, known


def _pruner(name: str | None, objectives: tuple[str, ...]) -> str:
    """The pruner asked for, or the default; Optuna's own cannot prune a study of several objectives."""
    if len(objectives) == 1:
        return name or "median"
    if name in ("median", "hyperband"):
        raise NasError(f"--pruner {name} cannot stop trials of a search for {','.join(objectives)}: Optuna prunes "
                       "single-objective studies only. Use --pruner pareto (the default there) or none.")
    return name or "pareto"


def _search(study: Study, space: Space, ds: Dataset, job: SearchJob, devices: list[str], rows: list[dict[str, Any]],
            on_event: Callable[[Event], None], deadline: float | None) -> Outcome:
    """Run the trials here or in workers until `deadline`, collecting the rows of this run's trials into `rows`."""
    split = studies.read_record(study)  # a resumed study keeps the split it started with
    n_train, n_val = data.split_sizes(ds, split.val_fraction, split.subset)
    trials = study.get_trials(deepcopy=False)
    n_workers, threads = len(devices), system.pick_threads(len(devices), job.threads)
    done = [record.accuracy(t) for t in trials if t.state == record.State.COMPLETE]
    on_event(Started(study.study_name, job.storage, sum(t.state in record.FINISHED for t in trials),
                     sum(t.state == record.State.WAITING for t in trials), max(done, default=None), n_train, n_val,
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
        work = partial(_work, replace(job, workers=n_workers), space, ds, threads.n, deadline)
        late_after = None if deadline is None else deadline + job.trial_grace
        failed = workers.run_workers(study, devices, work, job.trials, count, late_after)
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    return Outcome(study.study_name, job.storage, {s: states.count(s) for s in sorted(set(states))},
                   _best_rows(study, space), n_workers, rows, failed, gave_up, space.objectives, _built_in(study, job),
                   record.count_trials(study.get_trials(deepcopy=False)), ds, space, study)


def _built_in(study: Study, job: SearchJob) -> bool:
    """Whether the space searched is nas's own, as the study recorded it (older studies: no --space given)."""
    known = studies.read_record(study)
    return known.built_in if known is not None and known.space is not None else job.space is None


def _best_rows(study: Study, space: Space | None) -> list[dict[str, Any]]:
    """The study's front, or its 5 best completed trials (while there are none, those stopped at the time
    limit: `study.top_trials`); none when there is nothing to rank or the storage cannot say."""
    try:
        if space is not None and len(space.objectives) > 1:
            return [record.trial_row(t) for t in studies.front(study)]
        return [record.trial_row(t) for t in studies.top_trials(study, 5)]
    except Exception as e:  # after a signal the storage may be gone too: the table is a courtesy then
        if isinstance(e, storage.StudyError) or storage.storage_failure(e) is not None:
            return []
        raise


def resume_command(argv: list[str], n_left: int) -> str:
    """The shell-quoted `nas search` command line that runs the `n_left` trials an interrupted run did not."""
    return shlex.join(["nas", "search", *argv, "--trials", str(n_left)])


# --- in this process ---------------------------------------------------------------------------


def _run_here(study: Study, space: Space, ds: Dataset, job: SearchJob, device: str, on_event: Callable[[Event], None],
              deadline: float | None, worker: int = 0, take: Callable[[], bool] | None = None) -> None:
    """Run the job's trials in this process until `deadline` (a trial still training then stops and is
    recorded as such); events go to `on_event`. A worker is given `take` instead, which takes one of the
    trials left to all workers before each trial, so a worker that dies or
    is slow leaves its part to the others and the run still makes exactly `job.trials` trials. Nets
    rejected before training do not count (`study.run_trials`)."""
    device = torch.device(device)
    split = studies.read_record(study)
    prepared = data.prepare_search_data(ds, split.val_fraction, split.split_seed, device, split.subset)
    objective = Objective(space, prepared, job.epochs, device, job.seed,
                          on_epoch=lambda number, record: (checkpoint(), on_event(EpochDone(worker, number, record))),
                          pareto=job.pruner == "pareto", deadline=deadline, grace=job.trial_grace,
                          on_batch=lambda number, record: (checkpoint(), on_event(BatchDone(worker, number, record))))

    def on_trial(row: dict[str, Any]) -> None:
        on_event(TrialDone(worker, row))
        checkpoint()

    if take is None:
        granted = iter(range(job.trials))
        take = lambda: next(granted, None) is not None  # noqa: E731
    if job.study_trials:  # and while the study, counted in its storage, has fewer than asked
        take = claims.claimer(study, job.study_trials, take)
    studies.run_trials(study, objective, _fitting_threads(take, job), deadline, on_trial, redraw=bool(space.dimensions()),
                       built_in=_built_in(study, job))


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


def _record_interrupted(study: Study) -> None:
    """The objective records its trial as interrupted; a signal between Optuna's steps may leave one running."""
    try:
        storage.fail_own_trials(study, "interrupted")
    except Exception as e:
        if storage.storage_failure(e) is None:
            raise  # the storage is gone too: the next search fails the trial (this process will not exist)


def _work(job: SearchJob, space: Space, ds: Dataset, threads: int | None, deadline: float | None, worker: int,
          device: str, send: Callable[[Event], None], take: Callable[[], bool]) -> None:
    """A worker's part of the search, in its own process (`workers.run_workers`): join the study and run
    trials on `device` while `take` grants them; a signal records its running trial as interrupted."""
    if threads:
        torch.set_num_threads(threads)
    studies.quiet_optuna()
    study = None
    try:
        study = studies.open_study(job.study, job.storage, job.sampler, job.pruner, job.seed, job.epochs,
                                   heartbeat=job.heartbeat, worker=worker)
        _run_here(study, space, ds, replace(job, device=device), device, send, deadline, worker, take)
    except Interrupted:
        if study is not None:
            _record_interrupted(study)
        raise
