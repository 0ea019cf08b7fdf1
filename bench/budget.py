"""Does `nas run --budget B` end within its budget? Wall time of the whole command, idle and beside a
competing load (bench/load.py), side by side in one run.

    python bench/budget.py [--budgets 2m,5m] [--load 2] [--conditions idle,loaded]

Each run is a fresh `nas run` (the built-in space on Fashion-MNIST, a fresh SQLite study in a temporary
folder, --export and --report too), timed from before the process starts to after it exits. Prints,
for each budget and condition: the wall time, its ratio to the budget, the exit status, the test
accuracy exported and what the summary says was cut.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import start_load, stop_load  # noqa: E402


def seconds(budget: str) -> float:
    return float(budget[:-1]) * {"s": 1, "m": 60, "h": 3600}[budget[-1]]


def run(budget: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "nas.cli", "run", "--budget", budget, "--storage", f"sqlite:///{tmp}/b.db",
               "--export", f"{tmp}/out", "--report", f"{tmp}/r.html"]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        metrics = Path(tmp, "out", "metrics.json")
        acc = json.loads(metrics.read_text())["test_accuracy"] if metrics.exists() else None
    text = " ".join(out.stdout.split())  # the summary's note, however the console wrapped it
    note = text[text.find("note:"):] if "note:" in text else ""
    return {"wall": wall, "ratio": wall / seconds(budget), "rc": out.returncode, "test_accuracy": acc,
            "note": note or (out.stderr.strip().splitlines() or [""])[-1][:200]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="2m,5m")
    p.add_argument("--load", type=int, default=2, help="busy processes in the loaded condition")
    p.add_argument("--conditions", default="idle,loaded")
    args = p.parse_args()
    for condition in args.conditions.split(","):
        load = start_load(args.load) if condition == "loaded" else []
        try:
            for budget in args.budgets.split(","):
                r = run(budget)
                acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
                print(f"{condition:>6} --budget {budget:>4}: {r['wall']:6.1f} s wall = {r['ratio']:.3f} × budget, "
                      f"exit {r['rc']}, test {acc}; {r['note']}", flush=True)
        finally:
            stop_load(load)


if __name__ == "__main__":
    main()
