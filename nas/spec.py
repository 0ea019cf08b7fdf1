"""The plain-data description of one network and how to train it: what sampling a space gives, what
the builder builds, what a trial stores and an export writes. No YAML, no torch, no Optuna here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class BlockSpec:
    """One conv block: its convolution(s), width, activation, normalisation, pooling, padding, dropout."""

    conv: str
    channels: int
    activation: str
    batch_norm: bool
    pool: str
    padding: str
    dropout: float


@dataclass(frozen=True)
class LayerSpec:
    """One fully connected layer of the head."""

    units: int
    activation: str
    dropout: float


@dataclass(frozen=True)
class TrainSpec:
    """How the network is trained (what `train.fit` reads)."""

    optimizer: str
    lr: float
    batch_size: int
    weight_decay: float
    momentum: float
    augment: str = "none"  # specs stored before augmentation existed have none
    schedule: str = "constant"  # the learning rate over the run (train.SCHEDULES); older specs kept it constant
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class ArchSpec:
    """One network and how to train it; round-trips exactly through `to_dict` / `from_dict`."""

    blocks: tuple[BlockSpec, ...]
    head: tuple[LayerSpec, ...]
    init: str
    training: TrainSpec
    readout: str = "flatten"  # model.READOUTS; specs stored before it existed flatten

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"blocks": [asdict(b) for b in self.blocks], "head": [asdict(h) for h in self.head]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        return cls(
            blocks=tuple(BlockSpec(**b) for b in d["blocks"]),
            head=tuple(LayerSpec(**h) for h in d["head"]),
            init=d["init"],
            training=TrainSpec(**d["training"]),
            readout=d.get("readout", "flatten"),
        )

    def widened(self, factor: float) -> ArchSpec:
        """The same network with `factor` times the channels of each block and units of each head layer,
        rounded to multiples of 8 (what vectorised kernels like): a final net may be wider than its trial."""
        def w(n: int) -> int:
            return n if factor == 1 else max(8, round(n * factor / 8) * 8)
        return replace(self, blocks=tuple(replace(b, channels=w(b.channels)) for b in self.blocks),
                       head=tuple(replace(h, units=w(h.units)) for h in self.head))

    def flat(self) -> dict[str, Any]:
        """Values by parameter name, as `sample` names them (`block2.channels`, `fc1.units`, `lr`)."""
        out: dict[str, Any] = {"blocks": len(self.blocks), "head.layers": len(self.head), "init": self.init,
                               "readout": self.readout}
        for i, b in enumerate(self.blocks, 1):
            out |= {f"block{i}.{k}": v for k, v in asdict(b).items()}
        for i, h in enumerate(self.head, 1):
            out |= {f"fc{i}.{k}": v for k, v in asdict(h).items()}
        return out | asdict(self.training)

    def describe(self) -> str:
        """The architecture in one readable line."""
        parts = []
        for b in self.blocks:
            extras = [b.activation] + ["bn"] * b.batch_norm + (["same"] if b.padding == "same" else [])
            extras += [] if b.pool == "none" else [f"{b.pool}pool"]
            extras += [f"drop{b.dropout:.2f}"] if b.dropout else []
            parts.append(f"{b.conv}:{b.channels} " + " ".join(extras))
        parts += ["gap"] if self.readout == "gap" else []
        for h in self.head:
            parts.append(f"fc{h.units} {h.activation}" + (f" drop{h.dropout:.2f}" if h.dropout else ""))
        t = self.training
        opt = f"{t.optimizer} lr={t.lr:.2g} bs={t.batch_size}" + (f" wd={t.weight_decay:.2g}" if t.weight_decay else "")
        init = "" if self.init == "default" else f" init={self.init}"
        aug = "" if t.augment == "none" else f" aug={t.augment}"
        recipe = ("" if t.schedule == "constant" else f" {t.schedule}") + (f" ls={t.label_smoothing:.2g}" if t.label_smoothing else "")
        return " → ".join(parts) + f" | {opt}{recipe}{init}{aug}"
