"""The `nas` command line: each command parses its options, calls one library function, and renders.

This is the only module that prints or exits. The library is imported inside the commands, so
`nas --help` loads neither torch nor Optuna; choices come from `nas.names`, which imports nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nas import names
from nas.errors import NasError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Search CNN architectures and training hyperparameters for image classification (Optuna + PyTorch).",
)
MIN_WIDTH = 80  # columns: a narrower console (COLUMNS=20, or 0) folds tables until their figures vanish


def _sane_terminal_size() -> None:
    """Fix COLUMNS and LINES where Rich and typer (usage errors, --help) read them: a value that is not an ASCII
    number (COLUMNS=² crashes Rich's int()) is dropped, a width under MIN_WIDTH (0 prints nothing) raised."""
    for name in ("COLUMNS", "LINES"):
        value = os.environ.get(name)
        if value is not None and not re.fullmatch("[0-9]+", value):
            del os.environ[name]
    if int(os.environ.get("COLUMNS", MIN_WIDTH)) < MIN_WIDTH:
        os.environ["COLUMNS"] = str(MIN_WIDTH)


def _console(stderr: bool = False) -> Console:
    """Rich's console on stdout or stderr, at least MIN_WIDTH wide whatever COLUMNS or the terminal says, and
    without emoji codes, which escape() leaves alone: a study named :x: is printed as :x:, not as ❌. In a log or
    a pipe, lines are written whole (soft wrap), not cut at its width in the middle of an architecture; tables
    keep the width."""
    found = Console(stderr=stderr, emoji=False)
    return Console(stderr=stderr, width=max(found.width, MIN_WIDTH), emoji=False, soft_wrap=not found.is_terminal)


_sane_terminal_size()
console = _console()
err_console = _console(stderr=True)

DEFAULT_STORAGE = "sqlite:///studies/nas.db"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but newline and tab: ESC starts a terminal command


def _visible(text: str) -> str:
    """`text` with its control characters shown as \\xNN: a name holding ESC [31m colours nothing, moves nothing."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _plain(value: object) -> str:
    """A user's string (a name, a path, a message that quotes one) for a line of Rich markup: shown as it is."""
    return escape(_visible(str(value)))


def _text(value: object) -> Text:
    """A user's string as Rich text, for a table's cell or title, where a plain str would be read as markup."""
    return Text(_visible(str(value)))


def _check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?|mps", value):
        raise typer.BadParameter(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
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
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", callback=_check_device)]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**31 - 1,  # Optuna's samplers take 32-bit seeds, plus offsets
                                      help="Seed of the split, sampler and training.")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print machine-readable JSON instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", metavar="", help="Replace an earlier export of nas in that folder.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress output; only the result.")]
TrialsOpt = Annotated[int, typer.Option("--trials", min=1, help="Trials to run now (added to the study).")]
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
        err_console.print(f"[bold red]error:[/] {_plain(e)}", highlight=False, soft_wrap=True)  # "[low, high]" is no markup
        raise typer.Exit(2) from None
    except OSError as e:  # a path the checks could not even look at (too long a name, a folder we may not enter)
        if e.filename is None:
            raise
        err_console.print(f"[bold red]error:[/] cannot use {_plain(e.filename)}: {e.strerror or e}. Check the path, or "
                          "choose another one.", highlight=False, soft_wrap=True)
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
        said = f"; nothing was written to {export}" if export is not None else ""
        err_console.print(escape(f"interrupted by {e}{said}."), highlight=False, soft_wrap=True)
        raise typer.Exit(e.status) from None


# ---------------------------------------------------------------------------------------------


@app.command()
def search(
    ctx: typer.Context, space: AnySpaceOpt = None, trials: TrialsOpt = 20, timeout: TimeoutOpt = None, epochs: EpochsOpt = None,
    subset: SubsetOpt = None, study: StudyOpt = None, storage: StorageOpt = DEFAULT_STORAGE, dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None, device: DeviceOpt = "auto", seed: SeedOpt = 0, sampler: SamplerOpt = "tpe",
    pruner: PrunerOpt = None, heartbeat: HeartbeatOpt = 10, workers: WorkersOpt = "1", quiet: QuietOpt = False,
    json_out: JsonOpt = False, objectives: ObjectivesOpt = None, threads: ThreadsOpt = None,
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
        from nas.signals import Interrupted
        from nas.space import parse_objectives

        job = searching.SearchJob(
            space=space, study=study, storage=storage, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
            device=device, epochs=epochs, subset=subset, sampler=sampler, pruner=pruner, seed=seed,
            heartbeat=heartbeat, trials=trials, timeout=timeout, workers=None if workers == "auto" else int(workers),
            threads=threads, started=started,
            objectives=None if objectives is None else parse_objectives(objectives))
        view = _SearchView(trials, quiet or json_out, timeout)
        try:
            with view.progress, view.ticker:
                outcome = searching.run(job, view.show)
        except Interrupted as e:
            _show_interrupted(e, _given_options(ctx, "trials"), trials, json_out)
            raise typer.Exit(e.status) from None
        _show_outcome(outcome, json_out)


@app.command()
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

        view = _TrainingView(quiet or json_out, per_epoch_lines=False)
        with view.progress, view.ticker, _interrupts(export):
            result = retrain.best(study, storage, top, export, retrain_epochs, force, dataset, data_dir, device,
                                  on_event=view.show, trial=trial)
        if json_out:
            print(json.dumps({"study": result.study, "trials": result.rows, "retrained": result.retrained,
                              "export": result.export}, indent=2))
            return
        _show_best(result, retrain_epochs, export)


@app.command("run")
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
        from nas.signals import Interrupted

        job = autorun.RunJob(searching.SearchJob(
            space=space, study=study, storage=storage, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
            device=device, seed=seed, workers=None if workers == "auto" else int(workers), threads=threads,
            started=started), _parse_budget(budget), export, force, report)
        view = _RunView(quiet, job.budget)
        try:
            with view.search.progress, view.ticker:
                outcome = autorun.run(job, view.show)
        except Interrupted as e:
            err_console.print(escape(f"interrupted by {e}: {names.counted(e.n_done, 'finished trial')} of this run saved; "
                                     + _run_left(e, storage, report)), highlight=False, soft_wrap=True)
            raise typer.Exit(e.status) from None
        finally:
            view.train.progress.stop()
        _show_run(outcome, export, report)


def _show_interrupted(e: Any, argv: list[str], trials: int, json_out: bool) -> None:
    """A search stopped by a signal: the table of the study's best as it was left, what was saved, how to resume."""
    from nas import search as searching

    if e.best and not json_out:
        console.print(_trials_table(e.best, title=_text(f"best of the study so far ({names.counted(len(e.best), 'trial')})")))
    left = trials - e.n_done
    said = (f"the running ones marked failed (interrupted). Resume with: "
            f"{_plain(searching.resume_command(argv, left))}" if left > 0 else "none was left to run.")
    err_console.print(f"interrupted by {e}: {names.counted(e.n_done, 'finished trial')} of this run saved, " + said,
                      highlight=False, soft_wrap=True)


def _run_left(e: Any, storage: str, report: Path | None) -> str:
    """What an interrupted `nas run` wrote, and how to finish."""
    from nas import autorun

    if not (isinstance(e, autorun.RunInterrupted) and e.exported):
        return "nothing exported. Run the same command again to continue the study."
    # Once the export is written only the report is left: `nas report` writes it in seconds, where the same
    # command again would search for the whole budget and then meet its own export (and need --force).
    if report is None:
        return f"the model is exported to {e.exported}."
    command = shlex.join(["nas", "report", "--study", e.study, "--storage", storage, "--out", str(report)])
    return f"the model is exported to {e.exported}; the report is not written: {command} writes it."


def _show_run(outcome: Any, export: Path | None, report: Path | None) -> None:
    plan = outcome.plan
    wider = f" at {plan.width:g}× its width" * (plan.width != 1) + f" with {plan.augment} augmentation" * bool(plan.augment)
    epochs = outcome.best.retrained[0]["epochs"]  # fewer than planned when it was cut to keep the budget
    _show_best(outcome.best, epochs, export)
    console.print(f"{names.counted(outcome.search.n_trained, 'trial')} searched; the best retrained{wider} for "
                  f"{names.counted(epochs, 'epoch')} (measured at {plan.seconds_per_epoch:.1f} s each); {_took(outcome.seconds)} in all"
                  + (f"; report: {_plain(report)}" if report else ""), highlight=False, soft_wrap=True)
    if outcome.cut:
        console.print(f"note: {_plain(outcome.cut)}.", highlight=False, soft_wrap=True)


def _took(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@app.command("train")
def train_cmd(
    space: SpaceOpt, epochs: EpochsOpt = None, dataset: DatasetOpt = None, data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto", seed: SeedOpt = 0, export: ExportOpt = None, force: ForceOpt = False,
    json_out: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Train one fixed architecture on the whole training set and score it on the test set."""
    with _user_errors():
        from nas import retrain

        view = _TrainingView(quiet or json_out, per_epoch_lines=True)
        with view.progress, view.ticker, _interrupts(export):
            metrics = retrain.train_fixed(space, epochs, dataset, data_dir, device, seed, export, force,
                                          on_event=view.show)
        if json_out:
            print(json.dumps(metrics, indent=2))
            return
        console.print(f"test accuracy [bold]{metrics['test_accuracy']:.4f}[/], {metrics['n_params']:,} parameters, "
                      f"{metrics['flops'] / 1e6:.2f} MFLOPs, {metrics['seconds_per_epoch']:.2f} s/epoch"
                      + (f"; written to {_plain(export)}" if export else ""), soft_wrap=True)


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="An export folder (from `nas best --export` or `nas train --export`).")],
    files: Annotated[list[Path], typer.Argument(help="PNG/JPG images, or .npz files of uint8 images.")],
    top: Annotated[int, typer.Option("--top", min=1, help="Classes to show per image.")] = 3,
    json_out: JsonOpt = False,
) -> None:
    """Classify images with an exported model, preprocessed as in training; print the top classes."""
    with _user_errors():
        from nas import export as exporting

        rows = exporting.classify(model_dir, files, top)
        if json_out:
            print(json.dumps(rows, indent=2))
            return
        for r in rows:
            console.print(f"{_plain(r['file'])}: " + ", ".join(
                f"[bold]{_plain(c['class'])}[/] {c['probability']:.3f}" if j == 0 else f"{_plain(c['class'])} {c['probability']:.3f}"
                for j, c in enumerate(r["top"])),
                          highlight=False, soft_wrap=True)


@app.command()
def validate(
    space: AnySpaceOpt = None,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Sampled architectures to show.")] = 3,
    dataset: DatasetOpt = None, data_dir: DataDirOpt = None, seed: SeedOpt = 0,
    write: Annotated[Optional[Path], typer.Option(
        "--write", help="Write the built-in space for --dataset to this file, to start a space from.",
        dir_okay=False)] = None,
) -> None:
    """Check a space file (or the built-in space for --dataset); show its dimensions, its size and a few
    sampled architectures."""
    with _user_errors():
        from nas import preview as previews

        if write and space:
            raise NasError("--write writes the built-in space for --dataset; leave out --space.")
        if write:
            previews.write_builtin_space(write, dataset, data_dir)
        _show_preview(previews.preview_space(str(space) if space else None, dataset, data_dir, samples, seed),
                      str(space or "the built-in space"))
        if write:
            console.print(f"wrote {_plain(write)}: pass it to `nas search --space {_plain(shlex.quote(str(write)))}`",
                          highlight=False, soft_wrap=True)


def _show_preview(preview: Any, source: str) -> None:
    table = Table("parameter", "values", title=_text(f"space {preview.name!r} ({source})"))
    for name, values in preview.dimensions:
        table.add_row(_text(name), _text(values))
    console.print(table if preview.dimensions else _text(f"{source}: a fixed architecture (constants only)."))
    size = names.counted(preview.n_discrete, "discrete combination") + (
        f" × {names.counted(preview.n_continuous, 'continuous dimension')}" if preview.n_continuous else "")
    console.print(f"size: {size}; {names.counted(preview.n_baselines, 'baseline')}; input {preview.input_shape}, "
                  f"{names.counted(preview.n_classes, 'class', 'classes')}; {names.counted(preview.epochs, 'epoch')} per trial")
    for i, net in enumerate(preview.samples, 1):
        console.print(f"\n[bold]sample {i}[/]: {_plain(net.arch)}", highlight=False)
        if net.n_params is None:
            console.print(f"  {_plain(net.problem)}: would be rejected before training (another net is drawn)", highlight=False)
            continue
        shapes = " → ".join("×".join(map(str, s)) for s in (preview.input_shape, *net.stages))
        console.print(f"  {shapes}; {net.n_params:,} parameters, {net.flops / 1e6:.2f} MFLOPs"
                      + (f" ({_plain(net.problem)}: rejected before training, another net is drawn)" if net.problem else ""),
                      highlight=False)


@app.command()
def report(
    study: StudyOpt = None, storage: StorageOpt = DEFAULT_STORAGE,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.", dir_okay=False)] = Path("report.html"),
    json_out: JsonOpt = False,
) -> None:
    """Write one self-contained HTML report of a study (opens offline): curves, importances, Pareto fronts."""
    with _user_errors():
        study = _newest(study, storage, json_out)
        from nas import report as reporting

        summary = reporting.write_report(study, storage, out)
        if json_out:
            print(json.dumps({"report": str(out), "summary": dataclasses.asdict(summary)}, indent=2, default=str))
            return
        console.print(f"wrote {_plain(out)} ({out.stat().st_size / 1e6:.1f} MB) for study {_plain(repr(summary.study))}: "
                      f"{names.counted(sum(summary.counts.values()), 'trial')}, best {summary.best['val_accuracy']:.4f}"
                      + ("" if summary.export else "; no export yet (`nas best --export DIR` adds the confusion matrix)"),
                      soft_wrap=True)


@app.command()
def dashboard(
    study: StudyOpt = None, storage: StorageOpt = DEFAULT_STORAGE,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to serve on (0: any free one).")] = 8080,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
) -> None:
    """Serve optuna-dashboard on the study's storage until Ctrl-C."""
    with _user_errors():
        from nas import report as reporting

        reporting.serve_dashboard(storage, study, host, port, on_ready=lambda url: console.print(
            f"optuna-dashboard for {_plain(storage)} at {_plain(url)}  (Ctrl-C stops it)", highlight=False, soft_wrap=True))
        console.print("dashboard stopped")


@app.command("spaces")
def spaces_cmd(json_out: JsonOpt = False) -> None:
    """List the search spaces shipped with nas: pass a name to --space from any folder (`--space lenet`)."""
    with _user_errors():
        from nas.space import list_bundled

        rows = list_bundled()
        if json_out:
            print(json.dumps(rows, indent=2))
            return
        table = Table("name", "searched", "baselines", "what it is", title="bundled spaces (nas search --space NAME)")
        for r in rows:
            table.add_row(r["name"], names.counted(r['searched'], 'dimension') if r["searched"] else "fixed net", str(r["baselines"]),
                          _text(r["summary"]))
        console.print(table)
        console.print(f"files in {_plain(Path(rows[0]['file']).parent)}: copy one to edit it", highlight=False)


@app.command("studies")
def studies_cmd(storage: StorageOpt = DEFAULT_STORAGE, json_out: JsonOpt = False) -> None:
    """List the studies in a storage."""
    with _user_errors():
        from nas import study as studies

        rows = studies.list_studies(storage)
        if json_out:
            print(json.dumps(rows, indent=2))
            return
        table = Table("study", "trials", "best val acc", "started", title=_text(storage))
        for r in rows:
            table.add_row(_text(r["name"]), str(r["trials"]), f"{r['best']:.4f}" if r["best"] is not None else "-",
                          _text(r["started"] or "-"))
        console.print(table if rows else _text(f"no studies in {storage} yet: run `nas search`."), soft_wrap=True)


# --- rendering -------------------------------------------------------------------------------------


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


class _SearchView:
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
        self._say(f"study [bold]{_plain(e.study)}[/] in {_plain(e.storage)}: {names.counted(e.n_finished, 'finished trial')} "
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
                self._say(f"[dim]#{row['number']:<4} rejected {_plain(row['reason'] or '')}[/]")
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
                      + ("[bold]baseline[/] " if row.get("baseline") else "") + _plain(row['arch'] or '')
                      + (f"  [dim]({_plain(row['reason'])})[/]" if row["reason"] else "") + f"  · {self._done()}")

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
        err_console.print(f"[bold red]{_plain(e.message)}[/]", highlight=False, soft_wrap=True)


class _TrainingView:
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
        if not self.handlers:  # on the first event: a view that never hears one (`nas best`'s listing) loads no torch
            from nas.retrain import TrainingStarted
            from nas.train import BatchRecord, EpochRecord

            self.handlers = {TrainingStarted: self._started, EpochRecord: self._epoch, BatchRecord: self._batch}
        self.handlers[type(event)](event)

    def _started(self, e: Any) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        if self.per_epoch_lines and not self.quiet:
            self.progress.console.print(f"{_plain(e.arch)}\n{_plain(e.dataset)}: {e.n_train} train / {e.n_held_out} "
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


class _RunView:
    """`nas run`'s events: the search's to a search view, then the retrain's to a training view (routed by their
    type), one live display at a time, and in a log one status line of whichever is at work."""

    def __init__(self, quiet: bool, budget: float):
        from nas import search as searching

        self.search, self.train = _SearchView(None, quiet, budget), _TrainingView(quiet, per_epoch_lines=False)
        self.searched = get_args(searching.Event)
        self.ticker = _Ticker(lambda: (self.train if self.train.started else self.search).status(),
                              on=not quiet and not console.is_terminal)
        self.search.ticker = self.train.ticker = self.ticker

    def show(self, event: Any) -> None:
        if not isinstance(event, self.searched) and not self.train.progress.live.is_started:
            self.search.progress.stop()
            self.train.progress.start()
        (self.search if isinstance(event, self.searched) else self.train).show(event)


def _show_outcome(outcome: Any, json_out: bool) -> None:
    """The end of a search: its counts and best trials; exit 1 if a worker failed or nothing trained."""
    reasons = _count_reasons(outcome.rows) if outcome.nothing_trained and not outcome.gave_up else {}
    if json_out:
        print(json.dumps({"study": outcome.study, "storage": outcome.storage, "trials": sum(outcome.counts.values()),
                          "states": outcome.counts, "workers": outcome.n_workers,
                          "failed_workers": len(outcome.failed_workers), "best": outcome.best,
                          "nothing_trained": outcome.nothing_trained, "reasons": reasons, "gave_up": outcome.gave_up},
                         indent=2))
    else:
        best = f". Pareto front ({', '.join(outcome.objectives)}):" if len(outcome.objectives) > 1 else ". Best:"
        console.print(f"{_tally(outcome.tally)} in study {_plain(repr(outcome.study))}"
                      + (best if outcome.best else "; none completed yet."), highlight=False, soft_wrap=True)
        if outcome.best:
            console.print(_trials_table(outcome.best))
    if outcome.failed_workers:
        err_console.print(f"{len(outcome.failed_workers)} of {names.counted(outcome.n_workers, 'worker')} stopped with an error: "
                          + _plain("; ".join(outcome.failed_workers)), highlight=False, soft_wrap=True)
    if reasons:
        err_console.print((f"error: none of the {len(outcome.rows)} trials of this run trained: " if len(outcome.rows) != 1 else
                           "error: the one trial of this run did not train: ")
                          + _plain("; ".join(f"{n} × {r}" for r, n in reasons.items()))
                          + ". " + _plain(outcome.advice),
                          highlight=False, soft_wrap=True)
    if outcome.gave_up:
        err_console.print(f"error: stopped after {names.counted(outcome.n_trained, 'trained trial')}: "
                          f"{_plain(outcome.gave_up)}", highlight=False, soft_wrap=True)
    if outcome.failed_workers or reasons or outcome.gave_up:
        raise typer.Exit(1)


def _show_best(result: Any, retrain_epochs: int | None, export: Path | None) -> None:
    shown = f"Pareto front ({', '.join(result.objectives)}):" if len(result.objectives) > 1 else "best"
    title = f"{shown} {len(result.rows)} of {_tally(result.tally)} in {result.study!r}"
    console.print(_trials_table(result.rows, title=_text(title)))
    if result.retrained:
        table = Table("rank", "#", "val acc", "test acc", "test − val", "params", "architecture",
                      title=f"top {len(result.retrained)} retrained on train+val for {names.counted(retrain_epochs, 'epoch')}, "
                            "ranked by test accuracy")
        table.columns[-1].overflow = "fold"
        for rank, r in enumerate(result.retrained, 1):
            table.add_row(str(rank), str(r["trial"]), f"{r['val_accuracy']:.4f}", f"{r['test_accuracy']:.4f}",
                          f"{r['gap']:+.4f}", f"{r['n_params']:,}", _text(r["arch"]))
        console.print(table)
    elif result.reproduced:
        console.print(f"trial #{result.reproduced['trial']} trained again as in the search: "
                      f"test accuracy {result.reproduced['test_accuracy']:.4f}")
    m = result.export
    if m:
        console.print(f"exported trial #{m['trial']} to {_plain(export)}: test accuracy [bold]{m['test_accuracy']:.4f}[/] "
                      f"({'retrained on train+val, ' if m['retrained_on_train_and_val'] else ''}{names.counted(m['epochs'], 'epoch')}); "
                      "model.onnx and model.ts match PyTorch within "
                      f"{max(m['onnx_max_abs_diff'], m['torchscript_max_abs_diff']):.1e}", soft_wrap=True)
        if "search_latency_ms" in m:
            console.print(f"ONNX latency measured again after the export: {m['latency_ms']:.3f} ms per image "
                          f"(the search measured {m['search_latency_ms']:.3f} ms), {m['latency_ms_64']:.2f} ms per 64")
        if m.get("recorded_in_study") is False:
            err_console.print("note: the study's storage is read-only, so the export is not recorded in it "
                              "(`nas report` will not show its confusion matrix).", highlight=False)


def _tally(tally: dict[str, int]) -> str:
    """The trials of a study counted as a user reads them: `7 trained trials (2 pruned, 1 failed; 3 nets rejected
    before training)`; rejected nets used up trial numbers but never trained."""
    ended = [f"{tally[k]} {word}" for k, word in (("pruned", "pruned"), ("failed", "failed"), ("running", "running"))
             if tally.get(k)]
    rejected = [f"{names.counted(tally['rejected'], 'net')} rejected before training"] if tally.get("rejected") else []
    said = "; ".join(p for p in (", ".join(ended), *rejected) if p)
    return names.counted(tally.get("trained", 0), "trained trial") + (f" ({said})" if said else "")


def _newest(study: str | None, storage: str, quiet: bool) -> str | None:
    """The study asked for, or without --study the storage's newest, said on stderr when it holds others."""
    if study is not None:
        return study
    from nas import study as studies

    name, note = studies.newest_study(storage)
    if note and not quiet:
        err_console.print(f"note: {_plain(note)}", highlight=False, soft_wrap=True)
    return name or None


def _count_reasons(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many trials ended for each kind of reason (the words before its first colon), keyed by the first
    reason of that kind as an example."""
    examples: dict[str, str] = {}
    counts: dict[str, int] = {}
    for r in rows:
        reason = r["reason"] or r["state"]
        kind = reason.split(":")[0]
        examples.setdefault(kind, reason)
        counts[examples[kind]] = counts.get(examples[kind], 0) + 1
    return counts


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


def _progress(quiet: bool) -> Any:
    """A transient Rich progress display; disabled (but still usable) when quiet or when no terminal shows it
    (a log gets `_Ticker`'s lines instead)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, disable=quiet or not console.is_terminal)


def _trials_table(rows: list[dict[str, Any]], title: Text | None = None) -> Table:
    timed = any(r.get("latency_ms") is not None for r in rows)  # measured when an objective or constraint asked
    table = Table("#", "val acc", "params", "MFLOPs", *(["latency ms"] if timed else []), "epochs", "seconds",
                  "architecture", title=title)
    table.columns[-1].overflow = "fold"
    for r in rows:
        latency = [f"{r['latency_ms']:.3f}" if r.get("latency_ms") is not None else "-"] if timed else []
        table.add_row(str(r["number"]), f"{r['val_accuracy']:.4f}", f"{r['n_params']:,}", f"{r['flops'] / 1e6:.2f}",
                      *latency, str(r["epochs_run"]), f"{r['seconds']:.1f}", _text(r["arch"]))
    return table


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
