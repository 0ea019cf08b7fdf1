"""The test suite's wall time on this machine, idle and beside a competing load, side by side in one run.

    python bench/suite_time.py [--load 2] [-- PYTEST ARGS]

Runs the README's test command (`pytest`, spread over every core by xdist) twice: alone, then beside
`--load` busy processes (bench/load.py). Prints both times and their ratio; record them in
docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from load import start_load, stop_load  # noqa: E402


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                         capture_output=True, text=True)
    last = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
    return time.perf_counter() - start, last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", type=int, default=2)
    p.add_argument("pytest_args", nargs="*")
    args = p.parse_args()
    idle, idle_line = timed(args.pytest_args)
    print(f"idle: {idle:.0f} s  ({idle_line})", flush=True)
    load = start_load(args.load)
    try:
        busy, busy_line = timed(args.pytest_args)
    finally:
        stop_load(load)
    print(f"beside {args.load} busy processes: {busy:.0f} s  ({busy_line})")
    print(f"ratio loaded / idle: {busy / idle:.2f}")


if __name__ == "__main__":
    main()
