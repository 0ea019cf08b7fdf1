"""Side by side, in one run: one searched net retrained wider or with other augmentation, at equal compute.

What `nas run` does with the time left after its search (`autorun.plan_retrain`): is a wider net for
fewer epochs better than the searched net for more? Each arm is WIDTH:AUGMENT; its epochs are
`--seconds` divided by its own pace, measured first on one thread, so every arm gets the same compute
whatever else the machine runs. Arms train two at a time, one thread each, on train+val, and are
scored on the test set.

    python bench/retrain_width.py --storage sqlite:///run.db --study auto-fashion-mnist --trial 220 \
        --seconds 1000 --arms 1:none,1:crop,1.5:crop,2:crop
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _spec(args: argparse.Namespace, arm: str):
    from nas import study as studies
    from nas.record import TrialRecord
    from nas.spec import ArchSpec

    width, augment = arm.split(":")
    trial = studies.trained_trial(studies.load_study(args.study, args.storage), args.trial)
    spec = ArchSpec.from_dict(TrialRecord(trial).spec).widened(float(width))
    return dataclasses.replace(spec, training=dataclasses.replace(spec.training, augment=augment))


def _data(args: argparse.Namespace):
    import torch
    from nas import data

    torch.set_num_threads(1)
    return data.prepare_final_data(data.load_dataset(args.dataset, args.data_dir), torch.device("cpu"))


def pace(args: argparse.Namespace, arm: str) -> float:
    """Seconds per epoch of the arm's net on one thread."""
    import torch
    from nas.train import seconds_per_epoch

    return seconds_per_epoch(_spec(args, arm), _data(args), torch.device("cpu"))


def train(args: argparse.Namespace, arm: str, epochs: int) -> dict:
    """The arm's net trained `epochs` on train+val; its test accuracy."""
    import torch
    from nas.train import train_spec

    spec = _spec(args, arm)
    _, history = train_spec(spec, _data(args), epochs, 0, torch.device("cpu"))
    return {"arm": arm, "epochs": epochs, "test": history[-1].val_acc, "arch": spec.describe(),
            "seconds": sum(r.seconds for r in history)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True)
    p.add_argument("--study", default=None)
    p.add_argument("--trial", type=int, required=True)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--seconds", type=float, default=1000, help="one-thread compute per arm")
    p.add_argument("--arms", default="1:none,1:crop,1.5:crop,2:crop", help="WIDTH:AUGMENT, comma-separated")
    args = p.parse_args()
    arms = args.arms.split(",")
    with ProcessPoolExecutor(2) as pool:
        paces = list(pool.map(pace, [args] * len(arms), arms))
        epochs = [max(1, round(args.seconds / s)) for s in paces]
        rows = list(pool.map(train, [args] * len(arms), arms, epochs))
    print(f"\n| arm (width:augment) | s/epoch, 1 thread | epochs | test acc | vs {arms[0]} | net |\n|---|---:|---:|---:|---:|---|")
    for r, s in zip(rows, paces):
        print(f"| {r['arm']} | {s:.1f} | {r['epochs']} | {r['test']:.4f} | {r['test'] - rows[0]['test']:+.4f} | `{r['arch']}` |")


if __name__ == "__main__":
    main()
