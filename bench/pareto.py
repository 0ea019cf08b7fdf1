"""Side by side, in one run: a search for (accuracy, latency) with and without the pareto pruner.

Both arms run the same number of trials of the built-in space for the dataset (or --space), with
the same seed, each on its own fresh SQLite study; the pruner is the only difference. The sampler is
random search by default, so that both arms draw the same nets and the pruner is the only difference
(TPE would steer each arm by what its pruner let it see: `--sampler tpe` measures that instead). For each arm it prints the wall
time, the trials pruned, the front (validation accuracy, ONNX latency at batch 1) and its hypervolume,
then the ratios. The hypervolume of both fronts is taken against one reference point, the worst
accuracy and the worst latency of any completed trial of either arm (the nadir), so it measures the
area the front covers within what the searches saw.

    python bench/pareto.py [--dataset fashion-mnist] [--trials 30] [--seed 0] [--space FILE] [--sampler random]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from nas import search as searching, study as studies  # noqa: E402


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` (accuracy maximised, latency minimised) and bounded by `ref`."""
    front = sorted((p for p in points if p[0] > ref[0] and p[1] < ref[1]), key=lambda p: p[1])
    area, best = 0.0, ref[0]
    for (acc, lat), nxt in zip(front, [p[1] for p in front[1:]] + [ref[1]]):
        best = max(best, acc)
        area += (best - ref[0]) * (nxt - lat)
    return area


def arm(pruner: str, tmp: str, args: argparse.Namespace) -> dict:
    storage = f"sqlite:///{tmp}/{pruner}.db"
    start = time.perf_counter()
    outcome = searching.run(searching.SearchJob(
        space=args.space, storage=storage, study=pruner, dataset=args.dataset, data_dir=args.data_dir, seed=args.seed,
        trials=args.trials, workers=args.workers, objectives=("accuracy", "latency"), pruner=pruner,
        sampler=args.sampler), lambda e: None)
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=pruner, storage=storage)
    done = [t for t in study.trials if t.state == studies.State.COMPLETE]
    return {"pruner": pruner, "seconds": seconds, "trained": outcome.n_trained,
            "pruned": sum(r["state"] == "pruned" and not r["rejected"] for r in outcome.rows),
            "points": [tuple(t.values) for t in done], "front": [tuple(t.values) for t in study.best_trials]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--space", type=Path, help="a space file (default: the built-in space for the dataset)")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="default: as many as pay here")
    p.add_argument("--sampler", default="random", choices=["random", "tpe"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [arm(pruner, tmp, args) for pruner in ("none", "pareto")]
    every = [pt for r in runs for pt in r["points"]]
    ref = (min(a for a, _ in every), max(lat for _, lat in every))
    print(f"{args.trials} trials of {args.space or 'the built-in space'} on {args.dataset}, {args.sampler} sampler, seed {args.seed}; "
          f"hypervolume against (accuracy {ref[0]:.4f}, latency {ref[1]:.3f} ms)")
    for r in runs:
        r["hv"] = hypervolume(r["front"], ref)
        front = ", ".join(f"{a:.4f}/{lat:.3f}ms" for a, lat in sorted(r["front"], key=lambda pt: pt[1]))
        print(f"  pruner {r['pruner']:6}  {r['seconds'] / 60:5.1f} min  {r['trained']} trained, {r['pruned']} pruned  "
              f"front of {len(r['front'])}: {front}  hypervolume {r['hv']:.5f}")
    none, pareto = runs
    print(f"pareto / none: time {pareto['seconds'] / none['seconds']:.2f}, hypervolume {pareto['hv'] / none['hv']:.3f}")


if __name__ == "__main__":
    main()
