"""`nas run`: from a dataset to an exported model and its report within a wall-clock budget.

The budget is split between the search and the final retrain of its best net on the whole training
set (train + validation). The retrain's epochs are worked out from that net's pace measured here,
on a few batches of the whole set with all of this machine's threads (a trial's own pace is not it:
it ran on a subset, maybe beside other workers), so that it ends within the budget; its learning
rate schedule spans those epochs. A net from the built-in space is widened for the retrain as far as
its epochs allow (`plan_retrain`).

A budget given is a budget kept: the search (reading the data and the baselines included) stops at its
share, a trial still training then is cut at the limit (while none has completed, one may go on for
TRIAL_GRACE_SHARE of the budget), and the retrain ends by the budget less what the export and report
need, its epochs cut after the first if it runs slower than measured; the outcome says what was cut.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from nas import data, names, record, report as reporting, retrain, search as searching, study as studies
from nas.errors import NasError
from nas.files import check_export_target, check_file_target, check_not_input
from nas.signals import Interrupted, checkpoint, signals_interrupt
from nas.space import Space
from nas.spacefile import load_space
from nas.spec import ArchSpec
from nas.model import assess
from nas.train import epoch_pace, pick_device

SEARCH_SHARE = 0.5  # of the budget; the rest retrains the best net, exports it and writes the report: the 24-min
# search of docs/benchmarks.md found its winner at 16 min, and val 0.885 within 2 (the rest is within its noise)
WIDTHS = (2.0, 1.5)  # the final net's channels over its trial's, tried before 1 (built-in space only)
MIN_WIDE_EPOCHS = 15  # a wider final net only when it still trains this many epochs
RETRAIN_AUGMENT = "crop"  # for a final net whose trial had none: its many epochs overfit without it
END_MARGIN = 0.95  # of the time left after timing its pace that the retrain plans to use (it looks again after
# its first epoch and cuts the rest if slow)
FINISH_RESERVE = 8.0  # seconds (at most FINISH_SHARE of the budget) kept for scoring the test set, the export and
# the report: with 5, `--budget 2m` beside a 2-core load ran 13% over (docs/benchmarks.md); with 8, 3.5%
FINISH_SHARE = 0.3
TRIAL_GRACE_SHARE = 0.15  # of the budget: while no trial has completed, one training at the search's end may
# finish in it (a first trial pays for warming up; one cut short leaves nothing to retrain)
MAX_RETRAIN_EPOCHS = 200
FEW_EPOCHS = 10  # under this many whole epochs, a retrain trains on part of the set to use the time it has
SHORT_RETRAIN = 300  # seconds: a retrain shorter than this times its pace on fewer images
MAX_TRIALS = 1_000_000  # the search is bounded by its time, not by a count


@dataclass(frozen=True)
class RunJob:
    """What `nas run` was asked: a search job (its trials and timeout are set here) and the rest."""

    search: searching.SearchJob
    budget: float  # seconds, wall clock, for everything
    export: Path | None = None
    force: bool = False
    report: Path | None = None


class RunInterrupted(Interrupted):
    """`nas run` stopped by a signal after its search; `exported` is the export folder written in full before
    it came (None if none was), so that the user is told what is done and what is left."""

    def __init__(self, signum: int, n_done: int, study: str, exported: Path | None):
        super().__init__(signum, n_done)
        self.study, self.exported = study, exported


@dataclass(frozen=True)
class Plan:
    """The final retrain: the net (maybe wider than its trial's), its epochs and their measured pace."""

    spec: ArchSpec
    width: float
    epochs: int
    seconds_per_epoch: float
    augment: str | None = None  # the augmentation added to the trial's recipe, if any
    n_images: int | None = None  # fewer training images than the whole set: one epoch of all would not fit
    score_seconds: float = 0.0  # to score the test set once, as the retrain does after training


@dataclass(frozen=True)
class RunOutcome:
    """What `nas run` did: the search, the retrained and exported best, and the report."""

    search: searching.Outcome
    best: retrain.Best
    plan: Plan
    report: reporting.Summary | None
    seconds: float
    cut: str | None = None  # what was cut to keep the budget


def run(job: RunJob, on_event: Callable[[Any], None]) -> RunOutcome:
    """Search for SEARCH_SHARE of the budget, retrain the best net in the time left, export it, write the report.
    Every target is checked before the search starts. A signal after the search raises `RunInterrupted`."""
    start = job.search.started or time.monotonic()  # the command's start: importing torch counts too
    space = _check_targets(job)
    # One best net: accuracy alone, even where a study joined without --space records several objectives.
    outcome = searching.run(replace(job.search, trials=MAX_TRIALS, timeout=SEARCH_SHARE * job.budget, started=start,
                                    trial_grace=TRIAL_GRACE_SHARE * job.budget,
                                    objectives=job.search.objectives or ("accuracy",)), on_event, space)
    if outcome.gave_up:  # the space gives no net that can be trained: more time would not help
        raise NasError(outcome.gave_up)
    if outcome.nothing_trained and not outcome.out_of_time:  # the budget is not what stopped them
        raise NasError(f"none of the {names.counted(outcome.n_trained, 'trial')} of study {outcome.study!r} trained (the last: "
                       f"{outcome.rows[-1]['reason']}). {outcome.advice}")
    if not outcome.best:
        raise NasError(f"no trial of study {outcome.study!r} completed within the search's "
                       f"{_duration(SEARCH_SHARE * job.budget)} (half the --budget); give a larger --budget.")
    exported = None
    with signals_interrupt():  # a signal in the retrain ends it as one in the search does
        try:
            best, plan, cut = _retrain(job, outcome, start + job.budget - min(FINISH_RESERVE, FINISH_SHARE * job.budget),
                                       lambda e: (checkpoint(), on_event(e)))
            exported = job.export
            checkpoint()  # one that came while the export was recorded in the study stops here
            summary = (reporting.write_report(outcome.study, job.search.storage, job.report, "--report")
                       if job.report else None)
        except Interrupted as e:
            raise RunInterrupted(e.signum, outcome.n_trained, outcome.study, exported) from None
    return RunOutcome(outcome, best, plan, summary, time.monotonic() - start, cut)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"


def _check_targets(job: RunJob) -> Space | None:
    """Fail before the search if the space searches for a front, or if the export or the report cannot be
    written where asked: not writable, or over what the run reads (the storage, the space, the dataset).
    Returns the space file read (None: the built-in space), for the search to use as it is."""
    space = load_space(job.search.space) if job.search.space is not None else None
    if space is not None and len(space.objectives) > 1:
        where = job.search.space
        raise NasError(f"{where} searches for {','.join(space.objectives)}, which gives a front of nets, while nas run "
                       f"retrains and exports one best: run `nas search --space {where}`, then `nas best --trial N "
                       "--export DIR` for the point of the front you want.")
    dataset = job.search.dataset or (space.dataset if space is not None else names.DEFAULT_DATASET)
    inputs = retrain.command_inputs(job.search.storage, space, dataset, job.search.data_dir)
    if job.export is not None:
        check_export_target(job.export, job.force)
        check_not_input(job.export, "--export", inputs)
    if job.report is not None:
        export = [("the --export folder", job.export)] if job.export is not None else []
        check_file_target(job.report, "the report")
        check_not_input(job.report, "--report", inputs + export)
    return space


def _retrain(job: RunJob, outcome: searching.Outcome, deadline: float,
             on_event: Callable[[Any], None]) -> tuple[retrain.Best, Plan, str | None]:
    """The search's best net, planned to end by `deadline` (monotonic), trained on the whole training set and
    exported; and what was cut, if it ran slower than planned (its epochs are cut to end in time). The study,
    the space and the data are the search's own: the training set is copied to the device once."""
    study, ds = outcome.opened, outcome.dataset
    trial = studies.top_trials(study, 1)[0]
    device = pick_device(job.search.device)
    final = data.prepare_final_data(ds, device)
    plan = plan_retrain(ArchSpec.from_dict(record.TrialRecord(trial).spec), final, device,
                        END_MARGIN * (deadline - time.monotonic()), built_in=outcome.built_in)
    # A lone epoch is resized halfway to the time left (it may grow to all the images, or shrink); several
    # run on a fixed part, their count cut after the first if slow.
    lone = plan.epochs == 1
    # Training ends in time to score the test set once more after it (for the export's metrics), as planned.
    trained = retrain.retrain_trial(trial, study, ds, device, plan.epochs, on_event=on_event, spec=plan.spec,
                                    deadline=deadline - plan.score_seconds,
                                    prepared=_part(final, plan.n_images) if plan.n_images and not lone else final,
                                    images=(plan.n_images or len(final.train)) if lone else None)
    if not trained.metrics["epochs"]:  # an untrained net is no answer: say so rather than export it
        raise NasError(f"the --budget left no time to retrain the best net (trial #{trial.number}, val accuracy "
                       f"{record.accuracy(trial):.4f}) after the search: give a larger --budget, or export it as it was "
                       "searched with `" + shlex.join(["nas", "best", "--storage", job.search.storage, "--study",
                                                      study.study_name, "--trial", str(trial.number)]) + " --export DIR`.")
    best = retrain.Best(study.study_name, len(study.trials), [record.trial_row(trial)],
                        retrained=retrain.retrained_rows([trained]), tally=record.count_trials(study.trials))
    if job.export is not None:
        best.export = retrain.export_trained(trained, job.export, study, job.force)
    cut = cut_message(trained.metrics["epochs"], plan.epochs, trained.metrics.get("last_epoch_images"),
                      trained.metrics.get("train_images"))
    ran = trained.metrics.get("last_epoch_images", len(final.train))
    if lone:  # None when it grew to all of them: nothing was cut
        cut = (f"the retrain's one epoch saw {ran:,} of the {len(final.train):,} training images, to fit the --budget "
               f"({plan.n_images or len(final.train):,} planned, then resized halfway to its pace)"
               ) if ran < len(final.train) else None
    elif plan.n_images:
        cut = (f"the retrain saw {plan.n_images:,} of the {len(final.train):,} training images in each of its "
               f"{plan.epochs} epoch{'s' * (plan.epochs > 1)}, to fit the --budget" + (f"; {cut}" if cut else ""))
    return best, plan, cut


def _part(final: data.Prepared, n_images: int) -> data.Prepared:
    """A seeded random `n_images` of `final`'s training images, cut where they already are (on the device), with
    their own normalisation; the test set stays whole."""
    keep = torch.randperm(len(final.train), generator=torch.Generator().manual_seed(0))[:n_images].to(final.train.x.device)
    train = data.Split(final.train.x[keep], final.train.y[keep])
    mean, std = data.channel_stats(train.x)
    return replace(final, train=train, mean=mean, std=std)


def cut_message(ran: int, planned: int, last_images: int | None = None, n_images: int | None = None) -> str | None:
    """What the summary says of a retrain that ran `ran` of its `planned` epochs, the last maybe on only
    `last_images` of its `n_images` (None: all of them, as planned)."""
    cut_last = last_images is not None and n_images is not None and last_images < n_images
    if ran >= planned and not cut_last:
        return None
    whole = ran - cut_last
    ran_text = (f"{whole} of the {planned} epochs planned and a last one on {last_images:,} of {n_images:,} images"
                if cut_last else f"{ran} of the {planned} epochs planned")
    return (f"the retrain ran {ran_text}: it went slower than measured, so it was cut to keep the --budget"
            + (" (the learning rate schedule laid out again over them)" if ran > 1 else ""))


def plan_retrain(spec: ArchSpec, final: data.Prepared, device: torch.device, seconds: float,
                 built_in: bool = True) -> Plan:
    """How many epochs of `final` the searched net trains within `seconds`, at its pace measured here.

    From the built-in space (whose FLOP cap keeps trials quick, not final nets small) the net is widened:
    the first of WIDTHS that still trains MIN_WIDE_EPOCHS epochs, with RETRAIN_AUGMENT when its trial had
    no augmentation; measurements chose both (docs/benchmarks.md). A user's space binds the final net as it is.
    A width is timed only if its FLOPs say it may fit, so timing costs at most about an epoch per width."""
    augment = RETRAIN_AUGMENT if built_in and spec.training.augment == "none" else None
    spec = replace(spec, training=replace(spec.training, augment=augment or spec.training.augment))
    sample = 512 if seconds < SHORT_RETRAIN else 2048  # a short retrain cannot pay seconds for a finer timing
    began = time.monotonic()
    train_s, score_s = epoch_pace(spec, final, device, sample)
    # the timing is paid from the same time, and so is the final scoring of the test set after training (as
    # long as one scoring inside an epoch); measured beside a 2-core load, it was most of an overrun of 12%
    seconds -= time.monotonic() - began + score_s
    per_epoch = train_s + score_s
    flops = assess(spec, final.input_shape, final.n_classes, device)[0].flops
    for width in WIDTHS if built_in else ():
        wide = spec.widened(width)
        info, too_large, _ = assess(wide, final.input_shape, final.n_classes, device)
        if too_large or per_epoch * info.flops / flops * MIN_WIDE_EPOCHS > 1.5 * seconds:
            continue  # more memory than the device has, or far too slow by its FLOPs: not worth timing
        began = time.monotonic()
        wide_train, wide_score = epoch_pace(wide, final, device, sample)
        seconds -= time.monotonic() - began
        left = seconds - (wide_score - score_s)  # the wider net scores the test set slower after training too
        if left / (wide_train + wide_score) >= MIN_WIDE_EPOCHS:
            return Plan(wide, width, min(MAX_RETRAIN_EPOCHS, int(left / (wide_train + wide_score))),
                        wide_train + wide_score, augment, score_seconds=wide_score)
    fits = seconds / per_epoch
    if fits < FEW_EPOCHS:  # whole epochs would leave much of the time unused (or none would fit): as many
        # epochs as start, each over the part of the training set that makes them end in time
        epochs = max(1, math.ceil(fits))
        n = max(spec.training.batch_size, int(len(final.train) * (seconds / epochs - score_s) / train_s))
        return Plan(spec, 1.0, epochs, per_epoch, augment, n if n < len(final.train) else None, score_s)
    return Plan(spec, 1.0, min(MAX_RETRAIN_EPOCHS, int(fits)), per_epoch, augment, score_seconds=score_s)
