"""The `nas` command line: each command parses its options into a job, calls one library function, and hands
the result to a view (`views` for results, `progress` for live events). Only this module exits.

The library is imported inside the commands, so `nas --help` loads neither torch nor Optuna; choices
come from `nas.names`, which imports nothing heavy.
"""

from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from nas import names, views
from nas.errors import NasBug, NasError



class _HelpWithoutType:
    """Shows --help without a value type: typer 0.29 labels the flag `<bool>`, as if it took a value."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Group(_HelpWithoutType, TyperGroup):
    pass


class _Command(_HelpWithoutType, TyperCommand):
    pass


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="Search CNN architectures and training hyperparameters for image classification (Optuna + PyTorch).",
)
DEFAULT_STORAGE = "sqlite:///studies/nas.db"


def _check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?|mps", value):
        raise typer.BadParameter(f"expected auto, cpu, mps or cuda[:N], got {value!r}")
    return value


def _parse_budget(value: str) -> float:
    """'90s', '30m', '1.5h' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh])\s*", value)
    seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)] if m else 0.0
    if not 10 <= seconds <= 7 * 86400:
        raise typer.BadParameter(f"expected a time from 10s to 168h such as 90s, 30m or 1.5h, got {value!r}")
    return seconds


def _check_workers(value: str) -> str:
    if value != "auto" and not (re.fullmatch("[0-9]+", value) and int(value) >= 1):  # isdigit() takes ², ①
        raise typer.BadParameter(f"expected a count ≥ 1 or auto, got {value!r}")
    return value


def _utf8(value: Any) -> Any:
    """A study name, storage URL or export path as given, if it is UTF-8 text: other bytes reach Python as lone
    surrogates, which SQLite and TorchScript cannot store and would end in a traceback."""
    from nas.files import name_text

    if value is not None and name_text(str(value)) != str(value):
        raise typer.BadParameter(f"'{name_text(str(value))}' holds bytes that are not UTF-8 (shown as \\xNN); "
                                 "use a name in UTF-8.")
    return value


def _choice(option: str, allowed: tuple[str, ...], help: str) -> Any:
    """An option that takes one of `allowed` (a tuple of nas.names), listed in --help and checked."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    return typer.Option(option, callback=check, metavar=f"[{'|'.join(allowed)}]", help=help)


SpaceOpt = Annotated[Path, typer.Option(
    "--space", help="Search space YAML file, or a bundled space's name (`nas spaces`).", dir_okay=False)]
AnySpaceOpt = Annotated[Optional[Path], typer.Option(
    "--space", help="Search space YAML file, or a bundled space's name (`nas spaces`); default: the built-in "
                    "space for --dataset.", dir_okay=False)]
StudyOpt = Annotated[Optional[str], typer.Option("--study", help="Study name (default: the space's name).", callback=_utf8)]
StorageOpt = Annotated[str, typer.Option("--storage", help="Optuna storage URL (SQLite file or PostgreSQL).",
                                         callback=_utf8)]
DatasetOpt = Annotated[Optional[str], typer.Option(
    "--dataset", help="fashion-mnist, mnist, kmnist, cifar10, an .npz file or an image folder (default: the space's).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding the dataset's files.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, mps (Apple) or cuda[:N].", callback=_check_device)]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**31 - 1,  # Optuna's samplers take 32-bit seeds, plus offsets
                                      help="Seed of the split, sampler and training.")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print machine-readable JSON instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", metavar="", help="Replace an earlier export of nas in that folder.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress output; only the result.")]
TrialsOpt = Annotated[int, typer.Option("--trials", min=1, help="Trials to run now (added to the study).")]
StudyTrialsOpt = Annotated[Optional[int], typer.Option(
    "--study-trials", min=1, max=2**31 - 1, help="Run until the study holds N trials in all, counted in its storage: workers on any "
    "number of machines (a Slurm array, a Kubernetes Job) together run exactly N.")]
TimeoutOpt = Annotated[Optional[float], typer.Option("--timeout", min=1, help="Stop after this many seconds.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs per trial (default: the space's).")]
SubsetOpt = Annotated[Optional[int], typer.Option("--subset", min=10, help="Search on N training images.")]
SamplerOpt = Annotated[str, _choice("--sampler", names.SAMPLERS, "The Optuna sampler.")]
PrunerOpt = Annotated[Optional[str], _choice(
    "--pruner", names.PRUNERS, "Stops lagging trials after an epoch (default: median; pareto with several objectives).")]
ObjectivesOpt = Annotated[Optional[str], typer.Option(
    "--objectives", help="accuracy, then any of params, flops, latency to minimise: accuracy,latency (default: the space's).")]
HeartbeatOpt = Annotated[int, typer.Option(
    "--heartbeat", min=1, help="Seconds between liveness beats; a trial silent for 3 beats is re-run.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, max=4096, help="torch threads per worker (default: the cores other processes leave free, "
                                       "looked at again between trials; OMP_NUM_THREADS also sets it).")]
WorkersOpt = Annotated[str, typer.Option(
    "--workers", callback=_check_workers, help="Worker processes on this machine: N or auto.")]
TopOpt = Annotated[Optional[int], typer.Option(
    "--top", min=1, help="Trials to show (default 5); with --retrain-epochs, how many to retrain (default 1).")]
ExportOpt = Annotated[Optional[Path], typer.Option("--export", help="Write the model to this folder.", callback=_utf8)]
RetrainOpt = Annotated[Optional[int], typer.Option(
    "--retrain-epochs", min=1, help="Retrain the top trials on train+val this long and rank them on test.")]


@app.callback()
def _any_command() -> None:
    # Before every command: a character the console cannot encode (→ on an ASCII-only console, LANG=C; a
    # non-UTF-8 file name's byte anywhere) is printed escaped (\u2192, \udce9), not a UnicodeEncodeError.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input becomes one clear paragraph on stderr and exit status 2, never a traceback."""
    try:
        yield
    except NasError as e:
        views.show_error(e)
        raise typer.Exit(2) from None
    except NasBug as e:  # a bug in nas: the message asks for a report (exit 1: not the user's input)
        views.show_error(e)
        raise typer.Exit(1) from None
    except OSError as e:  # a path the checks could not even look at (too long a name, a folder we may not enter)
        if e.filename is None:
            raise
        views.show_error(e)
        raise typer.Exit(2) from None


@contextmanager
def _interrupts(export: Path | None) -> Iterator[None]:
    """SIGINT, SIGTERM or SIGHUP while training or exporting: say so, and exit with 128 + the signal's number."""
    try:
        yield
    except KeyboardInterrupt as e:
        signals = sys.modules.get("nas.signals")  # not imported (`nas best` that only lists): nothing to stop
        if signals is None or not isinstance(e, signals.Interrupted):
            raise
        views.show_signal(e, export)
        raise typer.Exit(e.status) from None


# ---------------------------------------------------------------------------------------------


@app.command(cls=_Command)
def search(
    ctx: typer.Context, space: AnySpaceOpt = None, trials: TrialsOpt = 20, timeout: TimeoutOpt = None, epochs: EpochsOpt = None,
    subset: SubsetOpt = None, study: StudyOpt = None, storage: StorageOpt = DEFAULT_STORAGE, dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None, device: DeviceOpt = "auto", seed: SeedOpt = 0, sampler: SamplerOpt = "tpe",
    pruner: PrunerOpt = None, heartbeat: HeartbeatOpt = 10, workers: WorkersOpt = "1", quiet: QuietOpt = False,
    json_out: JsonOpt = False, objectives: ObjectivesOpt = None, threads: ThreadsOpt = None, study_trials: StudyTrialsOpt = None,
) -> None:
    """Run a study, or continue it: trials are added to what the study already has.

    SIGINT (Ctrl-C), SIGTERM and SIGHUP stop it cleanly: the running trials are recorded as failed
    (interrupted), and the command prints the best trials so far, exits with 128 + the signal's number
    and prints how to resume.

    In a terminal, bars move batch by batch with the trial's and the run's ETA; in a log or a pipe, a
    status line comes every 30 s (the environment variable NAS_LOG_EVERY=SECONDS sets it).
    """
    started = time.monotonic()  # --timeout counts from here: importing torch takes seconds too
    with _user_errors():
        from nas import search as searching
        from nas.progress import SearchView
        from nas.signals import Interrupted
        from nas.spacefile import parse_objectives

        trials = _run_trials(ctx, trials, study_trials)
        job = searching.SearchJob(
            space=space, study=study, storage=storage, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
            device=device, epochs=epochs, subset=subset, sampler=sampler, pruner=pruner, seed=seed,
            heartbeat=heartbeat, trials=trials, timeout=timeout, workers=None if workers == "auto" else int(workers),
            threads=threads, started=started, study_trials=study_trials,
            objectives=None if objectives is None else parse_objectives(objectives))
        view = SearchView(min(trials, study_trials or trials), quiet or json_out, timeout)
        try:
            with view.progress, view.ticker:
                outcome = searching.run(job, view.show)
        except Interrupted as e:
            _show_interrupted(ctx, e, trials, study_trials, json_out)
            raise typer.Exit(e.status) from None
        status = views.show_outcome(outcome, json_out)
        if status:
            raise typer.Exit(status)


@app.command(cls=_Command)
def best(
    study: StudyOpt = None, storage: StorageOpt = DEFAULT_STORAGE, top: TopOpt = None, export: ExportOpt = None,
    retrain_epochs: RetrainOpt = None, force: ForceOpt = False, dataset: DatasetOpt = None, data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto", json_out: JsonOpt = False, quiet: QuietOpt = False,
    trial: Annotated[Optional[int], typer.Option("--trial", min=0, help="Only this trial (by number): to export "
                                                 "any trial, not only the best.")] = None,
) -> None:
    """Show the best trials (or one --trial); retrain the top ones and rank them on test; export the winner.

    --export writes model.pt, arch.yaml, metrics.json, model.onnx and model.ts. Without
    --retrain-epochs it repeats the best trial's own training; with it, the top K (--top, default 1)
    are retrained on train+val, ranked by test accuracy, and the first is exported.
    """
    with _user_errors():
        study = _newest(study, storage, quiet or json_out)
        from nas import retrain
        from nas.progress import TrainingView

        job = retrain.BestJob(study, storage, top, export, retrain_epochs, force, dataset, data_dir, device, trial)
        view = TrainingView(quiet or json_out, per_epoch_lines=False)
        with view.progress, view.ticker, _interrupts(export):
            result = retrain.best(job, on_event=view.show)
        views.show_best(result, retrain_epochs, export, json_out)


@app.command("run", cls=_Command)
def run_cmd(
    dataset: DatasetOpt = None,
    budget: Annotated[str, typer.Option("--budget", help="Wall-clock time for everything: 90s, 30m, 1.5h.")] = "30m",
    space: AnySpaceOpt = None, export: ExportOpt = None, force: ForceOpt = False,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the study's HTML report here.",
                                                   dir_okay=False)] = None,
    study: StudyOpt = None, storage: StorageOpt = DEFAULT_STORAGE, data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto", seed: SeedOpt = 0, workers: WorkersOpt = "1", quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Search, retrain the best net on all the training data, export it and write the report, within --budget.

    The search takes half the budget; the retrain's epochs fit the rest, at the best net's measured pace.
    Without --space, the best net is widened for the retrain while it still gets 15 epochs."""
    started = time.monotonic()  # --budget counts from here: importing torch takes seconds too
    with _user_errors():
        from nas import autorun, search as searching
        from nas.progress import RunView
        from nas.signals import Interrupted

        job = autorun.RunJob(searching.SearchJob(
            space=space, study=study, storage=storage, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
            device=device, seed=seed, workers=None if workers == "auto" else int(workers), threads=threads,
            started=started), _parse_budget(budget), export, force, report)
        view = RunView(quiet, job.budget)
        try:
            with view.search.progress, view.ticker:
                outcome = autorun.run(job, view.show)
        except Interrupted as e:
            views.show_run_interrupted(e, storage, report)
            raise typer.Exit(e.status) from None
        finally:
            view.train.progress.stop()
        views.show_run(outcome, export, report)


@app.command("train", cls=_Command)
def train_cmd(
    space: SpaceOpt, epochs: EpochsOpt = None, dataset: DatasetOpt = None, data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto", seed: SeedOpt = 0, export: ExportOpt = None, force: ForceOpt = False,
    json_out: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Train one fixed architecture on the whole training set and score it on the test set."""
    with _user_errors():
        from nas import retrain
        from nas.progress import TrainingView

        job = retrain.TrainJob(space, epochs, dataset, data_dir, device, seed, export, force)
        view = TrainingView(quiet or json_out, per_epoch_lines=True)
        with view.progress, view.ticker, _interrupts(export):
            metrics = retrain.train_fixed(job, on_event=view.show)
        views.show_trained(metrics, export, json_out)


@app.command(cls=_Command)
def predict(
    model_dir: Annotated[Path, typer.Argument(help="An export folder (from `nas best --export` or `nas train --export`).")],
    files: Annotated[list[Path], typer.Argument(help="PNG/JPG images, or .npz files of uint8 images.")],
    top: Annotated[int, typer.Option("--top", min=1, help="Classes to show per image.")] = 3,
    json_out: JsonOpt = False,
) -> None:
    """Classify images with an exported model, preprocessed as in training; print the top classes."""
    with _user_errors():
        from nas import export as exporting

        views.show_predictions(exporting.classify(model_dir, files, top), json_out)


@app.command(cls=_Command)
def validate(
    space: AnySpaceOpt = None,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Sampled architectures to show.")] = 3,
    dataset: DatasetOpt = None, data_dir: DataDirOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "auto",
    write: Annotated[Optional[Path], typer.Option(
        "--write", help="Write the built-in space for --dataset (and --device) to this file, to start a space from.",
        dir_okay=False)] = None,
    objectives: ObjectivesOpt = None,
) -> None:
    """Check a space file (or the built-in space for --dataset); show its dimensions, its size and a few
    sampled architectures."""
    with _user_errors():
        from nas import preview as previews
        from nas.spacefile import parse_objectives

        if write and space:
            raise NasError("--write writes the built-in space for --dataset; leave out --space.")
        if objectives is not None and space:
            raise NasError("--objectives shows the built-in space for a search of those objectives; a space file "
                           "names its own (`objectives:`). Leave out --space or --objectives.")
        wanted = parse_objectives(objectives) if objectives is not None else ("accuracy",)
        if write:
            previews.write_builtin_space(write, dataset, data_dir, device, wanted)
        views.show_preview(previews.preview_space(str(space) if space else None, dataset, data_dir, samples, seed, device,
                                                  wanted), str(space or "the built-in space"))
        if write:
            views.show_space_written(write)


@app.command(cls=_Command)
def report(
    study: StudyOpt = None, storage: StorageOpt = DEFAULT_STORAGE,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.", dir_okay=False)] = Path("report.html"),
    json_out: JsonOpt = False,
) -> None:
    """Write one self-contained HTML report of a study (opens offline): curves, importances, Pareto fronts."""
    with _user_errors():
        study = _newest(study, storage, json_out)
        from nas import report as reporting

        views.show_report(out, reporting.write_report(study, storage, out), json_out)


@app.command(cls=_Command)
def dashboard(
    study: StudyOpt = None, storage: StorageOpt = DEFAULT_STORAGE,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to serve on (0: any free one).")] = 8080,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
) -> None:
    """Serve optuna-dashboard on the study's storage until Ctrl-C."""
    with _user_errors():
        from nas import dashboard as dashboards

        dashboards.serve_dashboard(storage, study, host, port, on_ready=lambda url: views.show_dashboard(storage, url))
        views.show_dashboard(storage, None)


@app.command("spaces", cls=_Command)
def spaces_cmd(json_out: JsonOpt = False) -> None:
    """List the search spaces shipped with nas: pass a name to --space from any folder (`--space lenet`)."""
    with _user_errors():
        from nas.spacefile import list_bundled

        views.show_spaces(list_bundled(), json_out)


@app.command("studies", cls=_Command)
def studies_cmd(storage: StorageOpt = DEFAULT_STORAGE, json_out: JsonOpt = False) -> None:
    """List the studies in a storage."""
    with _user_errors():
        from nas import study as studies

        views.show_studies(studies.list_studies(storage), storage, json_out)


def _newest(study: str | None, storage: str, quiet: bool) -> str | None:
    """The study asked for, or without --study the storage's newest, said on stderr when it holds others."""
    if study is not None:
        return study
    from nas import study as studies

    name, note = studies.newest_study(storage)
    if note and not quiet:
        views.show_note(note)
    return name or None


def _show_interrupted(ctx: typer.Context, e: Any, trials: int, study_trials: int | None, json_out: bool) -> None:
    """A search stopped by a signal; with --study-trials, the same command goes on where the study's count stands."""
    if study_trials:
        views.show_interrupted(e, _given_options(ctx), e.n_done, json_out, again=True)
    else:
        views.show_interrupted(e, _given_options(ctx, "trials"), trials, json_out)


def _run_trials(ctx: typer.Context, trials: int, study_trials: int | None) -> int:
    """The trials this run may make: with --study-trials, the study's count bounds it, not --trials' default."""
    from nas.workers import MAX_TICKETS

    source = ctx.get_parameter_source("trials")
    return MAX_TICKETS if study_trials and (source is None or source.name != "COMMANDLINE") else trials


def _given_options(ctx: typer.Context, *leave_out: str) -> list[str]:
    """The options the user typed on this command line (not defaults), as command-line words."""
    words: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name in leave_out or source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        flag = param.opts[0]
        words += [flag] if getattr(param, "is_flag", False) else [flag, str(value)]
    return words


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
