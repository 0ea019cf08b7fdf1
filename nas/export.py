"""Best trial -> ArchSpec -> (re)trained model -> files; `load_model` reads them back.

An export folder holds `model.pt` (a state_dict, loadable with `weights_only=True`, that includes
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
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import yaml
from torch import nn

from nas.data import (CHANNELS, MAX_PIXELS, Dataset, Split, available_memory, dataset_inputs, load_dataset, read_images,
                      test_split)
from nas.errors import NasError
from nas.files import (EXPORT_FILES, check_export_target, check_not_input, check_readable_file, new_folder_beside,
                       replace_folder)
from nas.model import ShapeError, build_model, model_info, spec_info
from nas.pipeline import assess, prepare_final_data, prepare_search_data, score_on_test, train_spec
from nas.search import checkpoint, signals_interrupt
from nas.space import Space, SpaceError, fixed_space_dict, load_space, sample
from nas.spec import ArchSpec
from nas.latency import session_latency
from nas.study import (StudyError, accuracy, count_trials, front, load_study, objectives_of, quiet_optuna,
                       storage_failure, storage_inputs, top_trials, trained_trial, trial_row)
from nas.train import EpochRecord, pick_device, predict_logits

FILES = EXPORT_FILES[:3]  # what load_model needs
ONNX_TOLERANCE = 1e-4


class ExportError(NasError):
    """An export folder that cannot be written or read back."""


@dataclass
class Trained:
    """A trial's network trained again and scored on the test set, ready to write."""

    model: nn.Module
    spec: ArchSpec
    metrics: dict[str, Any]
    test: Split


@dataclass(frozen=True)
class TrainingStarted:
    """Event: a network starts training (`trial` is None for `nas train`'s fixed one)."""

    trial: int | None
    index: int
    count: int
    epochs: int
    arch: str
    dataset: str
    n_train: int
    n_held_out: int
    device: str


@dataclass
class Best:
    """What `nas best` shows: the top trials, the retrained ones ranked on test, and the export written."""

    study: str
    n_trials: int
    rows: list[dict[str, Any]]
    retrained: list[dict[str, Any]] = field(default_factory=list)  # best test accuracy first
    reproduced: dict[str, Any] | None = None  # the best trial trained again as in the search
    export: dict[str, Any] | None = None
    objectives: tuple[str, ...] = ("accuracy",)  # several: `rows` is the Pareto front, most accurate first
    tally: dict[str, int] = field(default_factory=dict)  # trained and rejected apart (`study.count_trials`)


def best(
    study_name: str | None,
    storage: str,
    top: int | None = None,
    export: Path | None = None,
    retrain_epochs: int | None = None,
    force: bool = False,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    on_event: Callable[[TrainingStarted | EpochRecord], None] | None = None,
    trial: int | None = None,
) -> Best:
    """The study's top trials (`top`, default 5), or only trial number `trial`; with `retrain_epochs`,
    the top K (default 1) retrained on train+val and ranked by test accuracy; with `export`, the first of
    them (or the best trial trained again as in the search) written there. The export target, the
    device and the dataset are checked before any training, which a signal stops (`search.Interrupted`). A study
    of several objectives has a Pareto front instead: its nets are listed (the first `top`), one exported by `trial`."""
    quiet_optuna()
    study = load_study(study_name, storage)
    objectives = objectives_of(study)
    if trial is not None:
        trials = [trained_trial(study, trial)]
    else:
        trials = front(study)[:top] if len(objectives) > 1 else top_trials(study, top or 5)
    result = Best(study.study_name, len(study.trials), [trial_row(t) for t in trials], objectives=objectives,
                  tally=count_trials(study.trials))
    if export is None and not retrain_epochs:
        return result
    if trial is None and len(objectives) > 1:
        raise StudyError(f"study {study.study_name!r} was searched for {','.join(objectives)}, so it has a front of "
                         f"nets rather than one best: pick one with --trial N (its front: "
                         f"{', '.join(f'#{t.number}' for t in trials)}; `nas best` lists them).")
    dataset = dataset or study.user_attrs["data"]["dataset"]
    if export is not None:
        check_export_target(export, force)
        check_not_input(export, "--export", command_inputs(storage, None, dataset, data_dir))
    dev = pick_device(device)
    with signals_interrupt():
        ds = load_dataset(dataset, data_dir)
        candidates = trials[: top or 1] if retrain_epochs else trials[:1]
        trained = [retrain_trial(t, study, ds, dev, retrain_epochs, i, len(candidates), _stoppable(on_event))
                   for i, t in enumerate(candidates, 1)]
        trained.sort(key=lambda m: m.metrics["test_accuracy"], reverse=True)
        if retrain_epochs:
            result.retrained = retrained_rows(trained)
        else:
            result.reproduced = trained[0].metrics
        if export is not None:
            result.export = export_trained(trained[0], export, study, force)
    return result


def command_inputs(storage: str | None, space: Space | None, dataset: str | None,
                   data_dir: str | Path | None) -> list[tuple[str, Path]]:
    """What a command that exports reads, named for `files.check_not_input`: the study's storage, the space
    file and the baseline files it names, the dataset's files."""
    found = storage_inputs(storage) if storage else []
    if space is not None and space.path is not None:
        found += [("the --space file", space.path)]
        found += [("a baseline file named by the space", b) for b in space.baselines if isinstance(b, Path)]
    return found + (dataset_inputs(dataset, data_dir) if dataset else [])


def _stoppable(on_event: Callable[[Any], None] | None) -> Callable[[Any], None]:
    """`on_event`, after raising a signal that came inside a storage transaction (see `search.checkpoint`)."""
    def event(e: Any) -> None:
        checkpoint()
        if on_event:
            on_event(e)
    return event


def retrained_rows(trained: list[Trained]) -> list[dict[str, Any]]:
    """What `nas best` shows of retrained nets: their trial, accuracies, epochs and size."""
    keys = ("trial", "val_accuracy", "test_accuracy", "epochs", "retrained_on_train_and_val", "n_params", "flops", "arch")
    return [{k: m.metrics[k] for k in keys} | {"gap": m.metrics["test_accuracy"] - m.metrics["val_accuracy"]}
            for m in trained]


def train_fixed(
    space_path: str | Path,
    epochs: int | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    export: Path | None = None,
    force: bool = False,
    on_event: Callable[[TrainingStarted | EpochRecord], None] | None = None,
) -> dict[str, Any]:
    """Train the fixed architecture of a space file on the whole training set and score it on the test
    set (`nas train`); with `export`, write it there. Returns the metrics, with the per-epoch history.
    SIGINT, SIGTERM and SIGHUP stop it with `Interrupted`, nothing left behind."""
    with signals_interrupt():
        return _train_fixed(space_path, epochs, dataset, data_dir, device, seed, export, force, _stoppable(on_event))


def _train_fixed(space_path: str | Path, epochs: int | None, dataset: str | None, data_dir: str | Path | None,
                 device: str, seed: int, export: Path | None, force: bool,
                 on_event: Callable[[TrainingStarted | EpochRecord], None]) -> dict[str, Any]:
    space = load_space(space_path)
    spec = sample(space)
    dev = pick_device(device)
    dataset = dataset or space.dataset
    if export is not None:  # before the training, not after it
        check_export_target(export, force)
        check_not_input(export, "--export", command_inputs(None, space, dataset, data_dir))
    ds = load_dataset(dataset, data_dir)
    _, too_large, _ = assess(spec, ds.input_shape, ds.n_classes, dev, space.max_params, space.max_mflops)
    if too_large:
        raise ExportError(f"{space_path}: the network is {too_large}; make it smaller (or raise the constraint).")
    data = prepare_final_data(ds, dev)
    epochs = epochs or space.epochs
    on_event(TrainingStarted(None, 1, 1, epochs, spec.describe(), ds.name, len(data.train), len(data.test), str(dev)))
    model, history = train_spec(spec, data, epochs, seed, dev, on_event, on_batch=on_event)
    metrics = {"epochs": epochs, "seed": seed} | describe_model(model, spec, ds) | score_on_test(model, data.test, ds.classes)
    metrics["seconds_per_epoch"] = sum(r.seconds for r in history) / len(history)
    if export is not None:
        metrics = write_export(export, model, spec, metrics | {"study": space.name}, data.test.x, force)
    return metrics | {"history": [r.to_dict() for r in history]}


def retrain_trial(
    trial: optuna.trial.FrozenTrial,
    study: optuna.Study,
    ds: Dataset,
    device: torch.device,
    retrain_epochs: int | None = None,
    index: int = 1,
    count: int = 1,
    on_event: Callable[[TrainingStarted | EpochRecord], None] | None = None,
    spec: ArchSpec | None = None,
    deadline: float | None = None,
) -> Trained:
    """Train `trial`'s network again and score it on the test set.

    With `retrain_epochs`, train on train+val for that many epochs, as `spec` if given (`nas run` may
    widen the trial's net), cut short to end by `deadline` (`train_spec`); without, repeat the trial's
    own training (same split, seed and epochs) so the model is the one the search scored.
    """
    searched = ArchSpec.from_dict(trial.user_attrs["spec"])
    spec = spec if spec is not None and retrain_epochs else searched
    seed, data_attrs = trial.user_attrs["seed"], study.user_attrs["data"]
    if retrain_epochs:
        epochs, data = retrain_epochs, prepare_final_data(ds, device)
    else:
        epochs = trial.user_attrs["epochs"]
        data = prepare_search_data(ds, data_attrs["val_fraction"], data_attrs["split_seed"], device, data_attrs["subset"])
    if on_event:
        on_event(TrainingStarted(trial.number, index, count, epochs, spec.describe(), ds.name, len(data.train),
                                 len(data.held_out), str(device)))
    model, history = train_spec(spec, data, epochs, seed, device, on_event, deadline, on_batch=on_event)
    test = data.test if retrain_epochs else test_split(ds).to(device)
    reproduced = {} if retrain_epochs else {"reproduced_val_accuracy": history[-1].val_acc}  # should equal the trial's
    metrics = reproduced | {
        "study": study.study_name,
        "trial": trial.number,
        "val_accuracy": accuracy(trial),
        "retrained_on_train_and_val": bool(retrain_epochs),
        "epochs": len(history),
        "seed": seed,
    } | describe_model(model, spec, ds) | score_on_test(model, test, ds.classes)
    if "latency_ms" in trial.user_attrs:  # what the search measured, beside what the export measures again
        metrics["search_latency_ms"] = trial.user_attrs["latency_ms"]
    if spec != searched:
        metrics["searched_arch"] = searched.describe()
    return Trained(model, spec, metrics, test)


def export_trained(trained: Trained, out: Path, study: optuna.Study | None = None, force: bool = False) -> dict[str, Any]:
    """Write `trained` to `out`; with `study`, also record the export's metrics in it for `nas report`.

    The files are what the user asked for: a study that cannot record them (a read-only storage) only
    sets `recorded_in_study` to False in the returned metrics."""
    metrics = write_export(out, trained.model, trained.spec, trained.metrics, trained.test.x, force)
    if study is not None:
        try:
            study.set_user_attr("export", metrics | {"path": str(out.resolve())})
        except Exception as e:
            if storage_failure(e) is None:
                raise
            return metrics | {"recorded_in_study": False}
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


def write_export(
    out: Path, model: nn.Module, spec: ArchSpec, metrics: dict[str, Any], images: torch.Tensor, force: bool = False
) -> dict[str, Any]:
    """Write the files into a temporary folder beside `out`, then move it into place (see `files`).

    `images` is a batch of real uint8 images: the ONNX and TorchScript files are checked on it and
    metrics.json records how far their outputs are from PyTorch's. Returns the metrics written.
    """
    check_export_target(out, force)
    tmp = new_folder_beside(out)
    try:
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return metrics


def write_portable(folder: Path, model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """`model.onnx` and `model.ts` in `folder`; returns each one's max abs difference from PyTorch on `images`,
    and model.onnx's latency on this machine's CPU (see `latency`)."""
    import onnxruntime  # only exports need it

    cpu = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    x = images[:64].cpu().float().div(255)
    with torch.inference_mode():
        expected = cpu(x)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # torch.onnx's progress lines and TorchScript's deprecation notice
        torch.onnx.export(cpu, (x,), folder / "model.onnx", dynamo=True, external_data=False, verbose=False,
                          input_names=["images"], output_names=["logits"], dynamic_shapes=({0: batch},))
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
    path = Path(path)
    for f in FILES:
        check_readable_file(path / f, f"an export's {f}")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ExportError(f"{path}: missing {', '.join(missing)}; an export folder holds {', '.join(FILES)} "
                          "(write one with `nas best --export DIR`).")
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        shape, classes = tuple(metrics["input_shape"]), tuple(metrics["classes"])
        if not (len(shape) == 3 and all(isinstance(n, int) and n >= 1 for n in shape) and shape[0] in CHANNELS
                and shape[1] * shape[2] <= MAX_PIXELS and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
            raise ValueError(f"input_shape {_short(shape)} and classes {_short(classes)} are not C×H×W and 2+ names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path / 'metrics.json'}: unreadable or incomplete ({e}); export the model again.") from e
    try:
        spec = sample(load_space(path / "arch.yaml"))
        info = spec_info(spec, shape, len(classes))
    except SpaceError as e:
        raise ExportError(f"{path / 'arch.yaml'} is not a fixed architecture: {e}") from e
    except ShapeError as e:
        raise ExportError(f"{path / 'arch.yaml'} does not fit the input {shape} of metrics.json: {e}") from e
    if 4 * info.n_params > available_memory():
        raise ExportError(f"{path / 'arch.yaml'}: a network of {info.n_params:,} parameters does not fit in this "
                          "machine's memory.")
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


def classify(path: str | Path, files: list[Path], top: int = 3) -> list[dict[str, Any]]:
    """The `top` classes, with probabilities, of each image in `files` (PNG/JPG, or .npz of uint8 images),
    by the model exported to `path`, preprocessed as in training."""
    export = open_export(path)
    names, x = read_images(files, export.input_shape)
    probs = torch.softmax(predict_logits(export.model, x), dim=1)
    best = probs.topk(min(top, len(export.classes)), dim=1)
    return [{"file": name, "top": [{"class": export.classes[i], "probability": p} for p, i in zip(ps, idx)]}
            for name, ps, idx in zip(names, best.values.tolist(), best.indices.tolist())]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
