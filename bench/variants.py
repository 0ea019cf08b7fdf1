"""Write Fashion-MNIST at other sizes and in colour as .npz files, for benchmarks on image shapes the
tutorials never met (this machine can reach no other dataset):

    python bench/variants.py OUT_DIR      # writes fm8.npz (8×8 RGB) and fm32.npz (32×32 RGB)

Each image is resized (area averaging) and given a random colour per image, the same for every class,
so the colour says nothing of the class: a net has to learn the shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nas.data import load_dataset  # noqa: E402


def variant(x: torch.Tensor, side: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 N×1×28×28 -> uint8 N×side×side×3, resized and tinted one random colour per image."""
    x = F.interpolate(x.float(), size=(side, side), mode="area") if side < 28 else F.pad(x.float(), [(side - 28) // 2] * 4)
    tint = torch.from_numpy(rng.uniform(0.3, 1.0, size=(len(x), 3, 1, 1))).float()
    return (x * tint).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("fashion-mnist")
    rng = np.random.default_rng(0)
    for side in (8, 32):
        np.savez(out / f"fm{side}.npz", x_train=variant(ds.x_train, side, rng), y_train=ds.y_train.numpy(),
                 x_test=variant(ds.x_test, side, rng), y_test=ds.y_test.numpy())
        print(f"wrote {out / f'fm{side}.npz'}: {len(ds.y_train)} + {len(ds.y_test)} images, {side}×{side}×3")


if __name__ == "__main__":
    main()
