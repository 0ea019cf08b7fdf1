"""Studies: storage URLs, samplers, pruners, create-or-resume, and reading results back.

Optuna does the work (RDB storage, TPE, median / Hyperband pruners); this module only chooses and
wires them, and records on the study what a resume or an export must reproduce (dataset, split).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna

from nas.errors import NasError

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class StudyError(NasError):
    """A study that is missing, empty or does not match what was asked of it."""


def quiet_optuna() -> None:
    """The CLI shows its own progress and each trial's fate: Optuna's own log says only errors."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def open_storage(url: str, heartbeat: int = 10, create: bool = False) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats: a trial whose worker died (kill -9, lost machine) is marked
    failed by the next worker that starts a trial, and its parameters are queued to run again.
    Only with `create` may a missing SQLite file be made (by `search`, not by commands that read)."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.is_file():
            raise StudyError(f"{url}: no such study storage (file {path} does not exist); run `nas search` first "
                             "or pass the --storage your search used.")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StudyError(f"{url}: cannot create folder {path.parent} ({e.strerror}); choose another --storage.")
        engine_kwargs = {"connect_args": {"timeout": 60}}  # local workers wait for the file lock, not fail
    elif url.startswith("postgresql"):
        try:
            import psycopg  # noqa: F401  (SQLAlchemy's driver for postgresql:// URLs)
        except ImportError:
            raise StudyError(f"{url} needs the PostgreSQL driver: pip install 'nas[postgres]' (psycopg 3).")
    for _ in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=3 * heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
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
    raise StudyError(
        f"cannot open the study storage {url!r}: {first}. Use sqlite:///PATH.db or "
        "postgresql://USER@HOST:PORT/DB with the server running."
    )


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


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # group=True lets multivariate TPE model the conditional per-block parameters together.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed, constant_liar=True)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(
    name: str,
    storage: str,
    sampler: str,
    pruner: str,
    seed: int,
    epochs: int,
    data_attrs: dict[str, Any],
    baselines: Sequence[dict[str, Any]] = (),
    heartbeat: int = 10,
    worker: int = 0,
) -> optuna.Study:
    """Create the study, or resume it; a new one gets the `baselines` (trial parameters) enqueued first.

    `worker` tells apart processes that open the study together, so their samplers draw differently.
    """
    rdb = open_storage(storage, heartbeat, create=True)
    kwargs = {"study_name": name, "storage": rdb, "pruner": make_pruner(pruner, epochs)}
    if name in optuna.get_all_study_names(rdb):  # resume: check before writing anything
        study = optuna.load_study(**kwargs)
    else:  # load_if_exists: workers started together may race to create it
        study = optuna.create_study(direction="maximize", load_if_exists=True, **kwargs)
    known = study.user_attrs.get("data")
    if known is None:
        study.set_user_attr("data", data_attrs)
        for params in baselines:
            study.enqueue_trial(params, skip_if_exists=True)
        known = data_attrs
    for key in ("dataset", "subset"):
        if known[key] != data_attrs[key]:
            raise StudyError(
                f"study {name!r} in {storage} was searched with {key} {known[key]!r}, not {data_attrs[key]!r}: "
                f"resume it with the same --{key}, or pass a new --study name."
            )
    # A resumed run must not replay the first run's random draws: seed by how far the study got.
    study.sampler = make_sampler(sampler, seed + len(study.trials) + 10_007 * worker)
    return study


def load_study(name: str | None, storage: str) -> optuna.Study:
    """An existing study; with no name, the storage's only study."""
    rdb = open_storage(storage)
    names = optuna.get_all_study_names(rdb)
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        have = ", ".join(names) or "none yet; run `nas search` first"
        what = f"no study named {name!r}" if name else "several studies, so pass --study NAME"
        raise StudyError(f"{storage} holds {what}. Studies there: {have}.")
    return optuna.load_study(study_name=name, storage=rdb)


def list_studies(storage: str) -> list[dict[str, Any]]:
    rows = []
    for s in optuna.get_all_study_summaries(open_storage(storage), include_best_trial=True):
        rows.append({
            "name": s.study_name,
            "trials": s.n_trials,
            "best": s.best_trial.value if s.best_trial else None,
            "started": s.datetime_start.isoformat(" ", "seconds") if s.datetime_start else None,
        })
    return rows


def run_search(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int | None,
    timeout: float | None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> None:
    """Run `n_trials` more trials (or until `timeout`); a trial that raises fails alone."""
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=timeout,
        catch=(RuntimeError, ValueError),
        callbacks=[on_trial] if on_trial else None,
    )


def top_trials(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The k completed trials with the highest validation accuracy, best first."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise StudyError(
            f"study {study.study_name!r} has no completed trial yet ({len(study.trials)} in all): "
            "run `nas search` on it until one completes."
        )
    return sorted(done, key=lambda t: t.value, reverse=True)[:k]


def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as plain data, for tables and --json."""
    a = t.user_attrs
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "val_accuracy": t.value,
        "n_params": a.get("n_params"),
        "flops": a.get("flops"),
        "epochs_run": len(a.get("curve", [])),
        "seconds": a.get("seconds"),
        "arch": a.get("arch"),
        "reason": a.get("reason"),
    }


# --- one search, in this process or in N worker processes ------------------------------------


@dataclass(frozen=True)
class SearchJob:
    """Everything one search process needs, as plain (picklable) data."""

    space: str
    study: str
    storage: str
    dataset: str
    data_dir: str | None
    device: str
    epochs: int
    subset: int | None
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    heartbeat: int = 10
    trials: int = 1
    timeout: float | None = None
    threads: int | None = None  # torch intra-op threads; None leaves torch's default (all cores)
    worker: int = 0


def start_search(job: SearchJob, on_epoch: Callable[[int, Any], None] | None = None) -> tuple[optuna.Study, Any]:
    """Open (or create) the job's study and build its objective: (study, objective)."""
    import torch

    from nas import data, objective, space as spaces

    if job.threads:
        torch.set_num_threads(job.threads)
    sp = spaces.load_space(job.space)
    ds = data.load_dataset(job.dataset, job.data_dir)
    wanted = {"dataset": ds.name, "val_fraction": sp.val_fraction, "split_seed": job.seed, "subset": job.subset}
    st = open_study(job.study, job.storage, job.sampler, job.pruner, job.seed, job.epochs, wanted,
                    spaces.baseline_params(sp), job.heartbeat, job.worker)
    split = st.user_attrs["data"]  # a resumed study keeps the split it started with
    device = torch.device(job.device)
    prepared = objective.prepare_search_data(ds, split["val_fraction"], split["split_seed"], device, split["subset"])
    return st, objective.Objective(sp, prepared, job.epochs, device, job.seed, on_epoch=on_epoch)


def worker_devices(device: str, n: int) -> list[str]:
    """The device of each of `n` workers: `auto`/`cuda` spread them over all GPUs, else all share `device`."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(n)]
    return ["cpu" if device == "auto" else device] * n


def auto_workers(device: str) -> int:
    """How many workers `--workers auto` runs: see docs/benchmarks.md for the measurements behind it."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 1
        return max(1, min(4 * gpus, _cores()))  # one small net leaves a GPU idle between its kernels
    return max(1, min(_cores(), 8))  # one single-threaded worker per core beats threads inside one small net


def threads_per_worker(n_workers: int) -> int | None:
    """Several workers split the cores between them; one keeps torch's default (all of them)."""
    return None if n_workers == 1 else max(1, _cores() // n_workers)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_workers(jobs: list[SearchJob], on_event: Callable[[tuple], None]) -> list[int | None]:
    """Run each job in its own process; `on_event` gets their progress here. Returns their exit codes.

    Events: ("epoch", worker, trial number, EpochRecord), ("trial", worker, trial_row), ("error", worker, message).
    A Ctrl-C here is passed on to the workers, which mark their running trials interrupted and stop.
    """
    ctx = multiprocessing.get_context("spawn")  # fork would copy this process's torch and SQLite state
    events = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(job, events), name=f"nas-worker-{job.worker}") for job in jobs]
    for p in procs:
        p.start()

    def drain(wait: float) -> None:
        try:
            on_event(events.get(timeout=wait))
            while True:
                on_event(events.get_nowait())
        except queue.Empty:
            pass

    try:
        while any(p.is_alive() for p in procs):
            drain(0.2)
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=60)
        raise
    finally:
        for p in procs:
            p.join()
        drain(0)
    return [p.exitcode for p in procs]


def _worker(job: SearchJob, events: Any) -> None:
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        quiet_optuna()
        st, obj = start_search(job, on_epoch=lambda number, record: events.put(("epoch", job.worker, number, record)))
        run_search(st, obj, job.trials, job.timeout, lambda _s, t: events.put(("trial", job.worker, trial_row(t))))
    except KeyboardInterrupt:
        pass  # the objective marked the running trial interrupted
    except NasError as e:
        events.put(("error", job.worker, str(e)))
        sys.exit(2)


def _interrupt_once(signum: int, frame: Any) -> None:
    """Ctrl-C in a terminal reaches every worker and the parent passes it on too: act on the first only."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt
