import pytest
import torch

from nas import space as sp
from nas.data import load_dataset, split_train_val
from nas.model import build_model
from nas.train import Diverged, fit, pick_device

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
    history = fit(model, train, val, epochs=3, seed=seed, on_epoch=seen.append, **vars(spec.training))
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
