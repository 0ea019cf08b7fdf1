"""Side by side, in one run: a search for (accuracy, latency) with no pruner, with the pareto pruner and,
given a checkout of optunahub-registry (`--optunahub PATH`), with OptunaHub's MultiMetricPruner (Pareto
ranks at each epoch handed to Optuna's median or percentile pruner), over one or more seeds.

Every arm runs the same number of trials of the built-in space for the dataset (or --space), with the
same seed, in this process (one worker: the rival is patched in here and cannot reach forked workers),
each on its own fresh SQLite study; the pruner is the only difference. The sampler is random search by
default, so that every arm draws the same nets (TPE would steer each arm by what its pruner let it see:
`--sampler tpe` measures that instead). The rival sees what ours sees: at each epoch but the last, the
validation accuracy and the latency measured before training, and stops the trial when its base pruner
says so. For each seed and arm it prints the wall time, the trials pruned, the front (validation accuracy,
ONNX latency at batch 1) and its hypervolume, then each arm's mean over the seeds and its ratios to `none`,
hypervolume per hour included. A seed's hypervolumes are taken against one reference point, the worst
accuracy and the worst latency of any completed trial of any of its arms (the nadir), so they measure the
area each front covers within what that seed's searches saw.

    python bench/pareto.py [--dataset fashion-mnist] [--trials 30] [--seeds 0,1,2] [--space FILE] [--sampler random]
                           [--subset N] [--epochs N] [--optunahub PATH] [--rivals median,percentile25]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from nas import search as searching, study as studies  # noqa: E402
from nas.objective import Objective  # noqa: E402

# Optuna's pruners, as nas configures its own (nas.study.PRUNERS). Successive halving and Hyperband cannot
# be wrapped: they record their rungs on the trial, and the rival hands them a made-up trial that no
# storage holds (KeyError: 'No trial with trial_id -1 exists.', optunahub-registry of 2026-12).
RIVAL_BASES = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    "percentile25": lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=1),
}
MULTI_METRIC = "package/pruners/multi_metric_pruner"  # where the registry keeps the rival


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` (accuracy maximised, latency minimised) and bounded by `ref`."""
    front = sorted((p for p in points if p[0] > ref[0] and p[1] < ref[1]), key=lambda p: p[1])
    area, best = 0.0, ref[0]
    for (acc, lat), nxt in zip(front, [p[1] for p in front[1:]] + [ref[1]]):
        best = max(best, acc)
        area += (best - ref[0]) * (nxt - lat)
    return area


def load_multi_metric(checkout: Path) -> ModuleType:
    """OptunaHub's multi_metric_pruner package, imported from a checkout of optunahub-registry (or the package
    folder itself): the registry's own code, as `optunahub.load_module` would fetch it, without the network."""
    folder = checkout / MULTI_METRIC if (checkout / MULTI_METRIC).is_dir() else checkout
    spec = importlib.util.spec_from_file_location("multi_metric_pruner", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or not (folder / "__init__.py").is_file():
        sys.exit(f"--optunahub {checkout}: no {MULTI_METRIC}/__init__.py there (pass a checkout of optunahub-registry)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def rival_pruning(hub: ModuleType, base: str) -> Iterator[None]:
    """While inside, a search run with `--pruner pareto` asks the rival instead of nas's pareto rule."""
    def prune(self: Objective, trial: optuna.Trial, record: Any) -> None:
        if record.epoch >= self.epochs:
            return  # the last epoch is paid for: as ours, the rival does not throw it away
        if not isinstance(trial.study.pruner, hub.MultiMetricPruner):
            trial.study.pruner = hub.MultiMetricPruner(RIVAL_BASES[base](), joint=True,
                                                       metric_directions={"accuracy": "maximize", "latency": "minimize"})
        ranked = hub.MultiMetricPrunerTrial(trial)
        ranked.report({"accuracy": record.val_acc, "latency": trial.user_attrs["latency_ms"]}, record.epoch)
        if ranked.should_prune():
            trial.set_user_attr("reason", f"pruned at epoch {record.epoch} by MultiMetricPruner({base})")
            raise optuna.TrialPruned()

    ours = Objective._pareto_prune
    Objective._pareto_prune = prune
    try:
        yield
    finally:
        Objective._pareto_prune = ours


def arm(name: str, seed: int, tmp: str, args: argparse.Namespace, hub: ModuleType | None) -> dict:
    """One search of the arm `name` (none, pareto or mmp-BASE) with `seed`: its time, counts and points."""
    storage, study_name = f"sqlite:///{tmp}/{name}-{seed}.db", f"{name}-{seed}"
    rival = rival_pruning(hub, name.removeprefix("mmp-")) if name.startswith("mmp-") else contextlib.nullcontext()
    start = time.perf_counter()
    with rival:
        outcome = searching.run(searching.SearchJob(
            space=args.space, storage=storage, study=study_name, dataset=args.dataset, data_dir=args.data_dir,
            seed=seed, trials=args.trials, workers=1, objectives=("accuracy", "latency"),
            pruner="none" if name == "none" else "pareto", sampler=args.sampler, subset=args.subset,
            epochs=args.epochs), lambda e: None)
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.trials if t.state == studies.State.COMPLETE]
    return {"arm": name, "seed": seed, "seconds": seconds, "trained": outcome.n_trained,
            "pruned": sum(r["state"] == "pruned" and not r["rejected"] for r in outcome.rows),
            "points": [tuple(t.values) for t in done], "front": [tuple(t.values) for t in study.best_trials]}


def show_seed(runs: list[dict], args: argparse.Namespace) -> None:
    """Score one seed's arms against their common nadir and print them."""
    every = [pt for r in runs for pt in r["points"]]
    ref = (min(a for a, _ in every), max(lat for _, lat in every))
    print(f"seed {runs[0]['seed']}: {args.trials} trials of {args.space or 'the built-in space'} on {args.dataset}, "
          f"{args.sampler} sampler; hypervolume against (accuracy {ref[0]:.4f}, latency {ref[1]:.3f} ms)", flush=True)
    for r in runs:
        r["hv"] = hypervolume(r["front"], ref)
        front = ", ".join(f"{a:.4f}/{lat:.3f}ms" for a, lat in sorted(r["front"], key=lambda pt: pt[1]))
        print(f"  {r['arm']:10}  {r['seconds'] / 60:5.1f} min  {r['trained']} trained, {r['pruned']} pruned  "
              f"front of {len(r['front'])}: {front}  hypervolume {r['hv']:.5f}", flush=True)


def show_summary(runs: list[dict], arms: list[str]) -> None:
    """Each arm's means over the seeds, and its ratios to `none` (per seed, then averaged)."""
    print("\n| arm | wall (mean) | pruned (mean) | front size (mean) | hypervolume (mean) | time / none | "
          "hypervolume / none | hypervolume per hour / none |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    none = {r["seed"]: r for r in runs if r["arm"] == "none"}
    for name in arms:
        mine = [r for r in runs if r["arm"] == name]
        time_ratio = [r["seconds"] / none[r["seed"]]["seconds"] for r in mine]
        hv_ratio = [r["hv"] / none[r["seed"]]["hv"] if none[r["seed"]]["hv"] else float("nan") for r in mine]
        rate = [h / t for h, t in zip(hv_ratio, time_ratio)]
        print(f"| {name} | {statistics.mean(r['seconds'] for r in mine) / 60:.1f} min | "
              f"{statistics.mean(r['pruned'] for r in mine):.1f} | {statistics.mean(len(r['front']) for r in mine):.1f} | "
              f"{statistics.mean(r['hv'] for r in mine):.5f} | {statistics.mean(time_ratio):.2f} | "
              f"{statistics.mean(hv_ratio):.3f} | {statistics.mean(rate):.2f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--space", type=Path, help="a space file (default: the built-in space for the dataset)")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--seeds", default="0", help="comma-separated: each seed runs every arm")
    p.add_argument("--subset", type=int, help="training images per trial (default: the space's)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the space's)")
    p.add_argument("--sampler", default="random", choices=["random", "tpe"])
    p.add_argument("--optunahub", type=Path, help="a checkout of optunahub-registry: adds the MultiMetricPruner arms")
    p.add_argument("--rivals", default="median", help=f"base pruners of the MultiMetricPruner arms, of {', '.join(RIVAL_BASES)}")
    args = p.parse_args()
    hub = load_multi_metric(args.optunahub) if args.optunahub else None
    arms = ["none", "pareto"] + ([f"mmp-{b}" for b in args.rivals.split(",")] if hub else [])
    if hub and not set(args.rivals.split(",")) <= set(RIVAL_BASES):
        sys.exit(f"--rivals {args.rivals}: expected some of {', '.join(RIVAL_BASES)}")
    studies.quiet_optuna()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            mine = [arm(name, seed, tmp, args, hub) for name in arms]
            show_seed(mine, args)
            runs += mine
    show_summary(runs, arms)


if __name__ == "__main__":
    main()
