import pytest
import torch

from nas import space as sp
from nas.data import load_dataset, split_train_val
from nas.model import build_model
from nas.train import CROP_PAD, Diverged, augment_batch, fit, pick_device

SMALL = {"architecture": {"blocks": 1, "block": {"conv": "conv5x5", "channels": 4}, "head": {"layers": 1, "units": 16}},
         "training": {"batch_size": 32, "lr": 0.01}}


def _run(idx_dir, seed=0, activation="relu", **training):
    arch = SMALL["architecture"] | {"block": SMALL["architecture"]["block"] | {"activation": activation}}
    raw = {"architecture": arch, "training": SMALL["training"] | training}
    spec = sp.sample(sp.parse_space(raw))
    train, val = split_train_val(load_dataset("fashion-mnist", idx_dir), 0.25, seed=0)
    torch.manual_seed(seed)
    model = build_model(spec, (1, 28, 28), 10)
    seen = []
    history = fit(model, train, val, spec.training, epochs=3, seed=seed, on_epoch=seen.append)
    return history, seen


def test_fit_learns_reports_every_epoch_and_is_seeded(idx_dir):
    history, seen = _run(idx_dir)
    assert [r.epoch for r in history] == [1, 2, 3] and seen == history
    assert history[-1].val_acc >= 0.6  # chance is 0.1 on these easy images
    assert history[-1].loss < history[0].loss
    again, _ = _run(idx_dir)
    assert [r.loss for r in again] == [r.loss for r in history]


def test_a_non_finite_loss_stops_training_as_diverged(idx_dir):
    with pytest.raises(Diverged, match="non-finite in epoch 1"):
        _run(idx_dir, activation="leaky_relu", optimizer="sgd", lr=100.0)


def test_auto_device_is_cuda_only_when_present():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_augmentation_shifts_and_flips_each_image_as_a_whole():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).reshape(2, 3, 5, 5)
    gen = torch.Generator().manual_seed(0)
    cropped = augment_batch(x, "crop", gen)
    padded = torch.nn.functional.pad(x, (CROP_PAD,) * 4)
    windows = [padded[:, :, dy:dy + 5, dx:dx + 5] for dy in range(2 * CROP_PAD + 1) for dx in range(2 * CROP_PAD + 1)]
    for i in range(2):  # each image is one window of its own padded copy, the same for all its channels
        assert any(torch.equal(cropped[i], w[i]) for w in windows)
    flipped = augment_batch(x.repeat(16, 1, 1, 1), "flip", gen)
    kinds = [torch.equal(f, o) or torch.equal(f, o.flip(2)) for f, o in zip(flipped, x.repeat(16, 1, 1, 1))]
    assert all(kinds) and not torch.equal(flipped, x.repeat(16, 1, 1, 1))
    assert cropped.dtype == torch.uint8 and augment_batch(x, "crop_flip", gen).shape == x.shape


def test_augmented_and_bf16_training_still_learn(idx_dir):
    history, _ = _run(idx_dir, augment="crop_flip")
    assert history[-1].val_acc >= 0.5
    plain, _ = _run(idx_dir)
    assert [r.loss for r in history] != [r.loss for r in plain]  # the augmentation did something
    spec = sp.sample(sp.parse_space(SMALL))
    train, val = split_train_val(load_dataset("fashion-mnist", idx_dir), 0.25, seed=0)
    model = build_model(spec, (1, 28, 28), 10)
    bf16 = fit(model, train, val, spec.training, epochs=3, precision="bf16")  # the GPU's autocast path, on CPU
    assert bf16[-1].val_acc >= 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_matches_cpu_accuracy_and_leaks_no_memory(idx_dir):
    spec = sp.sample(sp.parse_space(SMALL))
    train, val = split_train_val(load_dataset("fashion-mnist", idx_dir), 0.25, seed=0)
    train, val = train.to("cuda"), val.to("cuda")
    allocated = []
    for seed in range(5):
        torch.manual_seed(seed)
        model = build_model(spec, (1, 28, 28), 10).cuda()
        history = fit(model, train, val, spec.training, epochs=3, seed=seed)
        del model
        allocated.append(torch.cuda.memory_allocated())
        assert history[-1].val_acc >= 0.5
    assert max(allocated) - min(allocated) < 4 << 20  # nothing accumulates across trials
