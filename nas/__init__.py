"""nas: search CNN architectures and training hyperparameters for image classification.

`import nas` stays light (no torch): `nas.load_model(DIR)` imports what it needs when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def load_model(path: str | Path) -> "nn.Module":
    """The model exported to `path` by `nas best --export`, in eval mode.

    It takes float images in [0, 1], N×C×H×W (what torchvision's `ToTensor` gives), and returns logits.
    """
    from nas.export import load_model as _load

    return _load(path)
