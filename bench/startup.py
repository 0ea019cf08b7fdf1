"""Side by side, in one run: how long `nas predict` (one image) and `nas best` (the listing) take from the
shell, for this checkout and, with --before, another one (an older nas), interleaved run by run.

    python bench/startup.py [--before /path/to/old/checkout] [--reps 7]

It makes, once, in a temporary folder: a tiny .npz dataset, a 3-trial study of a tiny space and its
best trial's export (about a minute); then times each command as a fresh `nas` process (`PYTHONPATH`
set to each checkout), alternating the checkouts, and prints each arm's median and the ratio. The
load average is printed before and after: these are wall-clock times on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPACE = """name: startup
budget: {epochs: 1, val_fraction: 0.2}
architecture:
  blocks: 1
  block: {conv: conv3x3, channels: {choice: [4, 8]}, activation: relu}
  head: {layers: 1, units: 16}
training: {optimizer: adam, lr: 0.003, batch_size: 32}
"""


def _nas(tree: Path, *args: object, cwd: Path) -> float:
    """Seconds one `nas ARGS` process takes with `tree` first on the path; fails loudly if it fails."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas.cli", *map(str, args)], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _prepare(folder: Path) -> None:
    """A tiny dataset, a study of 3 trials and the best one's export, made by this checkout."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = (rng.random((120, 16, 16)) * 60 + y[:, None, None] * 60).astype(np.uint8)
    np.savez(folder / "tiny.npz", x_train=x[::2], y_train=y[::2], x_test=x[1::2], y_test=y[1::2])
    Image.fromarray(x[1]).save(folder / "img.png")
    (folder / "space.yaml").write_text(SPACE)
    for args in (["search", "--space", "space.yaml", "--dataset", "tiny.npz", "--trials", 3, "--quiet"],
                 ["best", "--export", "export", "--quiet"]):
        _nas(ROOT, *args, cwd=folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, help="another checkout of nas to time beside this one")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    trees = {"this": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    commands = {"predict": ["predict", "export", "img.png"], "best": ["best"]}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _prepare(folder)
        print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
        times: dict[tuple[str, str], list[float]] = {(c, t): [] for c in commands for t in trees}
        for _ in range(args.reps):
            for command, argv in commands.items():
                for name, tree in trees.items():
                    times[command, name].append(_nas(tree, *argv, cwd=folder))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"| command | {' | '.join(f'{t} median s (min–max)' for t in trees)} |" + (" ratio |" if args.before else ""))
    for command in commands:
        cells = [times[command, t] for t in trees]
        row = " | ".join(f"{statistics.median(c):.2f} ({min(c):.2f}–{max(c):.2f})" for c in cells)
        ratio = f" {statistics.median(cells[1]) / statistics.median(cells[0]):.1f}× faster |" if args.before else ""
        print(f"| `nas {' '.join(commands[command])}` | {row} |{ratio}")


if __name__ == "__main__":
    main()
