"""Side by side, in one run: trials per hour of one fixed small search with different worker layouts.

Every trial is the same network (the bundled `seed_lenet`, a fixed LeNet, no pruning), so the
layouts do identical work and only throughput differs. Each layout is a fresh `nas search` process on a
fresh SQLite study; its wall time includes starting the process and its workers.

    python bench/parallel.py [--trials 24] [--epochs 2] [--subset 10000] [--layouts 1x2,1x1,2x1]

A layout WxT is W workers (`--workers W`) with T torch threads each (T=0: torch's default, all cores).
On a GPU the threads matter little: try --layouts 1x0,2x0,4x0 --device cuda.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(layout: str, args: argparse.Namespace) -> dict:
    workers, threads = (int(v) for v in layout.split("x"))
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in every worker
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "nas.cli", "search", "--space", str(ROOT / "nas/spaces/seed_lenet.yaml"),
               "--storage", f"sqlite:///{tmp}/bench.db", "--trials", str(args.trials), "--epochs", str(args.epochs),
               "--subset", str(args.subset), "--workers", str(workers), "--pruner", "none", "--device", args.device,
               "--json"]
        if args.data_dir:
            cmd += ["--data-dir", str(args.data_dir)]
        start = time.perf_counter()
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        wall = time.perf_counter() - start
    assert out["trials"] == args.trials, out
    return {"wall": wall, "per_hour": args.trials / wall * 3600, "best": out["best"][0]["val_accuracy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=10000, help="training images per trial (10%% of them validate)")
    p.add_argument("--layouts", default="1x0,1x1,2x1", help="comma-separated WORKERSxTHREADS")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", type=Path)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores, device {args.device}; {args.trials} trials of seed_lenet, {args.epochs} epochs on "
          f"{args.subset} images each")
    results = {layout: run(layout, args) for layout in args.layouts.split(",")}
    base_name = next(iter(results))
    base = results[base_name]["per_hour"]
    print(f"{'workers x threads':18} {'wall s':>7} {'trials/h':>9} {'vs ' + base_name:>9}")
    for layout, r in results.items():
        print(f"{layout:18} {r['wall']:7.1f} {r['per_hour']:9.0f} {r['per_hour'] / base:8.2f}x")


if __name__ == "__main__":
    main()
