"""Side by side, in one run: `fit` of seed_lenet eager vs under `torch.compile`, compile time included.

A trial trains a fresh network for a few epochs, so compiling pays only if it is won back within
that trial. This measures whole `fit` time (what a trial pays) and the last epoch (the steady state).

    python bench/compile.py [--epochs 2] [--device cpu|cuda] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nas import data, space, spacefile
from nas.model import new_model
from nas.train import fit

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", type=Path)
    args = p.parse_args()
    device = torch.device(args.device)
    spec = space.sample(spacefile.load_space(ROOT / "nas/spaces/seed_lenet.yaml"))
    prepared = data.prepare_final_data(data.load_dataset("fashion-mnist", args.data_dir), device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs")
    results = {}
    for mode in ("eager", "torch.compile"):
        model = new_model(spec, prepared, 0, device)
        start = time.perf_counter()
        if mode == "torch.compile":
            model = torch.compile(model)
        history = fit(model, prepared.train, prepared.test, spec.training, epochs=args.epochs, seed=0)
        results[mode] = (time.perf_counter() - start, history[-1].seconds, history[-1].val_acc)
    print(f"{'':14} {'fit s':>7} {'last epoch s':>13} {'test acc':>9}")
    for mode, (total, last, acc) in results.items():
        print(f"{mode:14} {total:7.1f} {last:13.2f} {acc:9.4f}")
    (e_total, e_last, _), (c_total, c_last, _) = results.values()
    print(f"torch.compile vs eager: whole fit {e_total / c_total:.2f}x, last epoch {e_last / c_last:.2f}x (>1 is faster)")


if __name__ == "__main__":
    main()
