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
    typer.Option("--dataset", help="fashion-mnist, mnist, kmnist, cifar10 or a .npz path (default: the space's)."),
]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding the dataset's files.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", callback=_check_device)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the split, sampler and training.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing export folder.")]


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input becomes one clear paragraph on stderr and exit status 2, never a traceback."""
    try:
        yield
    except NasError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)


# ---------------------------------------------------------------------------------------------


@app.command()
def search(
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
) -> None:
    """Run a study, or continue it: trials are added to what the study already has."""
    with _user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from nas import data, objective, space as spaces, study as studies, train

        studies.quiet_optuna()
        sp = spaces.load_space(space)
        baselines = spaces.baseline_params(sp)  # fail on a bad baseline before any work
        dev = train.pick_device(device)
        ds = data.load_dataset(dataset or sp.dataset, data_dir)
        epochs = epochs or sp.epochs
        wanted = {"dataset": ds.name, "val_fraction": sp.val_fraction, "split_seed": seed, "subset": subset or sp.subset}
        st = studies.open_study(study or sp.name, storage, sampler, pruner, seed, epochs, wanted, baselines, heartbeat)
        split = st.user_attrs["data"]  # a resumed study keeps the split it started with
        prepared = objective.prepare_search_data(ds, split["val_fraction"], split["split_seed"], dev, split["subset"])
        n_done = len(st.get_trials(deepcopy=False, states=studies.FINISHED))
        console.print(
            f"study [bold]{st.study_name}[/] in {storage}: {n_done} finished trials so far"
            f"{f', {len(baselines)} baselines first' if baselines and not n_done else ''}; "
            f"{ds.name} {len(prepared.train)} train / {len(prepared.val)} val images on {dev}, {epochs} epochs per trial"
        )
        state: dict[str, Any] = {"done": 0, "pruned": 0}
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("starting", total=trials)

            def on_epoch(number: int, record: Any) -> None:
                best = _best_value(st)
                bar.update(task, description=(
                    f"trial {state['done'] + 1}/{trials} (#{number}) epoch {record.epoch}/{epochs} "
                    f"val {record.val_acc:.4f}" + (f" · best {best:.4f}" if best is not None else "")
                    + f" · pruned {state['pruned']}"))

            def on_trial(_study: Any, t: Any) -> None:
                state["done"] += 1
                state["pruned"] += t.state.name == "PRUNED"
                bar.update(task, advance=1, description=f"trial {state['done'] + 1}/{trials} starting · pruned {state['pruned']}")
                row = studies.trial_row(t)
                value = f"{row['val_accuracy']:.4f}" if row["val_accuracy"] is not None else "  -   "
                bar.console.print(f"#{t.number:<4} {row['state']:<8} val {value}  {row['seconds'] or 0:6.1f}s  "
                                  f"{row['arch']}" + (f"  [dim]({row['reason']})[/]" if row["reason"] else ""),
                                  highlight=False)

            obj = objective.Objective(sp, prepared, epochs, dev, seed, on_epoch=on_epoch)
            try:
                studies.run_search(st, obj, trials, timeout, on_trial)
            except KeyboardInterrupt:
                given = {"--dataset": dataset, "--data-dir": data_dir, "--epochs": epochs if epochs != sp.epochs else None}
                extra = "".join(f" {k} {v}" for k, v in given.items() if v is not None)
                err_console.print(
                    f"interrupted: {state['done']} finished trials of this run are saved, the running one is marked "
                    f"failed (interrupted). Resume with: nas search --space {space} --study {st.study_name} "
                    f"--storage {storage}{extra} --trials {trials - state['done']}", highlight=False, soft_wrap=True)
                raise typer.Exit(130)
        rows = [studies.trial_row(t) for t in _top_or_empty(st, 5)]
        states = [t.state.name.lower() for t in st.trials]
        counts = ", ".join(f"{states.count(s)} {word}" for s, word in (("pruned", "pruned"), ("fail", "failed")) if s in states)
        console.print(f"{len(st.trials)} trials in study {st.study_name!r}" + (f" ({counts})" if counts else "") + ". Best:")
        console.print(_trials_table(rows))


@app.command()
def best(
    study: StudyOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    top: Annotated[int, typer.Option("--top", min=1, help="How many trials to show.")] = 5,
    export: Annotated[Optional[Path], typer.Option("--export", help="Write the best model to this folder.")] = None,
    retrain_epochs: Annotated[
        Optional[int], typer.Option("--retrain-epochs", min=1, help="With --export: retrain on train+val this long.")
    ] = None,
    force: ForceOpt = False,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Show the best trials; with --export, train the winner and write model.pt, arch.yaml, metrics.json."""
    with _user_errors():
        from nas import study as studies

        studies.quiet_optuna()
        st = studies.load_study(study, storage)
        trials = studies.top_trials(st, top)
        rows = [studies.trial_row(t) for t in trials]
        metrics = None
        if export is not None:
            from nas import data, export as exporting, train

            ds = data.load_dataset(dataset or st.user_attrs["data"]["dataset"], data_dir)
            metrics = exporting.export_trial(
                trials[0], st, ds, export, train.pick_device(device), retrain_epochs, force,
                on_epoch=None if json_out else _print_epoch,
            )
        if json_out:
            print(json.dumps({"study": st.study_name, "trials": rows, "export": metrics}, indent=2))
            return
        console.print(_trials_table(rows, title=f"best of {len(st.trials)} trials in {st.study_name!r}"))
        if metrics:
            console.print(
                f"exported trial #{metrics['trial']} to {export}: test accuracy [bold]{metrics['test_accuracy']:.4f}[/] "
                f"({'retrained on train+val, ' if metrics['retrained_on_train_and_val'] else ''}{metrics['epochs']} epochs)"
            )


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
) -> None:
    """Train one fixed architecture on the whole training set and score it on the test set."""
    with _user_errors():
        from nas import data, export as exporting, objective, space as spaces, train

        sp = spaces.load_space(space)
        spec = spaces.sample(sp)
        dev = train.pick_device(device)
        ds = data.load_dataset(dataset or sp.dataset, data_dir)
        prepared = objective.prepare_final_data(ds, dev)
        epochs = epochs or sp.epochs
        if not json_out:
            console.print(f"{spec.describe()}\n{ds.name}: {len(prepared.train)} train / {len(prepared.val)} test images on {dev}")
        model, history = objective.train_spec(spec, prepared, epochs, seed, dev, None if json_out else _print_epoch)
        metrics = {"epochs": epochs, "seed": seed} | exporting.describe_model(model, spec, ds)
        metrics |= objective.score_on_test(model, prepared.val, ds.classes)
        metrics["seconds_per_epoch"] = sum(r.seconds for r in history) / len(history)
        if export is not None:
            exporting.write_export(export, model, spec, metrics | {"study": sp.name}, force)
        if json_out:
            print(json.dumps(metrics | {"history": [r.to_dict() for r in history]}, indent=2))
            return
        console.print(
            f"test accuracy [bold]{metrics['test_accuracy']:.4f}[/], {metrics['n_params']:,} parameters, "
            f"{metrics['flops'] / 1e6:.2f} MFLOPs, {metrics['seconds_per_epoch']:.2f} s/epoch"
            + (f"; written to {export}" if export else "")
        )


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
                info = models.model_info(models.build_model(spec, shape, n_classes), shape)
            except models.ShapeError as e:
                console.print(f"  invalid, would be pruned before training: {e}")
                continue
            shapes = " → ".join(f"{'×'.join(map(str, s))}" for name, s in info.layers if name in ("MaxPool2d", "AvgPool2d", "Linear"))
            over = sp.max_params is not None and info.n_params > sp.max_params
            console.print(f"  {'×'.join(map(str, shape))} → {shapes}; {info.n_params:,} parameters"
                          f"{' (over max_params: pruned)' if over else ''}, {info.flops / 1e6:.2f} MFLOPs")


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


def _best_value(st: Any) -> float | None:
    try:
        return st.best_value
    except ValueError:  # no completed trial yet
        return None


def _top_or_empty(st: Any, k: int) -> list:
    from nas import study as studies

    try:
        return studies.top_trials(st, k)
    except studies.StudyError:
        return []


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
