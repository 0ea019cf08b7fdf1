"""Side by side, in one run: what a fixed wall-clock search budget finds, each winner retrained the same way.

Arms, each on its own fresh SQLite study, for each seed:
  default  `nas search` with no --space: the built-in space for the dataset, TPE with constraints
  random   the same built-in space and budget, Optuna's RandomSampler, without the warm start
  cold     (only if asked for with --arms) the default search without its warm start: the built-in space's
           baselines left out, to show what they bring
  seeds    the tutorial nets (`seed_lenet.yaml`, `seed_network.yaml`), one trial each with the
           budget's epochs per trial; the better on validation is the winner (they take far less
           time than the budget: that is what a user starting from the tutorials has)
Every winner is then retrained the same way (`nas best --retrain-epochs R`: train+val, R epochs, its
own recipe) and scored on the test set, so the arms differ only in what the search picked.

    python bench/search_quality.py [--dataset fashion-mnist] [--minutes 8] [--retrain-epochs 10] [--seeds 0]
                                   [--arms default,random,seeds,cold]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from nas import autospace, data, retrain, search as searching  # noqa: E402
from nas.train import pick_device  # noqa: E402


def search(storage: str, args: argparse.Namespace, seed: int, **job) -> tuple[searching.Outcome, float]:
    """Run one search; returns its outcome and wall seconds."""
    start = time.perf_counter()
    outcome = searching.run(searching.SearchJob(
        storage=storage, dataset=args.dataset, data_dir=args.data_dir, device=args.device, seed=seed,
        workers=None, **job), lambda event: None)
    return outcome, time.perf_counter() - start


def arm(name: str, tmp: str, args: argparse.Namespace, seed: int) -> dict:
    storage = f"sqlite:///{tmp}/{name}-{seed}.db"
    if name == "seeds":  # each tutorial net in its own study; the better on validation goes on
        runs = [search(storage, args, seed, space=ROOT / "nas" / "spaces" / f"{net}.yaml", study=net, trials=1,
                       epochs=args.seed_epochs) for net in ("seed_lenet", "seed_network")]
        seconds = sum(wall for _, wall in runs)
        trained = [o for o, _ in runs if o.best]
        if not trained:  # the tutorial nets shrink a small image below 1×1: they cannot run at all
            return {"arm": name, "seed": seed, "search_s": seconds, "trials": 0, "val": float("nan"),
                    "test": float("nan"), "params": 0, "arch": runs[0][0].gave_up}
        outcome = max(trained, key=lambda o: o.best[0]["val_accuracy"])
    else:  # random search starts cold too: a warm start is part of what the default search is
        space = None if name == "default" else Path(tmp) / "cold.yaml"
        outcome, seconds = search(storage, args, seed, space=space, trials=1_000_000, timeout=args.minutes * 60,
                                  sampler="random" if name == "random" else "tpe")
    best = retrain.best(retrain.BestJob(outcome.study, storage, 1, retrain_epochs=args.retrain_epochs,
                                        device=args.device, dataset=args.dataset, data_dir=args.data_dir))
    row = best.retrained[0]
    return {"arm": name, "seed": seed, "search_s": seconds, "trials": outcome.n_trained if name != "seeds" else 2,
            "val": row["val_accuracy"], "test": row["test_accuracy"], "params": row["n_params"], "arch": row["arch"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--minutes", type=float, default=8, help="search budget of the default and random arms")
    p.add_argument("--retrain-epochs", type=int, default=10, help="the final retrain of every arm's winner")
    p.add_argument("--seed-epochs", type=int, default=4, help="epochs of each seed net's trial (the built-in "
                                                              "space's epochs per trial on a CPU)")
    p.add_argument("--seeds", default="0", help="comma-separated search seeds")
    p.add_argument("--arms", default="default,random,seeds", help="comma-separated, of default, random, seeds, cold")
    args = p.parse_args()
    arms = args.arms.split(",")
    if "default" not in arms or not set(arms) <= {"default", "random", "seeds", "cold"}:
        p.error(f"--arms {args.arms}: name default and any of random, seeds, cold")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # cold.yaml: the built-in space without its warm start
        ds = data.load_dataset(args.dataset, args.data_dir)  # the space the default arm gets, on --device
        space = autospace.default_space(args.dataset, ds.name, ds.input_shape, len(ds.y_train),
                                        pick_device(args.device).type == "cuda")
        (Path(tmp) / "cold.yaml").write_text(yaml.safe_dump({k: v for k, v in space.items() if k != "baselines"}))
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in arms:
                rows.append(arm(name, tmp, args, seed))
                r = rows[-1]
                print(f"{r['arm']:<8} seed {seed}: {r['trials']:>4} trials in {r['search_s']:6.0f} s; test "
                      f"{r['test']:.4f} (val {r['val']:.4f}), {r['params']:,} params: {r['arch']}", flush=True)
    print("\n| arm | seeds | trials | search s | test acc (mean) | vs default |\n|---|---:|---:|---:|---:|---:|")
    mean = {n: statistics.mean(r["test"] for r in rows if r["arm"] == n) for n in arms}
    for n in arms:
        mine = [r for r in rows if r["arm"] == n]
        print(f"| {n} | {len(mine)} | {statistics.mean(r['trials'] for r in mine):.0f} | "
              f"{statistics.mean(r['search_s'] for r in mine):.0f} | {mean[n]:.4f} | {mean[n] - mean['default']:+.4f} |")


if __name__ == "__main__":
    main()
