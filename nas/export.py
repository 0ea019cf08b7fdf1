"""An export folder: writing one (`write_export`), reading it back (`load_model`) and classifying images
with it (`classify`, which needs only ONNX Runtime and numpy: `nas predict` loads neither torch nor Optuna).

What is exported (a study's best trial, a fixed net) is trained in `retrain`. An export folder holds `model.pt` (a state_dict, loadable with `weights_only=True`, that includes
the input normalisation), `arch.yaml` (a fixed space `nas train --space` accepts), `metrics.json`,
and the same network as `model.onnx` (dynamic batch size, checked against PyTorch with onnxruntime)
and TorchScript `model.ts`, for serving without this package. It is written into a temporary folder
and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from nas.errors import NasError
from nas.files import EXPORT_FILES, check_export_target, check_readable_file, new_folder_beside, replace_folder
from nas.formats import CHANNELS, MAX_PIXELS, read_images
from nas.space import SpaceError, sample
from nas.spacefile import fixed_space_dict, load_space
from nas.spec import ArchSpec
from nas.system import ASSUMED_MEMORY, UNKNOWN_MEMORY, available_memory

if TYPE_CHECKING:  # torch is imported where a model is written or loaded, not where one only classifies
    import torch
    from torch import nn

FILES = EXPORT_FILES[:3]  # what load_model needs
PREDICT_FILES = ("model.onnx", "metrics.json")  # what classify needs
PREDICT_BATCH = 256  # images per ONNX Runtime call
ONNX_TOLERANCE = 1e-4


class ExportError(NasError):
    """An export folder that cannot be written or read back."""


def write_export(
    out: Path, model: nn.Module, spec: ArchSpec, metrics: dict[str, Any], images: torch.Tensor, force: bool = False
) -> dict[str, Any]:
    """Write the files into a temporary folder beside `out`, then move it into place (see `files`).

    `images` is a batch of real uint8 images: the ONNX and TorchScript files are checked on it and
    metrics.json records how far their outputs are from PyTorch's. Returns the metrics written.
    """
    import torch

    from nas.signals import checkpoint

    check_export_target(out, force)
    try:
        with new_folder_beside(out) as tmp:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save(state, tmp / "model.pt")
            metrics = metrics | write_portable(tmp, model, images)
            arch = fixed_space_dict(spec, name=f"{metrics.get('study', 'model')}-export", dataset=metrics["dataset"],
                                    epochs=metrics["epochs"])
            (tmp / "arch.yaml").write_text(yaml.safe_dump(arch, sort_keys=False))
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            checkpoint()  # a signal that torch's exporters swallowed stops it here, before it is put in place
            replace_folder(tmp, out)
    except OSError as e:
        raise ExportError(f"cannot write the export to {out}: {e.strerror or e}; nothing was changed there.") from e
    return metrics


def write_portable(folder: Path, model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """`model.onnx` and `model.ts` in `folder`; returns each one's max abs difference from PyTorch on `images`,
    and model.onnx's latency on this machine's CPU (see `latency`)."""
    import onnxruntime  # only exports need it
    import torch

    from nas.latency import session_latency

    cpu = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    x = images[:64].cpu().float().div(255)
    with torch.inference_mode():
        expected = cpu(x)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # torch.onnx's progress lines and TorchScript's deprecation notice
        # The TorchScript-based exporter: 0.2 s for a small net where the dynamo one took 25 s on a busy CPU,
        # out of a `nas run --budget`; the file is checked against PyTorch below either way.
        torch.onnx.export(cpu, (x,), folder / "model.onnx", dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        torch.jit.trace(cpu, x[:1]).save(str(folder / "model.ts"))
        scripted = torch.jit.load(str(folder / "model.ts"))
    session = onnxruntime.InferenceSession(folder / "model.onnx", providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        diffs = {
            "onnx_max_abs_diff": float(abs(session.run(None, {"images": x.numpy()})[0] - expected.numpy()).max()),
            "torchscript_max_abs_diff": (scripted(x) - expected).abs().max().item(),
        }
    for name, diff in diffs.items():
        if not diff <= ONNX_TOLERANCE:
            raise ExportError(f"the exported {name.split('_')[0]} model's outputs differ from PyTorch's by {diff:.2e} "
                              f"(more than {ONNX_TOLERANCE}); please report this with the model's arch.yaml.")
    return diffs | session_latency(folder / "model.onnx", tuple(images.shape[1:]))


@dataclass(frozen=True)
class Export:
    """An export folder read back: the model in eval mode, its classes and the input it takes."""

    model: nn.Module
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]


def open_export(path: str | Path) -> Export:
    """Read an export folder, checking every file before the network is built."""
    import torch

    from nas.model import ShapeError, build_model, spec_info

    path = Path(path)
    shape, classes = _read_metrics(path, FILES)
    try:
        spec = sample(load_space(path / "arch.yaml"))
        info = spec_info(spec, shape, len(classes))
    except SpaceError as e:
        raise ExportError(f"{path / 'arch.yaml'} is not a fixed architecture: {e}") from e
    except ShapeError as e:
        raise ExportError(f"{path / 'arch.yaml'} does not fit the input {shape} of metrics.json: {e}") from e
    available = available_memory()
    if 4 * info.n_params > (ASSUMED_MEMORY if available is None else available):
        unknown = "" if available is not None else f" ({UNKNOWN_MEMORY})"
        raise ExportError(f"{path / 'arch.yaml'}: a network of {info.n_params:,} parameters does not fit in this "
                          f"machine's memory{unknown}.")
    model = build_model(spec, shape, len(classes))
    try:
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # unpickling, size and key mismatches all mean: not these weights
        raise ExportError(f"{path / 'model.pt'}: the weights do not load into the architecture of arch.yaml "
                          f"({str(e).splitlines()[0]}). Export the model again.") from e
    return Export(model.eval(), classes, shape)


def load_model(path: str | Path) -> nn.Module:
    """The exported model in eval mode: float images in [0, 1], N×C×H×W, in; class logits out."""
    return open_export(path).model


def _read_metrics(path: Path, needed: tuple[str, ...]) -> tuple[tuple[int, int, int], tuple[str, ...]]:
    """(input shape, classes) from an export's metrics.json, once the files `needed` are checked to be there."""
    for f in needed:
        check_readable_file(path / f, f"an export's {f}")
    missing = [f for f in needed if not (path / f).is_file()]
    if missing:
        raise ExportError(f"{path}: missing {', '.join(missing)}; an export folder holds {', '.join(needed)} "
                          "(write one with `nas best --export DIR`).")
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        shape, classes = tuple(metrics["input_shape"]), tuple(metrics["classes"])
        if not (len(shape) == 3 and all(isinstance(n, int) and n >= 1 for n in shape) and shape[0] in CHANNELS
                and shape[1] * shape[2] <= MAX_PIXELS and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
            raise ValueError(f"input_shape {_short(shape)} and classes {_short(classes)} are not C×H×W and 2+ names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path / 'metrics.json'}: unreadable or incomplete ({e}); export the model again.") from e
    return shape, classes


def classify(path: str | Path, files: list[Path], top: int = 3) -> list[dict[str, Any]]:
    """The `top` classes, with probabilities, of each image in `files` (PNG/JPG, or .npz of uint8 images),
    by the model exported to `path` (its model.onnx, which normalises as in training), on one CPU thread."""
    path = Path(path)
    shape, classes = _read_metrics(path, PREDICT_FILES)
    names, x = read_images(files, shape)
    logits = _onnx_logits(path / "model.onnx", x)
    if logits.shape[1] != len(classes):
        raise ExportError(f"{path / 'model.onnx'} gives {logits.shape[1]} class scores, but metrics.json names "
                          f"{len(classes)} classes; the files are of different models: export the model again.")
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    best = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [{"file": name, "top": [{"class": classes[i], "probability": float(p[i])} for i in idx]}
            for name, p, idx in zip(names, probs, best)]


def _onnx_logits(model: Path, x: np.ndarray) -> np.ndarray:
    """float64 logits of ONNX Runtime's run of `model` on uint8 images `x`, in batches."""
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as failures

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # a few images: starting threads costs more
    try:
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"images": x[i: i + PREDICT_BATCH].astype(np.float32) / 255})[0]
                               for i in range(0, len(x), PREDICT_BATCH)]).astype(np.float64)
    except Exception as e:
        if type(e).__module__ != failures.__name__:  # ONNX Runtime's own errors: a file that is not this model
            raise
        raise ExportError(f"{model}: ONNX Runtime cannot run it on images of {'×'.join(map(str, x.shape[1:]))} "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); export the model again.") from e


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
