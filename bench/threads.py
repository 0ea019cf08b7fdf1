"""Side by side, in one run: nas's default torch thread count against each fixed count, on an idle
machine and beside a competing load (bench/load.py), timing one training epoch.

    python bench/threads.py [--nets seed_lenet,warm] [--sample 6000] [--reps 3] [--load 2] [--conditions idle,loaded]

Each arm is a fresh process (its own thread pool) that picks its threads (`auto`: what `nas` picks,
`nas.system.pick_threads`; `N`: N threads), then times an epoch of the whole Fashion-MNIST training
set (extrapolated from --sample images after a warm-up batch, plus scoring the test set) with
`train.seconds_per_epoch`, what `nas run` plans with. Arms are interleaved, in a rotated order
each repetition; the table gives each arm's median and the default's ratio to the best fixed count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def _spec(net: str):
    """`seed_lenet` (the tutorial's LeNet) or `warm` (the built-in space's first warm-start net)."""
    from nas import autospace, space, spacefile

    if net == "seed_lenet":
        return space.sample(spacefile.load_space("seed_lenet"))
    return space.sample(spacefile.parse_space({"name": "warm", **autospace.warm_start(2)[0]}))


def arm(choice: str, net: str, sample: int) -> dict:
    """In this process: pick the threads, time one epoch; returns what was picked and the seconds."""
    import torch

    from nas import data, system, train

    threads = system.pick_threads() if choice == "auto" else system.Threads(int(choice), "fixed")
    torch.set_num_threads(threads.n)
    try:
        ds = data.load_dataset("fashion-mnist")
    except Exception:  # no real data here: random images of its shape time the same
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (70000, 1, 28, 28), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (70000,), generator=g)
        ds = data.Dataset("random", x[:60000], y[:60000], x[60000:], y[60000:], tuple("0123456789"))
    prepared = data.prepare_final_data(ds, torch.device("cpu"))
    seconds = train.seconds_per_epoch(_spec(net), prepared, torch.device("cpu"), sample=sample)
    return {"threads": threads.n, "why": threads.why, "seconds": seconds}


def run_arm(choice: str, net: str, sample: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--arm", choice, "--nets", net, "--sample", str(sample)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="seed_lenet,warm")
    p.add_argument("--sample", type=int, default=6000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--load", type=int, default=2, help="busy processes of the loaded condition")
    p.add_argument("--conditions", default="idle,loaded", help="idle, loaded or both (comma-separated)")
    p.add_argument("--arm")
    args = p.parse_args()
    if args.arm:
        print(json.dumps(arm(args.arm, args.nets, args.sample)))
        return
    from load import start_load, stop_load

    from nas.system import usable_cores

    cores = usable_cores()
    choices = ["auto", *map(str, range(1, cores + 1))]
    print(f"{cores} cores; arms {', '.join(choices)}; {args.reps} repetitions; epoch timed on {args.sample} images")
    conditions = {"idle": "idle", "loaded": f"beside {args.load} busy processes"}
    for condition in (conditions[c] for c in args.conditions.split(",")):
        load = start_load(args.load) if condition != "idle" else []
        try:
            time.sleep(1.0 if load else 0)
            for net in args.nets.split(","):
                results: dict[str, list[dict]] = {c: [] for c in choices}
                for rep in range(args.reps):
                    for c in choices[rep % len(choices):] + choices[:rep % len(choices)]:
                        results[c].append(run_arm(c, net, args.sample))
                med = {c: statistics.median(r["seconds"] for r in rs) for c, rs in results.items()}
                best = min((c for c in choices if c != "auto"), key=med.get)
                picked = sorted({r["threads"] for r in results["auto"]})
                print(f"\n{condition}, {net}:")
                for c in choices:
                    runs = ", ".join(f"{r['seconds']:.2f}" for r in results[c])
                    print(f"  {c:>4} threads: {med[c]:7.2f} s/epoch  ({runs})"
                          + (f"  picked {picked} ({results['auto'][0]['why']})" if c == "auto" else ""))
                print(f"  default / best fixed ({best}): {med['auto'] / med[best]:.3f}")
        finally:
            stop_load(load)


if __name__ == "__main__":
    main()
