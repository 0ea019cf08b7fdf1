"""A competing CPU load, as another job on a laptop or a shared server makes: N busy processes.

    python bench/load.py --procs 2 --seconds 600        # two cores' worth of spinning, for 10 minutes
    python bench/load.py --procs 2 --kind torch          # two single-threaded torch matmul loops

Other benchmarks and the suite-time measurement start it beside what they time (`start_load`). Each
process stops by itself after --seconds, and with its parent.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import time


def _spin(seconds: float, kind: str) -> None:
    os.nice(0)
    end = time.monotonic() + seconds
    if kind == "torch":
        import torch

        torch.set_num_threads(1)
        a = torch.randn(256, 256)
        while time.monotonic() < end:
            a = torch.tanh(a @ a)
        return
    x = 1.0
    while time.monotonic() < end:
        for _ in range(100_000):
            x = x * 1.000001 + 1e-9


def start_load(procs: int = 2, seconds: float = 3600, kind: str = "spin") -> list[multiprocessing.Process]:
    """Start `procs` busy daemon processes (they end with this one, or after `seconds`)."""
    ps = [multiprocessing.Process(target=_spin, args=(seconds, kind), daemon=True) for _ in range(procs)]
    for p in ps:
        p.start()
    return ps


def stop_load(ps: list[multiprocessing.Process]) -> None:
    for p in ps:
        p.terminate()
    for p in ps:
        p.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--kind", choices=("spin", "torch"), default="spin")
    args = p.parse_args()
    ps = start_load(args.procs, args.seconds, args.kind)
    signal.signal(signal.SIGTERM, lambda *_: stop_load(ps) or os._exit(0))
    try:
        for q in ps:
            q.join()
    except KeyboardInterrupt:
        stop_load(ps)


if __name__ == "__main__":
    main()
