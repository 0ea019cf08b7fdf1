"""`nas run`: from a dataset to an exported model and its report within a wall-clock budget.

The budget is split between the search and the final retrain of its best net on the whole training
set (train + validation). The retrain's epochs are worked out from that net's pace measured here,
on a few batches of the whole set with all of this machine's threads (a trial's own pace is not it:
it ran on a subset, maybe beside other workers), so that it ends within the budget; its learning
rate schedule spans those epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from nas import data, export as exporting, pipeline, report as reporting, search as searching, study as studies
from nas.errors import NasError
from nas.files import check_export_target, check_file_target
from nas.space import load_space
from nas.spec import ArchSpec
from nas.train import pick_device

SEARCH_SHARE = 0.6  # of the budget; the rest retrains the best net, exports it and writes the report
END_MARGIN = 0.9  # of the time left that the retrain plans to use: the export and report need the rest
MAX_RETRAIN_EPOCHS = 200
MAX_TRIALS = 1_000_000  # the search is bounded by its time, not by a count


@dataclass(frozen=True)
class RunJob:
    """What `nas run` was asked: a search job (its trials and timeout are set here) and the rest."""

    search: searching.SearchJob
    budget: float  # seconds, wall clock, for everything
    export: Path | None = None
    force: bool = False
    report: Path | None = None


@dataclass(frozen=True)
class RunOutcome:
    """What `nas run` did: the search, the retrained and exported best, and the report."""

    search: searching.Outcome
    best: exporting.Best
    retrain_epochs: int
    seconds_per_epoch: float  # the retrain's, as measured before it
    report: reporting.Summary | None
    seconds: float


def run(job: RunJob, on_event: Callable[[Any], None]) -> RunOutcome:
    """Search for SEARCH_SHARE of the budget, retrain the best net in the time left, export it, write the report.
    Every target is checked before the search starts."""
    start = time.monotonic()
    space = job.search.space
    if space is not None and len(objectives := load_space(space).objectives) > 1:
        raise NasError(f"{space} searches for {','.join(objectives)}, which gives a front of nets, while nas run retrains "
                       f"and exports one best: run `nas search --space {space}`, then `nas best --trial N --export DIR` "
                       "for the point of the front you want.")
    if job.export is not None:
        check_export_target(job.export, job.force)
    if job.report is not None:
        check_file_target(job.report, "the report")
    outcome = searching.run(replace(job.search, trials=MAX_TRIALS, timeout=SEARCH_SHARE * job.budget), on_event)
    if not outcome.best:
        raise NasError(f"no trial of study {outcome.study!r} completed within the search's "
                       f"{SEARCH_SHARE * job.budget / 60:.0f} minutes; give a larger --budget.")
    with searching.signals_interrupt():  # a signal in the retrain ends it as one in the search does
        try:
            per_epoch = _seconds_per_epoch(outcome, job.search)
            left = job.budget - (time.monotonic() - start)
            epochs = max(1, min(MAX_RETRAIN_EPOCHS, int(END_MARGIN * left / per_epoch)))
            best = exporting.best(outcome.study, job.search.storage, 1, job.export, epochs, job.force,
                                  job.search.dataset, job.search.data_dir, job.search.device,
                                  on_event=lambda e: (searching.checkpoint(), on_event(e)))
            summary = reporting.write_report(outcome.study, job.search.storage, job.report) if job.report else None
        except searching.Interrupted as e:
            raise searching.Interrupted(e.signum, outcome.n_trained) from None
    return RunOutcome(outcome, best, epochs, per_epoch, summary, time.monotonic() - start)


def _seconds_per_epoch(outcome: searching.Outcome, job: searching.SearchJob) -> float:
    """The best trial's net timed here for a few batches of the whole training set: seconds per retrain epoch."""
    study = studies.load_study(outcome.study, job.storage)
    spec = ArchSpec.from_dict(studies.top_trials(study, 1)[0].user_attrs["spec"])
    device = pick_device(job.device)
    ds = data.load_dataset(study.user_attrs["data"]["dataset"] if job.dataset is None else job.dataset, job.data_dir)
    return pipeline.seconds_per_epoch(spec, pipeline.prepare_final_data(ds, device), device)
