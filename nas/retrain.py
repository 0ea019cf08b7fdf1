"""Retraining: a study's best trials trained again and scored on the test set (`nas best`), a fixed network
trained (`nas train`), and what comes of it written as an export (see `export`).

Listing a study's best trials needs Optuna only: torch and the data are imported inside the functions that
train, so `nas best` without --export or --retrain-epochs starts in a fraction of torch's import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna

from nas.export import ExportError, write_export
from nas.files import check_export_target, check_not_input
from nas.space import Space, sample
from nas.spacefile import load_space
from nas.spec import ArchSpec
from nas.record import TrialRecord, accuracy, count_trials, trial_row
from nas.storage import StudyError, storage_failure, storage_inputs
from nas.study import (check_fingerprint, front, load_study, objectives_of, quiet_optuna, read_record, record_export,
                       top_trials, trained_trial)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nas.data import Dataset, Prepared, Split
    from nas.train import EpochRecord


@dataclass(frozen=True)
class BestJob:
    """What `nas best` was asked: which study and trials, and whether to retrain them, where, and export one."""

    study: str | None  # None: the storage's newest
    storage: str
    top: int | None = None  # trials shown (default 5); with retrain_epochs, how many are retrained (default 1)
    export: Path | None = None
    retrain_epochs: int | None = None  # None: the best trial is trained again as in the search (for an export)
    force: bool = False
    dataset: str | None = None  # None: the study's own
    data_dir: str | Path | None = None
    device: str = "auto"
    trial: int | None = None  # only this trial, by number


@dataclass(frozen=True)
class TrainJob:
    """What `nas train` was asked: a space file of constants, trained on the whole training set."""

    space: Path
    epochs: int | None = None  # None: the space's
    dataset: str | None = None  # None: the space's
    data_dir: str | Path | None = None
    device: str = "auto"
    seed: int = 0
    export: Path | None = None
    force: bool = False


@dataclass
class Trained:
    """A trial's network trained again and scored on the test set, ready to write."""

    model: nn.Module
    spec: ArchSpec
    metrics: dict[str, Any]
    test: Split


@dataclass(frozen=True)
class TrainingStarted:
    """Event: a network starts training (`trial` is None for `nas train`'s fixed one)."""

    trial: int | None
    index: int
    count: int
    epochs: int
    arch: str
    dataset: str
    n_train: int
    n_held_out: int
    device: str


@dataclass
class Best:
    """What `nas best` shows: the top trials, the retrained ones ranked on test, and the export written."""

    study: str
    n_trials: int
    rows: list[dict[str, Any]]
    retrained: list[dict[str, Any]] = field(default_factory=list)  # best test accuracy first
    reproduced: dict[str, Any] | None = None  # the best trial trained again as in the search
    export: dict[str, Any] | None = None
    objectives: tuple[str, ...] = ("accuracy",)  # several: `rows` is the Pareto front, most accurate first
    tally: dict[str, int] = field(default_factory=dict)  # trained and rejected apart (`study.count_trials`)


def best(job: BestJob, on_event: Callable[[TrainingStarted | EpochRecord], None] | None = None) -> Best:
    """The study's top trials (`job.top`, default 5), or only trial number `job.trial`; with `retrain_epochs`,
    the top K (default 1) retrained on train+val and ranked by test accuracy; with `export`, the first of
    them (or the best trial trained again as in the search) written there. The export target, the
    device and the dataset are checked before any training, which a signal stops (`signals.Interrupted`). A study
    of several objectives has a Pareto front instead: its nets are listed (the first `top`), one exported by `trial`."""
    quiet_optuna()
    study = load_study(job.study, job.storage)
    objectives = objectives_of(study)
    if job.trial is not None:
        trials = [trained_trial(study, job.trial)]
    else:
        trials = front(study)[:job.top] if len(objectives) > 1 else top_trials(study, job.top or 5)
    result = Best(study.study_name, len(study.trials), [trial_row(t) for t in trials], objectives=objectives,
                  tally=count_trials(study.trials))
    if job.export is None and not job.retrain_epochs:
        return result
    if job.trial is None and len(objectives) > 1:
        raise StudyError(f"study {study.study_name!r} was searched for {','.join(objectives)}, so it has a front of "
                         f"nets rather than one best: pick one with --trial N (its front: "
                         f"{', '.join(f'#{t.number}' for t in trials)}; `nas best` lists them).")
    job = replace(job, dataset=job.dataset or read_record(study).dataset)
    if job.export is not None:
        check_export_target(job.export, job.force)
        check_not_input(job.export, "--export", command_inputs(job.storage, None, job.dataset, job.data_dir))
    candidates = trials[: job.top or 1] if job.retrain_epochs else trials[:1]
    _retrain_best(result, study, candidates, job, on_event)
    return result


def _retrain_best(result: Best, study: optuna.Study, candidates: list[optuna.trial.FrozenTrial], job: BestJob,
                  on_event: Callable[[Any], None] | None) -> None:
    """`best`'s training part: retrain `candidates`, rank them on test into `result`, export the first."""
    from nas.data import load_dataset
    from nas.signals import signals_interrupt
    from nas.train import pick_device

    dev = pick_device(job.device)
    with signals_interrupt():
        ds = load_dataset(job.dataset, job.data_dir)
        check_fingerprint(study, read_record(study), ds.fingerprint(), job.storage, ds.name)
        trained = [retrain_trial(t, study, ds, dev, job.retrain_epochs, i, len(candidates), _stoppable(on_event))
                   for i, t in enumerate(candidates, 1)]
        trained.sort(key=lambda m: m.metrics["test_accuracy"], reverse=True)
        if job.retrain_epochs:
            result.retrained = retrained_rows(trained)
        else:
            result.reproduced = trained[0].metrics
        if job.export is not None:
            result.export = export_trained(trained[0], job.export, study, job.force)


def command_inputs(storage: str | None, space: Space | None, dataset: str | None,
                   data_dir: str | Path | None) -> list[tuple[str, Path]]:
    """What a command that exports reads, named for `files.check_not_input`: the study's storage, the space
    file and the baseline files it names, the dataset's files."""
    from nas.data import dataset_inputs

    found = storage_inputs(storage) if storage else []
    if space is not None and space.path is not None:
        found += [("the --space file", space.path)]
        found += [("a baseline file named by the space", b) for b in space.baselines if isinstance(b, Path)]
    return found + (dataset_inputs(dataset, data_dir) if dataset else [])


def _stoppable(on_event: Callable[[Any], None] | None) -> Callable[[Any], None]:
    """`on_event`, after raising a signal that came inside a storage transaction (see `signals.checkpoint`)."""
    from nas.signals import checkpoint

    def event(e: Any) -> None:
        checkpoint()
        if on_event:
            on_event(e)
    return event


def retrained_rows(trained: list[Trained]) -> list[dict[str, Any]]:
    """What `nas best` shows of retrained nets: their trial, accuracies, epochs and size."""
    keys = ("trial", "val_accuracy", "test_accuracy", "epochs", "retrained_on_train_and_val", "n_params", "flops", "arch")
    return [{k: m.metrics[k] for k in keys} | {"gap": m.metrics["test_accuracy"] - m.metrics["val_accuracy"]}
            for m in trained]


def train_fixed(job: TrainJob, on_event: Callable[[TrainingStarted | EpochRecord], None] | None = None) -> dict[str, Any]:
    """Train the fixed architecture of a space file on the whole training set and score it on the test
    set (`nas train`); with `export`, write it there. Returns the metrics, with the per-epoch history.
    SIGINT, SIGTERM and SIGHUP stop it with `Interrupted`, nothing left behind."""
    from nas.signals import signals_interrupt

    with signals_interrupt():
        return _train_fixed(job, _stoppable(on_event))


def _train_fixed(job: TrainJob, on_event: Callable[[TrainingStarted | EpochRecord], None]) -> dict[str, Any]:
    from nas.data import load_dataset, prepare_final_data
    from nas.model import assess
    from nas.train import pick_device, train_spec

    space = load_space(job.space)
    spec = sample(space)
    dev = pick_device(job.device)
    dataset = job.dataset or space.dataset
    if job.export is not None:  # before the training, not after it
        check_export_target(job.export, job.force)
        check_not_input(job.export, "--export", command_inputs(None, space, dataset, job.data_dir))
    ds = load_dataset(dataset, job.data_dir)
    _, too_large, _ = assess(spec, ds.input_shape, ds.n_classes, dev, space.max_params, space.max_mflops)
    if too_large:
        raise ExportError(f"{job.space}: the network is {too_large}; make it smaller (or raise the constraint).")
    data = prepare_final_data(ds, dev)
    epochs = job.epochs or space.epochs
    on_event(TrainingStarted(None, 1, 1, epochs, spec.describe(), ds.name, len(data.train), len(data.test), str(dev)))
    model, history = train_spec(spec, data, epochs, job.seed, dev, on_event, on_batch=on_event)
    metrics = {"epochs": epochs, "seed": job.seed} | describe_model(model, spec, ds) | score_on_test(model, data.test, ds.classes)
    metrics["seconds_per_epoch"] = sum(r.seconds for r in history) / len(history)
    if job.export is not None:
        metrics = write_export(job.export, model, spec, metrics | {"study": space.name}, data.test.x, job.force)
    return metrics | {"history": [r.to_dict() for r in history]}


def retrain_trial(
    trial: optuna.trial.FrozenTrial,
    study: optuna.Study,
    ds: Dataset,
    device: torch.device,
    retrain_epochs: int | None = None,
    index: int = 1,
    count: int = 1,
    on_event: Callable[[TrainingStarted | EpochRecord], None] | None = None,
    spec: ArchSpec | None = None,
    deadline: float | None = None,
    prepared: Prepared | None = None,
    images: int | None = None,
) -> Trained:
    """Train `trial`'s network again and score it on the test set. With `retrain_epochs`, train on train+val
    for that many epochs, as `spec` if given (`nas run` may widen the trial's net), cut short to end by
    `deadline` (`train_spec`; `images`: one epoch on that many images); without, repeat the trial's own
    training (same split, seed and epochs) so the model is the one the search scored. `prepared` is the
    data for `retrain_epochs` already on `device` (`nas run` has it there to plan the retrain)."""
    from nas.data import prepare_final_data, prepare_search_data, test_split
    from nas.train import train_spec

    recorded, split = TrialRecord(trial), read_record(study)
    searched, seed = ArchSpec.from_dict(recorded.spec), recorded.seed
    spec = spec if spec is not None and retrain_epochs else searched
    if retrain_epochs:
        epochs, data = retrain_epochs, prepared or prepare_final_data(ds, device)
    else:
        epochs = recorded.epochs
        data = prepare_search_data(ds, split.val_fraction, split.split_seed, device, split.subset)
    if on_event:
        on_event(TrainingStarted(trial.number, index, count, epochs, spec.describe(), ds.name, len(data.train),
                                 len(data.held_out), str(device)))
    model, history = train_spec(spec, data, epochs, seed, device, on_event, deadline, on_batch=on_event,
                                images=images if retrain_epochs else None)
    test = data.test if retrain_epochs else test_split(ds).to(device)
    reproduced = {} if retrain_epochs else {"reproduced_val_accuracy": history[-1].val_acc}  # should equal the trial's
    metrics = reproduced | {
        "study": study.study_name,
        "trial": trial.number,
        "val_accuracy": accuracy(trial),
        "retrained_on_train_and_val": bool(retrain_epochs),
        "epochs": len(history),
        "seed": seed,
    } | _cut_epoch(history, len(data.train)) | describe_model(model, spec, ds) | score_on_test(model, test, ds.classes)
    if recorded.has("latency_ms"):  # what the search measured, beside what the export measures again
        metrics["search_latency_ms"] = recorded.latency_ms
    if spec != searched:
        metrics["searched_arch"] = searched.describe()
    return Trained(model, spec, metrics, test)


def _cut_epoch(history: list[EpochRecord], n_train: int) -> dict[str, int]:
    """A last epoch cut short to keep a deadline: the images it trained on, of how many (else nothing)."""
    if history and 0 < history[-1].images < n_train:
        return {"last_epoch_images": history[-1].images, "train_images": n_train}
    return {}


def export_trained(trained: Trained, out: Path, study: optuna.Study | None = None, force: bool = False) -> dict[str, Any]:
    """Write `trained` to `out`; with `study`, also record the export's metrics in it for `nas report`.

    The files are what the user asked for: a study that cannot record them (a read-only storage) only
    sets `recorded_in_study` to False in the returned metrics."""
    metrics = write_export(out, trained.model, trained.spec, trained.metrics, trained.test.x, force)
    if study is not None:
        try:
            record_export(study, metrics | {"path": str(out.resolve())})
        except Exception as e:
            if storage_failure(e) is None:
                raise
            return metrics | {"recorded_in_study": False}
    return metrics


def describe_model(model: nn.Module, spec: ArchSpec, ds: Dataset) -> dict[str, Any]:
    """What metrics.json says about the model itself (shape, classes, size)."""
    from nas.model import model_info

    info = model_info(model, ds.input_shape)
    return {
        "dataset": ds.name,
        "arch": spec.describe(),
        "input_shape": list(ds.input_shape),
        "classes": list(ds.classes),
        "n_params": info.n_params,
        "flops": info.flops,
    }


def score_on_test(model: nn.Module, test: Split, classes: tuple[str, ...]) -> dict:
    """Accuracy, per-class accuracy (by class name) and the confusion matrix on the test set."""
    import torch

    from nas.train import predict

    pred = predict(model, test.x)
    n = len(classes)
    confusion = torch.bincount(test.y * n + pred, minlength=n * n).reshape(n, n)  # rows: true, columns: predicted
    return {
        "test_accuracy": (pred == test.y).float().mean().item(),
        "per_class_accuracy": dict(zip(classes, (confusion.diag() / confusion.sum(1).clamp_min(1)).tolist())),
        "confusion": confusion.tolist(),
    }
