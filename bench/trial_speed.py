"""Side by side, in one run: the tutorial's LeNet recipe vs `nas train --space seed_lenet`.

The tutorial recipe is torchvision's `FashionMNIST` + `ToTensor` + `DataLoader` (batch 256, shuffled),
a hand-written LeNet (conv 6-16 5x5, LeakyReLU(0.1), fc 120-84), Adam 1e-3. Both sides train on the
60k training images and score the 10k test images after every epoch; seconds per epoch include both.
"fit s" is all epochs (the training loop end to end); "total s" adds process start and data loading.

    python bench/trial_speed.py [--epochs 10] [--data-dir /usr/share/datasets/fashion-mnist] [--device cpu]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class LeNet(nn.Module):
    """The tutorial's LeNet, written the way the tutorial writes it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.out = nn.Linear(84, 10)

    def forward(self, t):
        t = F.max_pool2d(F.leaky_relu(self.conv1(t), 0.1), 2)
        t = F.max_pool2d(F.leaky_relu(self.conv2(t), 0.1), 2)
        t = F.leaky_relu(self.fc1(t.flatten(1)), 0.1)
        t = F.leaky_relu(self.fc2(t), 0.1)
        return self.out(t)


def tutorial(data_dir: Path, epochs: int, device: str) -> dict:
    import torchvision
    from torchvision import transforms

    with tempfile.TemporaryDirectory() as root:
        raw = Path(root) / "FashionMNIST" / "raw"  # where torchvision looks for the unpacked IDX files
        raw.mkdir(parents=True)
        for f in FILES:
            src = data_dir / f if (data_dir / f).exists() else data_dir / (f + ".gz")
            with (gzip.open(src) if src.suffix == ".gz" else open(src, "rb")) as i, open(raw / f, "wb") as o:
                shutil.copyfileobj(i, o)
        start = time.perf_counter()
        train_set = torchvision.datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
        test_set = torchvision.datasets.FashionMNIST(root, train=False, transform=transforms.ToTensor())
        torch.manual_seed(0)
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=256, shuffle=True)
        test_loader = torch.utils.data.DataLoader(test_set, batch_size=256)
        net = LeNet().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        per_epoch, acc = [], 0.0
        for _ in range(epochs):
            t0 = time.perf_counter()
            net.train()
            for images, labels in train_loader:
                images, labels = images.to(device), labels.to(device)
                loss = F.cross_entropy(net(images), labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            correct = 0
            with torch.no_grad():
                for images, labels in test_loader:
                    correct += (net(images.to(device)).argmax(1) == labels.to(device)).sum().item()
            acc = correct / len(test_set)
            per_epoch.append(time.perf_counter() - t0)
        return {"seconds_per_epoch": sum(per_epoch) / epochs, "fit": sum(per_epoch), "test_accuracy": acc,
                "total": time.perf_counter() - start}


def nas_train(data_dir: Path, epochs: int, device: str) -> dict:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "nas.cli", "train", "--space", str(ROOT / "nas/spaces/seed_lenet.yaml"),
           "--epochs", str(epochs), "--data-dir", str(data_dir), "--device", device, "--json"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
    return {"seconds_per_epoch": out["seconds_per_epoch"], "fit": sum(r["seconds"] for r in out["history"]),
            "test_accuracy": out["test_accuracy"], "total": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs")
    results = {"tutorial (DataLoader)": tutorial(args.data_dir, args.epochs, args.device),
               "nas train": nas_train(args.data_dir, args.epochs, args.device)}
    print(f"{'':24} {'s/epoch':>8} {'fit s':>7} {'test acc':>9} {'total s':>8}")
    for name, r in results.items():
        print(f"{name:24} {r['seconds_per_epoch']:8.2f} {r['fit']:7.1f} {r['test_accuracy']:9.4f} {r['total']:8.1f}")
    t, n = results["tutorial (DataLoader)"], results["nas train"]
    print(f"speed-up per epoch: {t['seconds_per_epoch'] / n['seconds_per_epoch']:.2f}x; "
          f"test accuracy {n['test_accuracy'] - t['test_accuracy']:+.4f}")


if __name__ == "__main__":
    main()
