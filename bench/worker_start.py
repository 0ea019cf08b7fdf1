"""Side by side, in one run: how long N search workers take to be ready, spawned (each imports torch and
nas itself) or forked from a fork server that imported them once (what `nas search --workers N` does).

A worker is ready when it has imported what a trial needs (nas.search, and torch._dynamo, which torch's
optimizers import on first use). Prints the wall time until all N are ready and the CPU seconds the
machine spent on it (from /proc/stat, so the fork server's import counts), then the ratios.

    python bench/worker_start.py [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODULES = ["nas.search", "torch._dynamo"]


def ready(_: int) -> None:
    import importlib

    for m in MODULES:
        importlib.import_module(m)


def busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def start(method: str, n: int) -> tuple[float, float]:
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(MODULES)
    cpu, wall = busy_seconds(), time.perf_counter()
    procs = [ctx.Process(target=ready, args=(i,)) for i in range(n)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return time.perf_counter() - wall, busy_seconds() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    results = {m: [] for m in ("spawn", "forkserver")}
    for _ in range(args.repeats):  # alternated, so that a slow minute of the machine hits both
        for method in results:
            # a fresh interpreter each time: a fork server, once started, lives as long as its parent
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import worker_start as w; "
                    f"print(*w.start({method!r}, {args.workers}))")
            out = os.popen(f"{sys.executable} -c \"{code}\"").read().split()
            results[method].append(tuple(map(float, out)))
    for method, runs in results.items():
        wall, cpu = (sorted(r[i] for r in runs)[len(runs) // 2] for i in (0, 1))
        print(f"{method:10} {args.workers} workers ready: median wall {wall:.2f} s, machine CPU {cpu:.2f} s")
    (sw, sc), (fw, fc) = ([sorted(r[i] for r in results[m])[len(results[m]) // 2] for i in (0, 1)] for m in results)
    print(f"forkserver / spawn: wall {fw / sw:.2f}, CPU {fc / sc:.2f}")


if __name__ == "__main__":
    main()
