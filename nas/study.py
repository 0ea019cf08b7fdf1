"""Studies: samplers and pruners, creating or resuming a study with its record, reading studies back, and
the loop that runs trials.

Optuna does the work (RDB storage, TPE, median / Hyperband pruners); this module only chooses and wires
them. A study is its own record (`StudyRecord`): when it is made it stores, once, the resolved space as
YAML text, the dataset's name and content fingerprint, the split, the objectives and the nas version, so
that a resume, `best`, `report`, `nas run` and a worker joining it read them instead of re-deriving them.
Studies made before nas recorded all of that still load: what they lack reads as None.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, fields
from importlib.metadata import version
from typing import Any, Callable, Sequence

import optuna
import yaml

from nas import names, pareto
from nas.errors import NasError
from nas.record import FINISHED, State, TrialRecord, accuracy, reason_kinds, trial_row
from nas.space import Choice, FloatRange, IntRange, Space
from nas.spacefile import parse_space
from nas.storage import StudyError, fail_dead_workers_trials, open_storage, sqlite_path, this_worker

# Study user attrs: "data" (the split) and "objectives" are what every nas study has recorded; "record" holds
# the whole StudyRecord of a study made since; "export" what `nas best --export` wrote.
DATA_ATTR, OBJECTIVES_ATTR, RECORD_ATTR, EXPORT_ATTR = "data", "objectives", "record", "export"


class TrialFailed(Exception):
    """A trial met what a trial may meet (out of memory, `objective.out_of_memory`): it fails alone, the search
    goes on. Anything else a trial raises stops the search (bad input, a bug in nas)."""


CAUGHT = (TrialFailed,)  # what `run_trials` lets fail one trial


def quiet_optuna() -> None:
    """The CLI shows its own progress and each trial's fate: Optuna's own log says only errors."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


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
    "pareto": lambda epochs: optuna.pruners.NopPruner(),  # the objective applies `pareto.prune_reason` itself
    "none": lambda epochs: optuna.pruners.NopPruner(),
}
names.check_registry(SAMPLERS, names.SAMPLERS, "sampler")
names.check_registry(PRUNERS, names.PRUNERS, "pruner")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler called `name` (see `SAMPLERS`), seeded."""
    return names.lookup(SAMPLERS, name, "sampler")(seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner called `name` (see `PRUNERS`) for trials of `epochs` epochs."""
    return names.lookup(PRUNERS, name, "pruner")(epochs)


@dataclass(frozen=True)
class StudyRecord:
    """What a study was made with, stored on it once. A study made before nas recorded the space, the
    fingerprint, the epochs and the version has None there (its split and objectives it always had)."""

    dataset: str  # as given: a dataset's name, or the path of its file or folder
    val_fraction: float
    split_seed: int
    subset: int | None
    objectives: tuple[str, ...] = ("accuracy",)
    space: str | None = None  # the resolved space, as YAML text
    fingerprint: str | None = None  # of the dataset's contents (`data.fingerprint`)
    epochs: int | None = None  # per trial, as the first run asked
    built_in: bool = False  # the space was nas's own for the dataset (`autospace`), not a file
    nas_version: str | None = None

    @property
    def split(self) -> dict[str, Any]:
        """The split as every nas study records it (its "data" attr): dataset, val_fraction, split_seed, subset."""
        return {"dataset": self.dataset, "val_fraction": self.val_fraction, "split_seed": self.split_seed,
                "subset": self.subset}


def new_record(dataset: str, val_fraction: float, split_seed: int, subset: int | None, objectives: Sequence[str],
               space: str, fingerprint: str, epochs: int, built_in: bool) -> StudyRecord:
    """The record of a study about to be made by this nas."""
    return StudyRecord(dataset, val_fraction, split_seed, subset, tuple(objectives), space, fingerprint, epochs,
                       built_in, version("nas"))


def read_record(study: optuna.Study | optuna.study.StudySummary) -> StudyRecord | None:
    """The record of `study`, or None if `nas search` did not make it (or had not recorded it yet)."""
    attrs = study.user_attrs
    if DATA_ATTR not in attrs:
        return None
    known = {f.name for f in fields(StudyRecord)}
    full = {k: v for k, v in attrs.get(RECORD_ATTR, {}).items() if k in known}
    split = {k: attrs[DATA_ATTR][k] for k in ("dataset", "val_fraction", "split_seed", "subset")}
    objectives = tuple(full.pop("objectives", None) or attrs.get(OBJECTIVES_ATTR, ["accuracy"]))
    return StudyRecord(**(full | split), objectives=objectives)


def recorded(storage: str, name: str) -> StudyRecord | None:
    """The record of study `name` in `storage`, if there is such a study (a SQLite file not made yet has none)."""
    if storage.startswith("sqlite") and not sqlite_path(storage).is_file():
        return None
    rdb = open_storage(storage)
    if name not in optuna.get_all_study_names(rdb):
        return None
    return read_record(optuna.load_study(study_name=name, storage=rdb))


def recorded_space(record: StudyRecord, study_name: str) -> Space:
    """The space `record` holds, parsed as it was searched. Its baselines were queued when the study was made
    (and may name files of another machine), so they are left out."""
    raw = yaml.safe_load(record.space)
    return parse_space({k: v for k, v in raw.items() if k != "baselines"}, label=f"the space recorded in study "
                                                                                f"{study_name!r}")


def _write_record(study: optuna.Study, record: StudyRecord) -> None:
    """Store `record` on a new study; "data" last, as that is what marks a study as made (`read_record`)."""
    if len(record.objectives) > 1:  # a single-objective study records what it always did
        study.set_user_attr(OBJECTIVES_ATTR, list(record.objectives))
    study.set_user_attr(RECORD_ATTR, asdict(record) | {"objectives": list(record.objectives)})
    study.set_user_attr(DATA_ATTR, record.split)


def record_export(study: optuna.Study, metrics: dict[str, Any]) -> None:
    """Record on the study what `nas best --export` wrote, for `nas report`."""
    study.set_user_attr(EXPORT_ATTR, metrics)


def recorded_export(study: optuna.Study) -> dict[str, Any] | None:
    """What `nas best --export` last recorded on the study (`record_export`), or None."""
    return study.user_attrs.get(EXPORT_ATTR)


def objectives_of(study: optuna.Study) -> tuple[str, ...]:
    """The objectives `study` was searched for: accuracy first."""
    record = read_record(study)
    return record.objectives if record else tuple(study.user_attrs.get(OBJECTIVES_ATTR, ["accuracy"]))


def open_study(
    name: str,
    storage: str,
    sampler: str,
    pruner: str,
    seed: int,
    epochs: int,
    record: StudyRecord | None = None,
    space: Space | None = None,
    baselines: Sequence[dict[str, Any]] = (),
    heartbeat: int = 10,
    worker: int = 0,
) -> optuna.Study:
    """Create the study with its `record`, or resume it; a new one gets the `baselines` (trial parameters)
    enqueued first.

    A resumed study must have been searched on the same data, for the same objectives (`record`), and the
    `space` must not change the choices of a parameter its trials already have. Trials of dead workers of
    this machine are failed and queued again before anything runs. Without a `record` the study must
    exist (a worker process joining it). `worker` tells apart processes that open the study together, so
    that their samplers draw differently. Accuracy is maximised, any other objective minimised.
    """
    rdb = open_storage(storage, heartbeat, create=record is not None)
    kwargs = {"study_name": name, "storage": rdb, "pruner": make_pruner(pruner, epochs)}
    if name in optuna.get_all_study_names(rdb):  # resume: check before writing anything
        study = optuna.load_study(**kwargs)
        if record is not None:
            _check_resumable(study, storage, record, space)
    elif record is None:
        raise StudyError(f"{storage} holds no study named {name!r}.")
    else:  # load_if_exists: workers started together may race to create it
        study = optuna.create_study(directions=["maximize"] + ["minimize"] * (len(record.objectives) - 1),
                                    load_if_exists=True, **kwargs)
    if record is not None and read_record(study) is None:
        for params in baselines:  # first: a creation cut short by a signal is finished by the next run
            study.enqueue_trial(params, skip_if_exists=True)
        _write_record(study, record)
    # A resumed run must not replay the first run's random draws: seed by how far the study got (counted
    # before dead workers' trials are queued again, as it always was).
    study.sampler = make_sampler(sampler, seed + len(study.trials) + 10_007 * worker)
    fail_dead_workers_trials(study)
    return study


def _check_resumable(study: optuna.Study, storage: str, record: StudyRecord, space: Space | None) -> None:
    known = read_record(study)
    if known is None:
        if any(t.state != State.WAITING for t in study.get_trials(deepcopy=False)):
            raise StudyError(_not_ours(study, storage, "nas search continues only studies it started; pass a new --study name"))
        return  # created by a run stopped before it recorded its data: only baselines wait in it
    if known.objectives != record.objectives:
        was = ",".join(known.objectives)
        raise StudyError(f"study {study.study_name!r} in {storage} was searched for {was}, not "
                         f"{','.join(record.objectives)}: resume it with `nas search --study {study.study_name} "
                         f"--objectives {was}` (then `nas best --trial N --export DIR` exports a net of its "
                         "front), or pass a new --study name.")
    # Where both have a fingerprint, the contents decide (`check_fingerprint`), not where the data was read from.
    by_name = ("dataset",) if not (known.fingerprint and record.fingerprint) else ()
    for key in (*by_name, "subset"):
        if getattr(known, key) != getattr(record, key):
            raise StudyError(
                f"study {study.study_name!r} in {storage} was searched with {key} {getattr(known, key)!r}, not "
                f"{getattr(record, key)!r}: resume it with the same --{key}, or pass a new --study name."
            )
    check_fingerprint(study, known, record.fingerprint, storage, record.dataset)
    if space is not None:
        _check_space(study, storage, space)


def check_fingerprint(study: optuna.Study, known: StudyRecord, fingerprint: str | None, storage: str,
                      dataset: str) -> None:
    """Refuse `dataset` if its `fingerprint` differs from the one the study recorded (none recorded: any data),
    wherever each was read from."""
    if known.fingerprint and fingerprint and known.fingerprint != fingerprint:
        raise StudyError(
            f"study {study.study_name!r} in {storage} was searched with dataset {known.dataset!r} (content "
            f"fingerprint {known.fingerprint}), but the dataset read now, {dataset!r}, has fingerprint {fingerprint}: "
            "its images or labels changed. Use the data the study was searched on, or pass a new --study name."
        )


def _check_space(study: optuna.Study, storage: str, space: Space) -> None:
    """Refuse a space that changes the choices of a parameter the study's trials already have."""
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
    if nas_only and (read_record(study) is None or len(study.directions) != len(objectives_of(study))):
        raise StudyError(_not_ours(study, storage, "nas best and nas report read only studies nas search wrote; "
                                                   "pass the --study of one"))
    return study


def newest_study(storage: str | optuna.storages.BaseStorage, nas_only: bool = True) -> tuple[str, str | None]:
    """The name of the study last made in `storage` (of those `nas search` made, with `nas_only`), and a note
    naming the others when there are several, for commands given no --study (as after `nas run` beside
    an earlier search)."""
    rdb = open_storage(storage) if isinstance(storage, str) else storage
    summaries = optuna.get_all_study_summaries(rdb, include_best_trial=False)
    ours = [s for s in summaries if read_record(s) is not None] if nas_only else summaries
    if not ours:
        return summaries[-1].study_name if summaries else "", None
    newest = max(ours, key=lambda s: s._study_id)  # ids grow with creation
    others = [s.study_name for s in summaries if s is not newest]
    note = (f"{len(summaries)} studies in this storage; showing the newest, {newest.study_name!r} (--study NAME for "
            f"another: {', '.join(map(repr, others))})") if others else None
    return newest.study_name, note


def list_studies(storage: str) -> list[dict[str, Any]]:
    """Every study in `storage` with its trial count, best value (or with several objectives, the size of its
    front) and start time."""
    rows, rdb = [], open_storage(storage)
    for s in optuna.get_all_study_summaries(rdb, include_best_trial=True):
        single = len(s.directions) == 1
        rows.append({
            "name": s.study_name,
            "trials": s.n_trials,
            "best": s.best_trial.value if single and s.best_trial else None,  # several objectives: no one best
            "front": None if single else len(optuna.load_study(study_name=s.study_name, storage=rdb).best_trials),
            "started": s.datetime_start.isoformat(" ", "seconds") if s.datetime_start else None,
        })
    return rows


MAX_REJECTED_IN_A_ROW = 50  # nets refused before training, one after another, before a run gives up
ENOUGH_TO_JUDGE = 10  # ... or this many, when time runs out and no net of the run was trained


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
    raises `TrialFailed` fails alone; anything else it raises stops the run.

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
                if n_rejected >= ENOUGH_TO_JUDGE and all(r["rejected"] for r in rows):  # on a busy machine, time may
                    raise Infeasible(_infeasible_message(rows[-n_rejected:], redraw, built_in))  # end the 50 first
                return  # out of time while drawing: a few rejected nets say nothing of the space


def _my_last_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    me = this_worker()
    return next((t for t in reversed(study.get_trials(deepcopy=False)) if TrialRecord(t).worker == me), None)


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
    kinds = reason_kinds(rows)  # "invalid" or "too large"
    return (f"the last {len(rows)} nets drawn were all rejected before training ("
            + ", ".join(f"{n} {kind}" for kind, n in kinds.items()) + f"; the last: {rows[-1]['reason'].rstrip('.')}): this space "
            "has (almost) no nets that fit the input and the constraints. Loosen max_params / max_mflops, use padding "
            "same or fewer blocks, or narrow the widths; `nas validate --space FILE` shows sample nets and their sizes.")


def top_trials(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The k completed trials with the highest validation accuracy, best first; while none has completed,
    those stopped at the time limit after an epoch (a --timeout or --budget shorter than one trial)."""
    trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if TrialRecord(t).has("spec")]
    done = ([t for t in trials if t.state == State.COMPLETE] or
            [t for t in trials if TrialRecord(t).stopped_at_time_limit()])
    if not done:
        raise StudyError(
            f"study {study.study_name!r} has no completed trial yet ({len(study.trials)} in all): "
            "run `nas search` on it until one completes."
        )
    return sorted(done, key=accuracy, reverse=True)[:k]


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The completed trials that no other beats in every objective (feasible ones only), most accurate first
    (`pareto.front`)."""
    top_trials(study, 1)  # the error when nothing has completed yet
    return pareto.front(study.get_trials(deepcopy=False))


def trained_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial `number` of the study, if it trained a network that can be built again (completed or pruned)."""
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise StudyError(f"study {study.study_name!r} has no trial #{number}; its trials are #0 to #{len(trials) - 1} "
                         "(`nas best --top N` lists the best).")
    t = trials[number]
    r = TrialRecord(t)
    if t.state not in FINISHED or r.rejected or not r.has("spec"):
        why = "was rejected before training" if r.rejected else f"is {t.state.name.lower()}"
        raise StudyError(f"trial #{number} of study {study.study_name!r} {why}, so there is no trained network to "
                         "export; pick a completed (or pruned) trial.")
    return t
