"""Best trial -> ArchSpec -> (re)trained model -> files; `load_model` reads them back.

An export folder holds `model.pt` (a state_dict, loadable with `weights_only=True`, that includes
the input normalisation), `arch.yaml` (a fixed space `nas train --space` accepts) and `metrics.json`.
It is written into a temporary folder and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import yaml
from torch import nn

from nas.data import Dataset, test_split
from nas.errors import NasError
from nas.model import build_model, model_info
from nas.objective import prepare_final_data, prepare_search_data, score_on_test, train_spec
from nas.space import ArchSpec, SpaceError, fixed_space_dict, load_space, sample
from nas.train import EpochRecord

FILES = ("model.pt", "arch.yaml", "metrics.json")


class ExportError(NasError):
    """An export folder that cannot be written or read back."""


def export_trial(
    trial: optuna.trial.FrozenTrial,
    study: optuna.Study,
    ds: Dataset,
    out: Path,
    device: torch.device,
    retrain_epochs: int | None = None,
    force: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> dict[str, Any]:
    """Train `trial`'s network and write it to `out`; returns the metrics written.

    With `retrain_epochs`, train on train+val for that many epochs; without, repeat the trial's own
    training (same split, seed and epochs) so the exported model is the one the search scored.
    """
    _check_target(out, force)
    spec = ArchSpec.from_dict(trial.user_attrs["spec"])
    seed, data_attrs = trial.user_attrs["seed"], study.user_attrs["data"]
    if retrain_epochs:
        epochs, data = retrain_epochs, prepare_final_data(ds, device)
    else:
        epochs = trial.user_attrs["epochs"]
        data = prepare_search_data(ds, data_attrs["val_fraction"], data_attrs["split_seed"], device, data_attrs["subset"])
    model, history = train_spec(spec, data, epochs, seed, device, on_epoch)
    metrics = {
        "study": study.study_name,
        "trial": trial.number,
        "val_accuracy": trial.value,
        "retrained_on_train_and_val": bool(retrain_epochs),
        "epochs": epochs,
        "seed": seed,
    } | describe_model(model, spec, ds) | score_on_test(model, test_split(ds).to(device), ds.classes)
    write_export(out, model, spec, metrics, force)
    return metrics


def describe_model(model: nn.Module, spec: ArchSpec, ds: Dataset) -> dict[str, Any]:
    """What metrics.json says about the model itself (shape, classes, size)."""
    info = model_info(model, ds.input_shape)
    return {
        "dataset": ds.name,
        "arch": spec.describe(),
        "input_shape": list(ds.input_shape),
        "classes": list(ds.classes),
        "n_params": info.n_params,
        "flops": info.flops,
    }


def write_export(out: Path, model: nn.Module, spec: ArchSpec, metrics: dict[str, Any], force: bool = False) -> None:
    """Write the three files into a temporary folder beside `out`, then move it into place."""
    _check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp / "model.pt")
        arch = fixed_space_dict(spec, name=f"{metrics.get('study', 'model')}-export", dataset=metrics["dataset"],
                                epochs=metrics["epochs"])
        (tmp / "arch.yaml").write_text(yaml.safe_dump(arch, sort_keys=False))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(path: str | Path) -> nn.Module:
    """The exported model in eval mode: float images in [0, 1], N×C×H×W, in; class logits out."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ExportError(f"{path}: missing {', '.join(missing)}; an export folder holds {', '.join(FILES)} "
                          "(write one with `nas best --export DIR`).")
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        shape, n_classes = tuple(metrics["input_shape"]), len(metrics["classes"])
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path / 'metrics.json'}: unreadable or incomplete ({e}); export the model again.")
    try:
        spec = sample(load_space(path / "arch.yaml"))
    except SpaceError as e:
        raise ExportError(f"{path / 'arch.yaml'} is not a fixed architecture: {e}")
    model = build_model(spec, shape, n_classes)
    try:
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # unpickling, size and key mismatches all mean: not these weights
        raise ExportError(f"{path / 'model.pt'}: the weights do not load into the architecture of arch.yaml "
                          f"({str(e).splitlines()[0]}). Export the model again.")
    return model.eval()


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists; pass --force to replace it, or choose another folder.")
