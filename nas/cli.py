"""The `nas` command line: each command parses, calls the library, and renders with Rich.

This is the only module that prints or exits. Heavy modules (torch, optuna) are imported inside
the commands, so `nas --help` stays fast.
"""

from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nas.errors import NasError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Search CNN architectures and training hyperparameters for image classification (Optuna + PyTorch).",
)
console = Console()
err_console = Console(stderr=True)

DEFAULT_STORAGE = "sqlite:///studies/nas.db"


def _check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
        raise typer.BadParameter(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def _check_workers(value: str) -> str:
    if value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise typer.BadParameter(f"expected a count ≥ 1 or auto, got {value!r}")
    return value


def _one_of(*allowed: str):
    def check(value: str) -> str:
        if value not in allowed:
            raise typer.BadParameter(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


SpaceOpt = Annotated[Path, typer.Option("--space", help="Search space YAML file.", dir_okay=False)]
StudyOpt = Annotated[Optional[str], typer.Option("--study", help="Study name (default: the space's name).")]
StorageOpt = Annotated[str, typer.Option("--storage", help="Optuna storage URL (SQLite file or PostgreSQL).")]
DatasetOpt = Annotated[
    Optional[str],
    typer.Option("--dataset", help="fashion-mnist, mnist, kmnist, cifar10, an .npz file or an image folder "
                                   "(default: the space's)."),
]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding the dataset's files.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", callback=_check_device)]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**31 - 1,  # Optuna's samplers take 32-bit seeds, plus offsets
                                      help="Seed of the split, sampler and training.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing export folder.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; only the result.")]


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input becomes one clear paragraph on stderr and exit status 2, never a traceback."""
    try:
        yield
    except NasError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


# ---------------------------------------------------------------------------------------------


@app.command()
def search(
    ctx: typer.Context,
    space: SpaceOpt,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials to run now (added to the study).")] = 20,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=1, help="Stop after this many seconds.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs per trial (default: the space's).")] = None,
    subset: Annotated[Optional[int], typer.Option("--subset", min=10, help="Search on N training images.")] = None,
    study: StudyOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    sampler: Annotated[str, typer.Option("--sampler", callback=_one_of("tpe", "random"), help="tpe or random.")] = "tpe",
    pruner: Annotated[
        str, typer.Option("--pruner", callback=_one_of("median", "hyperband", "none"), help="median, hyperband or none.")
    ] = "median",
    heartbeat: Annotated[
        int, typer.Option("--heartbeat", min=1, help="Seconds between liveness beats; a trial silent for 3 beats is re-run.")
    ] = 10,
    workers: Annotated[
        str, typer.Option("--workers", callback=_check_workers, help="Worker processes on this machine: N or auto.")
    ] = "1",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run a study, or continue it: trials are added to what the study already has.

    SIGINT (Ctrl-C), SIGTERM and SIGHUP stop it cleanly: the running trials are recorded as failed
    (interrupted), and the command exits with 128 + the signal's number and prints how to resume.
    """
    with _user_errors():
        from nas import search as searching

        job = searching.SearchJob(
            space=space, study=study, storage=storage, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
            device=device, epochs=epochs, subset=subset, sampler=sampler, pruner=pruner, seed=seed,
            heartbeat=heartbeat, trials=trials, timeout=timeout, workers=None if workers == "auto" else int(workers),
        )
        view = _SearchView(trials, quiet or json_out)
        try:
            with view.progress:
                outcome = searching.run(job, view.show)
        except searching.Interrupted as e:
            left = trials - e.n_done
            err_console.print(
                f"interrupted by {e}: {e.n_done} finished trial{'s' * (e.n_done != 1)} of this run saved, the running "
                f"ones marked failed (interrupted). Resume with: "
                f"{searching.resume_command(_given_options(ctx, 'trials'), left)}",
                highlight=False, soft_wrap=True)
            raise typer.Exit(e.status) from None
        _show_outcome(outcome, json_out)


class _SearchView:
    """Renders a search's events: a live progress line, one line per finished trial, worker errors."""

    def __init__(self, trials: int, quiet: bool):
        self.trials, self.quiet = trials, quiet
        self.done = self.pruned = 0
        self.best: float | None = None
        self.epochs = 0
        self.progress = _progress(quiet)
        self.task = self.progress.add_task("starting", total=trials)

    def show(self, event: Any) -> None:
        from nas import search as searching

        say = self.progress.console.print
        if isinstance(event, searching.Started):
            self.best, self.epochs = event.best, event.epochs
            if not self.quiet:
                say(f"study [bold]{event.study}[/] in {event.storage}: {event.n_finished} finished trials so far"
                    f"{f', {event.n_baselines} baselines first' if event.n_baselines and not event.n_finished else ''}; "
                    f"{event.n_train} train / {event.n_val} val images on {', '.join(event.devices)}, {event.epochs} "
                    "epochs per trial" + (f"; {event.n_workers} workers × {event.threads} thread"
                                          f"{'s' if event.threads > 1 else ''}" if event.n_workers > 1 else ""))
        elif isinstance(event, searching.EpochDone):
            r = event.record
            self.progress.update(self.task, description=(
                f"trial {self.done + 1}/{self.trials} (#{event.trial}) epoch {r.epoch}/{self.epochs} val {r.val_acc:.4f}"
                + (f" · best {self.best:.4f}" if self.best is not None else "") + f" · pruned {self.pruned}"))
        elif isinstance(event, searching.TrialDone):
            row = event.row
            self.done += 1
            self.pruned += row["state"] == "pruned"
            if row["state"] == "complete":
                self.best = max(self.best or 0.0, row["val_accuracy"])
            self.progress.update(self.task, advance=1,
                                 description=f"trial {self.done + 1}/{self.trials} starting · pruned {self.pruned}")
            if not self.quiet:
                value = f"{row['val_accuracy']:.4f}" if row["val_accuracy"] is not None else "  -   "
                say(f"#{row['number']:<4} {row['state']:<8} val {value}  {row['seconds'] or 0:6.1f}s  {row['arch']}"
                    + (f"  [dim]({escape(row['reason'])})[/]" if row["reason"] else ""), highlight=False)
        elif isinstance(event, searching.WorkerFailed):
            err_console.print(f"[bold red]{escape(event.message)}[/]", highlight=False, soft_wrap=True)


def _show_outcome(outcome: Any, json_out: bool) -> None:
    """The end of a search: its counts and best trials; exit 1 if a worker failed or nothing trained."""
    reasons = _count_reasons(outcome.rows) if outcome.nothing_trained else {}
    if json_out:
        print(json.dumps({"study": outcome.study, "storage": outcome.storage, "trials": sum(outcome.counts.values()),
                          "states": outcome.counts, "workers": outcome.n_workers,
                          "failed_workers": len(outcome.failed_workers), "best": outcome.best,
                          "nothing_trained": outcome.nothing_trained, "reasons": reasons}, indent=2))
    else:
        counts = ", ".join(f"{outcome.counts[s]} {word}" for s, word in (("pruned", "pruned"), ("fail", "failed"))
                           if s in outcome.counts)
        console.print(f"{sum(outcome.counts.values())} trials in study {outcome.study!r}"
                      + (f" ({counts})" if counts else "") + (". Best:" if outcome.best else "; none completed yet."))
        if outcome.best:
            console.print(_trials_table(outcome.best))
    if outcome.failed_workers:
        err_console.print(f"{len(outcome.failed_workers)} of {outcome.n_workers} workers stopped with an error: "
                          + "; ".join(outcome.failed_workers), highlight=False, soft_wrap=True)
    if reasons:
        err_console.print(f"error: none of the {len(outcome.rows)} trials of this run trained: "
                          + "; ".join(f"{n} × {r}" for r, n in reasons.items())
                          + ". Fix the space or the data those reasons point at, then run it again.",
                          highlight=False, soft_wrap=True)
    if outcome.failed_workers or reasons:
        raise typer.Exit(1)


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


@app.command()
def best(
    study: StudyOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    top: Annotated[
        Optional[int],
        typer.Option("--top", min=1, help="Trials to show (default 5); with --retrain-epochs, how many to retrain (default 1)."),
    ] = None,
    export: Annotated[Optional[Path], typer.Option("--export", help="Write the best model to this folder.")] = None,
    retrain_epochs: Annotated[
        Optional[int],
        typer.Option("--retrain-epochs", min=1, help="Retrain the top trials on train+val this long and rank them on test."),
    ] = None,
    force: ForceOpt = False,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show the best trials; retrain the top ones and rank them on test; export the winner.

    --export writes model.pt, arch.yaml, metrics.json, model.onnx and model.ts. Without
    --retrain-epochs it repeats the best trial's own training; with it, the top K (--top, default 1)
    are retrained on train+val, ranked by test accuracy, and the first is exported.
    """
    with _user_errors():
        from nas import study as studies

        studies.quiet_optuna()
        st = studies.load_study(study, storage)
        trials = studies.top_trials(st, top or 5)
        rows = [studies.trial_row(t) for t in trials]
        trained, metrics = [], None
        if export is not None or retrain_epochs:
            from nas import data, export as exporting, train
            from nas.files import check_export_target

            if export is not None:
                check_export_target(export, force)  # before any training
            ds = data.load_dataset(dataset or st.user_attrs["data"]["dataset"], data_dir)
            dev = train.pick_device(device)
            candidates = trials[: top or 1] if retrain_epochs else trials[:1]
            with _progress(quiet or json_out) as bar:
                for i, t in enumerate(candidates, 1):
                    epochs = retrain_epochs or t.user_attrs["epochs"]
                    task = bar.add_task(f"training #{t.number} ({i}/{len(candidates)})", total=epochs)
                    trained.append(exporting.retrain_trial(t, st, ds, dev, retrain_epochs,
                                                           on_epoch=lambda r, task=task: bar.advance(task)))
                    bar.remove_task(task)
            trained.sort(key=lambda m: m.metrics["test_accuracy"], reverse=True)
            if export is not None:
                metrics = exporting.export_trained(trained[0], export, st, force)
        retrained = [_retrained_row(m.metrics) for m in trained]
        if json_out:
            print(json.dumps({"study": st.study_name, "trials": rows, "retrained": retrained, "export": metrics}, indent=2))
            return
        console.print(_trials_table(rows, title=f"best of {len(st.trials)} trials in {st.study_name!r}"))
        if retrain_epochs:
            table = Table("rank", "#", "val acc", "test acc", "test − val", "params", "architecture",
                          title=f"top {len(trained)} retrained on train+val for {retrain_epochs} epochs, ranked by test accuracy")
            table.columns[-1].overflow = "fold"
            for rank, r in enumerate(retrained, 1):
                table.add_row(str(rank), str(r["trial"]), f"{r['val_accuracy']:.4f}", f"{r['test_accuracy']:.4f}",
                              f"{r['gap']:+.4f}", f"{r['n_params']:,}", r["arch"])
            console.print(table)
        elif trained:
            console.print(f"trial #{trained[0].metrics['trial']} trained again as in the search: "
                          f"test accuracy {trained[0].metrics['test_accuracy']:.4f}")
        if metrics:
            console.print(
                f"exported trial #{metrics['trial']} to {export}: test accuracy [bold]{metrics['test_accuracy']:.4f}[/] "
                f"({'retrained on train+val, ' if metrics['retrained_on_train_and_val'] else ''}{metrics['epochs']} epochs); "
                f"model.onnx and model.ts match PyTorch within {max(metrics['onnx_max_abs_diff'], metrics['torchscript_max_abs_diff']):.1e}"
            )
            if metrics.get("recorded_in_study") is False:
                err_console.print("note: the study's storage is read-only, so the export is not recorded in it "
                                  "(`nas report` will not show its confusion matrix).", highlight=False)


@app.command("train")
def train_cmd(
    space: SpaceOpt,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs (default: the space's).")] = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    export: Annotated[Optional[Path], typer.Option("--export", help="Also write the trained model here.")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train one fixed architecture on the whole training set and score it on the test set."""
    with _user_errors():
        from nas import data, export as exporting, pipeline, space as spaces, train
        from nas.files import check_export_target

        sp = spaces.load_space(space)
        spec = spaces.sample(sp)
        dev = train.pick_device(device)
        if export is not None:
            check_export_target(export, force)  # before the training, not after it
        ds = data.load_dataset(dataset or sp.dataset, data_dir)
        _, too_large = pipeline.assess(spec, ds.input_shape, ds.n_classes, dev, sp.max_params, sp.max_mflops)
        if too_large:
            raise NasError(f"{space}: the network is {too_large}; make it smaller (or raise the constraint).")
        prepared = pipeline.prepare_final_data(ds, dev)
        epochs = epochs or sp.epochs
        quiet = quiet or json_out
        if not quiet:
            console.print(f"{spec.describe()}\n{ds.name}: {len(prepared.train)} train / {len(prepared.test)} test images on {dev}")
        model, history = pipeline.train_spec(spec, prepared, epochs, seed, dev, None if quiet else _print_epoch)
        metrics = {"epochs": epochs, "seed": seed} | exporting.describe_model(model, spec, ds)
        metrics |= pipeline.score_on_test(model, prepared.test, ds.classes)
        metrics["seconds_per_epoch"] = sum(r.seconds for r in history) / len(history)
        if export is not None:
            metrics = exporting.write_export(export, model, spec, metrics | {"study": sp.name}, prepared.test.x, force)
        if json_out:
            print(json.dumps(metrics | {"history": [r.to_dict() for r in history]}, indent=2))
            return
        console.print(
            f"test accuracy [bold]{metrics['test_accuracy']:.4f}[/], {metrics['n_params']:,} parameters, "
            f"{metrics['flops'] / 1e6:.2f} MFLOPs, {metrics['seconds_per_epoch']:.2f} s/epoch"
            + (f"; written to {export}" if export else "")
        )


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
            console.print(f"{r['file']}: " + ", ".join(f"[bold]{c['class']}[/] {c['probability']:.3f}" if j == 0 else
                                                      f"{c['class']} {c['probability']:.3f}" for j, c in enumerate(r["top"])),
                          highlight=False, soft_wrap=True)


@app.command()
def validate(
    space: SpaceOpt,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Sampled architectures to show.")] = 3,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Check a space file; show its dimensions, its size and a few sampled architectures."""
    with _user_errors():
        import optuna

        from nas import data, model as models, space as spaces, study as studies

        sp = spaces.load_space(space)
        baselines = spaces.baseline_params(sp)
        shape, n_classes = data.dataset_shape(dataset or sp.dataset, data_dir)
        dims = sp.dimensions()
        n_discrete, n_continuous = spaces.n_combinations(sp)
        table = Table("parameter", "values", title=f"space {sp.name!r} ({space})")
        for name, dim in dims.items():
            table.add_row(name, spaces.dim_text(dim))
        console.print(table if dims else f"{space}: a fixed architecture (constants only).")
        size = f"{n_discrete:,} discrete combinations" + (f" × {n_continuous} continuous dimensions" if n_continuous else "")
        console.print(f"size: {size}; {len(baselines)} baselines; input {shape}, {n_classes} classes; "
                      f"{sp.epochs} epochs per trial")
        studies.quiet_optuna()
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        for i in range(samples if dims else 1):
            spec = spaces.sample(sp, study.ask())
            console.print(f"\n[bold]sample {i + 1}[/]: {spec.describe()}", highlight=False)
            try:
                info = models.spec_info(spec, shape, n_classes)  # nothing allocated
            except models.ShapeError as e:
                console.print(f"  invalid, would be pruned before training: {e}")
                continue
            shapes = " → ".join(f"{'×'.join(map(str, s))}" for name, s in info.layers if name in ("MaxPool2d", "AvgPool2d", "Linear"))
            over = sp.max_params is not None and info.n_params > sp.max_params
            console.print(f"  {'×'.join(map(str, shape))} → {shapes}; {info.n_params:,} parameters"
                          f"{' (over max_params: pruned)' if over else ''}, {info.flops / 1e6:.2f} MFLOPs")


@app.command()
def report(
    study: StudyOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.", dir_okay=False)] = Path("report.html"),
    json_out: JsonOpt = False,
) -> None:
    """Write one self-contained HTML report of a study (opens offline): curves, importances, Pareto fronts."""
    with _user_errors():
        from nas import report as reporting, study as studies

        studies.quiet_optuna()
        st = studies.load_study(study, storage)
        summary = reporting.write_report(st, out, storage)
        if json_out:
            print(json.dumps({"report": str(out), "summary": summary}, indent=2, default=str))
            return
        console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) for study {st.study_name!r}: "
                      f"{sum(summary['counts'].values())} trials, best {summary['best']['val_accuracy']:.4f}"
                      + ("" if summary["export"] else "; no export yet (`nas best --export DIR` adds the confusion matrix)"))


@app.command()
def dashboard(
    study: StudyOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to serve on (0: any free one).")] = 8080,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
) -> None:
    """Serve optuna-dashboard on the study's storage until Ctrl-C."""
    with _user_errors():
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        import optuna
        import optuna_dashboard

        from nas import study as studies

        studies.quiet_optuna()
        rdb = studies.open_storage(storage, create=False)
        names = optuna.get_all_study_names(rdb)
        page = "dashboard/"
        if study is not None or len(names) == 1:
            st = studies.load_study(study, storage, nas_only=False)  # optuna-dashboard shows any study
            page = f"dashboard/studies/{rdb.get_study_id_from_name(st.study_name)}"

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:  # no line per request
                pass

        try:
            server = make_server(host, port, optuna_dashboard.wsgi(rdb), handler_class=Quiet)
        except OSError as e:
            raise NasError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port, or 0 for any free one.") from e
        url = f"http://{host}:{server.server_port}/{page}"
        console.print(f"optuna-dashboard for {storage} at {url}  (Ctrl-C stops it)", highlight=False, soft_wrap=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            console.print("dashboard stopped")
        finally:
            server.server_close()


@app.command("studies")
def studies_cmd(storage: StorageOpt = DEFAULT_STORAGE, json_out: JsonOpt = False) -> None:
    """List the studies in a storage."""
    with _user_errors():
        from nas import study as studies

        studies.quiet_optuna()
        rows = studies.list_studies(storage)
        if json_out:
            print(json.dumps(rows, indent=2))
            return
        table = Table("study", "trials", "best val acc", "started", title=storage)
        for r in rows:
            table.add_row(r["name"], str(r["trials"]), f"{r['best']:.4f}" if r["best"] is not None else "-", r["started"] or "-")
        console.print(table if rows else f"no studies in {storage} yet: run `nas search`.")


# ---------------------------------------------------------------------------------------------


def _print_epoch(record: Any) -> None:
    console.print(f"epoch {record.epoch:>3}  loss {record.loss:.4f}  train {record.train_acc:.4f}  "
                  f"eval {record.val_acc:.4f}  {record.seconds:.2f}s", highlight=False)


def _progress(quiet: bool) -> Any:
    """A transient Rich progress display; disabled (but still usable) when quiet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, disable=quiet)


def _retrained_row(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("trial", "val_accuracy", "test_accuracy", "epochs", "retrained_on_train_and_val", "n_params", "flops", "arch")
    return {k: m[k] for k in keys} | {"gap": m["test_accuracy"] - m["val_accuracy"]}


def _trials_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table("#", "val acc", "params", "MFLOPs", "epochs", "seconds", "architecture", title=title)
    table.columns[-1].overflow = "fold"
    for r in rows:
        table.add_row(
            str(r["number"]), f"{r['val_accuracy']:.4f}", f"{r['n_params']:,}", f"{r['flops'] / 1e6:.2f}",
            str(r["epochs_run"]), f"{r['seconds']:.1f}", r["arch"],
        )
    return table


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
