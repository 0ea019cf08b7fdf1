"""The training loop: `fit` trains a model on tensors already on its device (`train_spec`: a spec's seeded
network, from scratch; `epoch_pace`: how long that takes here); no Optuna here.

Batches are cut from the uint8 dataset on the training device by a shuffled index; loss and correct
counts accumulate on the device and are read once per epoch, so the loop never waits on the host.
On a GPU the forward pass runs under bf16 autocast with cuDNN autotuning; augmentation (random crop
with padding, horizontal flip) is done on the whole batch there too.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas import names
from nas.data import Prepared, Split
from nas.errors import NasError
from nas.model import new_model
from nas.spec import ArchSpec, TrainSpec
from nas.system import pick_threads

EVAL_BATCH = 4096
CROP_PAD = 2  # random crop: shift by up to this many pixels, zero-filled (RandomCrop(28, padding=2))


class Diverged(Exception):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int):
        super().__init__(f"loss became non-finite in epoch {epoch}")
        self.epoch = epoch


class DivergedError(NasError):
    """A final training that diverged, told to the user (`nas train`, `nas best --export`, `nas run`)."""


class TimeUp(Exception):
    """Training reached its deadline before its last epoch; the model keeps what it learnt so far."""

    prefix = names.TIME_LIMIT

    def __init__(self, history: list[EpochRecord]):
        super().__init__(f"{self.prefix} after epoch {len(history)}" if history else f"{self.prefix} in epoch 1")
        self.history = history


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training: mean loss, accuracy on the training batches and on the held-out split."""

    epoch: int
    loss: float
    train_acc: float
    val_acc: float
    seconds: float
    images: int = 0  # trained on in this epoch: fewer than the training set in a retrain's cut last epoch

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BatchRecord:
    """Progress inside an epoch: `batch` of its `n_batches` trained, at `images_per_s` since the epoch began
    (timed on the host: no wait on the device is added for it)."""

    epoch: int
    batch: int
    n_batches: int
    images_per_s: float


class DeviceError(NasError):
    """A device that this machine does not have."""


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is the first CUDA GPU when there is one, else the CPU; a device that is not here is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = "" if torch.version.cuda else ", a build without CUDA"
            raise DeviceError(f"--device {name}: this machine has no CUDA GPU that torch can use (torch "
                              f"{torch.__version__}{build}). Use --device cpu, or auto to take a GPU when there is one.")
        if device.index is not None and device.index >= n:
            raise DeviceError(f"--device {name}: this machine has {n} CUDA GPU{'s' * (n > 1)}, cuda:0 to cuda:{n - 1}.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: Apple's MPS is not available here. Use --device cpu or auto.")
    return device


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, r: torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay),
    "adamw": lambda params, r: torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay),
    "sgd": lambda params, r: torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay),
    "adadelta": lambda params, r: torch.optim.Adadelta(params, lr=r.lr, weight_decay=r.weight_decay),
}
names.check_registry(OPTIMIZERS, names.OPTIMIZERS, "optimizer")


def _cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    warmup = max(1, steps // 20)  # a short linear warm-up keeps the first steps of a high rate stable
    return torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (warmup + 1), total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - warmup))], milestones=[warmup])


# Learning rate over the whole run, stepped every batch: the recipe's lr is the peak.
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler | None]] = {
    "constant": lambda opt, steps: None,
    "cosine": _cosine,
    "onecycle": lambda opt, steps: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g.get("max_lr", g["lr"]) for g in opt.param_groups], total_steps=steps, pct_start=0.25, cycle_momentum=False),
}
names.check_registry(SCHEDULES, names.SCHEDULES, "schedule")


def make_optimizer(model: nn.Module, recipe: TrainSpec) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's parameters."""
    return names.lookup(OPTIMIZERS, recipe.optimizer, "optimizer")(model.parameters(), recipe)


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    recipe: TrainSpec,
    *,
    epochs: int,
    seed: int = 0,
    precision: str = "auto",
    on_epoch: Callable[[EpochRecord], None] | None = None,
    deadline: float | None = None,
    shrink: bool = False,
    on_batch: Callable[[BatchRecord], None] | None = None, batch_every: float = 1.0,
    images: int | None = None,
) -> list[EpochRecord]:
    """Train for `epochs` as `recipe` says, scoring `val` after each; `on_epoch` may raise to stop (a pruner does);
    `on_batch` hears of the batches at most once every `batch_every` seconds, and after an epoch's last.
    `precision`: `auto` is bf16 autocast on CUDA and fp32 elsewhere; `bf16` or `fp32` force it.
    `deadline` (monotonic): past it, between two batches, raise `TimeUp`. With `shrink`, the epochs are cut
    after the first to what fits before it (`_replan`): whole epochs and a last one on part of the images.
    `images`: one epoch on that many random images of `train`; with `shrink` it is resized halfway to what
    fits before the deadline (`_resizer`): a lone epoch has no later one to correct a pace timed before it."""
    device = next(model.parameters()).device
    dtype = _prepare(model, device, precision)
    opt = make_optimizer(model, recipe)
    lone = min(images, len(train.y)) if images and epochs == 1 else None  # a single epoch (on part of the images)
    schedule = _schedule(recipe, opt, math.ceil(lone / recipe.batch_size) if lone else epochs * _steps(train, recipe))
    shuffle = torch.Generator(device=device).manual_seed(seed)
    history, epoch, last = [], 0, train  # the records so far, the epoch in progress, what the last epoch trains on
    while epoch < epochs:
        epoch, start = epoch + 1, time.perf_counter()
        part = last if epoch == epochs else train
        resize = _resizer(model, val, dtype, recipe, opt, deadline) if lone and shrink and deadline else None
        try:
            loss, train_acc, seen = train_one_epoch(model, part, opt, recipe.batch_size, shuffle, recipe.augment, dtype,
                                                    schedule, recipe.label_smoothing, deadline,
                                                    _batch_reporter(on_batch, batch_every, epoch), lone, resize)
        except TimeUp:
            raise TimeUp(history) from None
        trained = time.perf_counter()
        record = _scored(model, val, dtype, epoch, loss, train_acc, start, seen)
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if deadline is not None and shrink and epoch == 1 < epochs:
            timed = (trained - start, record.seconds - (trained - start))  # training, scoring
            epochs, last, schedule = _replan(train, recipe, opt, schedule, timed, deadline, epochs, shuffle)
        if deadline is not None and epoch < epochs and time.monotonic() >= deadline:
            raise TimeUp(history)
    return history


def _scored(model: nn.Module, val: Split, dtype: torch.dtype | None, epoch: int, loss: float, train_acc: float,
            start: float, seen: int) -> EpochRecord:
    """The record of an epoch that began at `start` (perf_counter) and trained on `seen` images, once `val` is scored."""
    val_acc = evaluate(model, val, dtype)
    if not math.isfinite(loss):
        raise Diverged(epoch)
    return EpochRecord(epoch, loss, train_acc, val_acc, time.perf_counter() - start, seen)


def _schedule(recipe: TrainSpec, opt: torch.optim.Optimizer, steps: int) -> Any:
    """`recipe`'s learning rate schedule for `opt`, laid out over `steps` optimizer steps."""
    return names.lookup(SCHEDULES, recipe.schedule, "schedule")(opt, steps)


def _steps(train: Split, recipe: TrainSpec) -> int:
    """Optimizer steps in one epoch of `train`."""
    return math.ceil(len(train.y) / recipe.batch_size)


def _resizer(model: nn.Module, val: Split, dtype: torch.dtype | None, recipe: TrainSpec, opt: torch.optim.Optimizer,
             deadline: float) -> Callable[[int, int, int], tuple[int, Any]]:
    """What `train_one_epoch` calls halfway through a lone epoch begun now, after `seen` of its `n` images in
    `batches` steps: the images it ends after (all those that fit before `deadline` at its pace so far, with
    the scoring after it, timed here on a few images), and the schedule laid out over its steps, advanced
    to where training is (one schedule over the whole epoch, not a restart)."""
    began = time.monotonic()

    def resize(seen: int, batches: int, n: int) -> tuple[int, Any]:
        if val.x.is_cuda:  # the host runs ahead of the GPU: wait for the steps so far before reading the clock
            torch.cuda.synchronize(val.x.device)
        per_image = max(time.monotonic() - began, 1e-6) / seen
        score_s = _scoring_seconds(model, val, dtype, 512)
        model.train()
        end = min(n, max(seen, seen + int((deadline - time.monotonic() - score_s) / per_image)))
        schedule = _schedule(recipe, opt, batches + math.ceil((end - seen) / recipe.batch_size))
        for _ in range(batches if schedule is not None else 0):
            schedule.step()
        return end, schedule

    return resize


def _replan(train: Split, recipe: TrainSpec, opt: torch.optim.Optimizer, schedule: Any, first: tuple[float, float],
            deadline: float, epochs: int, shuffle: torch.Generator) -> tuple[int, Split, Any]:
    """After a first epoch that took `first` (training, scoring) seconds: the epochs that fit before `deadline`,
    what the last trains on (part of the images when only part fits), and the schedule laid out again over
    the steps left; all as they were when every epoch fits."""
    whole, share = epochs_within(*first, deadline - time.monotonic(), epochs)
    if whole == epochs:
        return epochs, train, schedule
    last = _random_part(train, int(share * len(train.y)), shuffle) if share else train
    steps = (whole - 1) * _steps(train, recipe) + (_steps(last, recipe) if share else 0)
    return whole + (1 if share else 0), last, _schedule(recipe, opt, steps) if steps else schedule


def _random_part(train: Split, n: int, generator: torch.Generator) -> Split:
    """`n` images of `train` drawn at random (on its device): a last epoch cut to the time left."""
    keep = torch.randperm(len(train.y), generator=generator, device=generator.device)[:n]
    return Split(train.x[keep], train.y[keep])


def _batch_reporter(on_batch: Callable[[BatchRecord], None] | None, every: float,
                    epoch: int) -> Callable[[int, int, int], None] | None:
    """What `train_one_epoch` calls after each batch (its number, of how many, images so far): a clock read,
    and `on_batch` once `every` seconds passed, and after the last batch."""
    if on_batch is None:
        return None
    start = last = time.monotonic()

    def done(batch: int, n_batches: int, images: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every or batch == n_batches:
            last = now
            on_batch(BatchRecord(epoch, batch, n_batches, images / max(now - start, 1e-9)))

    return done


MIN_SHARE = 0.1  # a cut last epoch on fewer of the images than this share is not worth its scoring


def epochs_within(train_s: float, score_s: float, seconds_left: float, planned: int) -> tuple[int, float]:
    """What of `planned` epochs fits when the first took `train_s` to train and `score_s` to score and
    `seconds_left` remain after it: the whole epochs (at least the one done), and the share of the
    images that one more epoch, cut short, can train on and still be scored in time (0: none, or too few)."""
    per = max(train_s + score_s, 1e-9)
    more = int(max(0.0, seconds_left) / per)
    if 1 + more >= planned:
        return planned, 0.0
    share = min(1.0, (seconds_left - more * per - score_s) / max(train_s, 1e-9))
    return 1 + more, share if share >= MIN_SHARE else 0.0


def train_spec(
    spec: ArchSpec,
    data: Prepared,
    epochs: int,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    deadline: float | None = None,
    on_batch: Callable[[BatchRecord], None] | None = None,
    images: int | None = None,
) -> tuple[nn.Sequential, list[EpochRecord]]:
    """Build `spec`'s seeded network and train it on `data.train`, scoring `data.held_out` every epoch.
    With a `deadline` (monotonic), the epochs are cut to fit it (`fit`'s shrink) and training stops at it:
    fewer records than `epochs` say so. `on_batch` hears of progress inside an epoch about once a second.
    `images`: one epoch on that many images, resized halfway to the deadline (`fit`)."""
    model = new_model(spec, data, seed, device)
    fit_threads()
    try:
        return model, fit(model, data.train, data.held_out, spec.training, epochs=epochs, seed=seed, on_epoch=on_epoch,
                          deadline=deadline, shrink=True, on_batch=on_batch, images=images)
    except TimeUp as e:
        return model, e.history
    except Diverged as e:
        lr = spec.training.lr
        raise DivergedError(f"training {spec.describe()} diverged: its loss became NaN or infinite in epoch {e.epoch} "
                       f"(learning rate {lr:g}, {spec.training.optimizer}). Lower the learning rate (training.lr, say "
                       f"to {lr / 10:g}) and train it again; of a searched study, `nas best --trial N --export DIR` "
                       "exports another trial.") from None


def fit_threads() -> None:
    """Train with the threads that other processes leave free now (or OMP_NUM_THREADS): more would make a small
    net's training several times slower, not a little (`system`)."""
    torch.set_num_threads(pick_threads().n)


def seconds_per_epoch(spec: ArchSpec, data: Prepared, device: torch.device, sample: int = 2048) -> float:
    """How long one epoch of `train_spec` on `data` takes here (`epoch_pace`'s two parts together)."""
    return sum(epoch_pace(spec, data, device, sample))


def epoch_pace(spec: ArchSpec, data: Prepared, device: torch.device, sample: int = 2048) -> tuple[float, float]:
    """Seconds to train one epoch of `data.train` here and to score `data.held_out` once, timed on `sample`
    images of each (after a warm-up batch) and scaled: what plans a retrain to fit a time budget. Kept
    short (seconds on a busy CPU), since the budget pays for it; the retrain checks its own pace after
    its first epoch anyway."""
    model = new_model(spec, data, 0, device)
    fit_threads()
    n, none = min(sample, len(data.train)), Split(data.train.x[:0], data.train.y[:0])
    fit(model, Split(data.train.x[: spec.training.batch_size], data.train.y[: spec.training.batch_size]), none,
        spec.training, epochs=1)  # the first steps allocate and pick kernels: not part of an epoch's pace
    start = time.perf_counter()
    fit(model, Split(data.train.x[:n], data.train.y[:n]), none, spec.training, epochs=1)
    train = (time.perf_counter() - start) * len(data.train) / n
    return train, _scoring_seconds(model, data.held_out, None, sample)


def _scoring_seconds(model: nn.Module, held_out: Split, dtype: torch.dtype | None, sample: int) -> float:
    """Seconds to score all of `held_out`, timed on `sample` of its images after an untimed first pass over
    them (which picks kernels for that batch shape: timed, it made scoring look 4 times slower)."""
    part = Split(held_out.x[:sample], held_out.y[:sample])
    evaluate(model, part, dtype)
    start = time.perf_counter()
    evaluate(model, part, dtype)
    return (time.perf_counter() - start) * len(held_out.y) / max(len(part.y), 1)


def _prepare(model: nn.Module, device: torch.device, precision: str) -> torch.dtype | None:
    """Set up `model` and the backend for training on `device`; returns the autocast dtype (None: fp32)."""
    model.to(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU alike
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every batch has the same shape, so the tuning pays off
    return _autocast_dtype(precision, device)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if precision in ("fp32", "auto"):
        return None
    raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")


def train_one_epoch(
    model: nn.Module,
    data: Split,
    opt: torch.optim.Optimizer,
    batch_size: int,
    shuffle: torch.Generator,
    augment: str = "none",
    dtype: torch.dtype | None = None,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    label_smoothing: float = 0.0,
    deadline: float | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
    stop: int | None = None,
    resize: Callable[[int, int, int], tuple[int, Any]] | None = None,
) -> tuple[float, float, int]:
    """One pass over `data` (or `stop` of its images) in shuffled batches, stepping `schedule` after each;
    returns (mean loss, accuracy, images trained) read once at the end. Past `deadline` (monotonic), raise
    `TimeUp` between two batches (a pass given a `stop` ends there instead, once it trained a batch).
    `on_batch(k, batches, images)` after the k-th batch, nothing read from the device; halfway,
    `resize(seen, batches, n)` may change where the pass stops, and its schedule."""
    model.train()
    n = len(data.y)
    end = n if stop is None else stop
    order = torch.randperm(n, device=data.x.device, generator=shuffle)
    total_loss = torch.zeros((), device=data.x.device)
    correct = torch.zeros((), device=data.x.device, dtype=torch.long)
    seen = batches = 0
    while seen < end:
        if deadline is not None and time.monotonic() >= deadline:
            if stop is not None and seen:  # a lone epoch ends here, scored with what it trained
                break
            raise TimeUp([])
        idx = order[seen : min(seen + batch_size, end)]
        x, y = data.x[idx], data.y[idx]
        x = augment_batch(x, augment, shuffle)
        with _autocast(x.device, dtype):  # the forward pass only; backward follows the dtypes it chose
            logits = model(_as_input(x))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
        total_loss, correct = total_loss + loss.detach() * len(idx), correct + (logits.argmax(1) == y).sum()
        seen, batches = seen + len(idx), batches + 1
        if resize is not None and seen >= end // 2:
            (end, schedule), resize = resize(seen, batches, n), None
        if on_batch is not None:
            on_batch(batches, batches + math.ceil((end - seen) / batch_size), seen)
    return total_loss.item() / seen, correct.item() / seen, seen


def _crop(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift every image by up to CROP_PAD pixels each way, zero-filled (RandomCrop(H, padding=CROP_PAD))."""
    n, c, h, w = x.shape
    p = CROP_PAD
    shift = torch.randint(0, 2 * p + 1, (2, n), device=x.device, generator=gen)
    rows = (shift[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (shift[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return F.pad(x, (p, p, p, p))[torch.arange(n, device=x.device)[:, None, None, None],
                                   torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left to right."""
    flip = torch.rand(len(x), device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


AUGMENTATIONS: dict[str, tuple[Callable[[torch.Tensor, torch.Generator], torch.Tensor], ...]] = {
    "none": (),
    "flip": (_flip,),
    "crop": (_crop,),
    "crop_flip": (_crop, _flip),
}
names.check_registry(AUGMENTATIONS, names.AUGMENTATIONS, "augmentation")


def augment_batch(x: torch.Tensor, augment: str, gen: torch.Generator) -> torch.Tensor:
    """The `augment` transforms applied to every uint8 image of the batch, on its device."""
    for transform in names.lookup(AUGMENTATIONS, augment, "augmentation"):
        x = transform(x, gen)
    return x


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The model's class logits (float32) for every uint8 image in `x`, in large batches."""
    model.eval()
    with _autocast(x.device, dtype):
        return torch.cat([model(_as_input(x[i : i + EVAL_BATCH])).float() for i in range(0, len(x), EVAL_BATCH)])


def predict(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Predicted class of every uint8 image in `x`."""
    return predict_logits(model, x, dtype).argmax(1)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _as_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1], channels-last, as the model expects (it normalises itself)."""
    return x.float().div_(255).contiguous(memory_format=torch.channels_last)


def evaluate(model: nn.Module, data: Split, dtype: torch.dtype | None = None) -> float:
    """Accuracy on `data`."""
    return (predict(model, data.x, dtype) == data.y).float().mean().item() if len(data.y) else float("nan")

