import time

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from nas import space as sp
from nas import spacefile as sf
from nas.data import Split, load_dataset, split_train_val
from nas.model import build_model
from nas.train import CROP_PAD, SCHEDULES, Diverged, TimeUp, _resizer, augment_batch, epochs_within, fit, pick_device

SMALL = {"architecture": {"blocks": 1, "block": {"conv": "conv5x5", "channels": 4}, "head": {"layers": 1, "units": 16}},
         "training": {"batch_size": 32, "lr": 0.01}}


def _run(idx_dir, seed=0, activation="relu", **training):
    arch = SMALL["architecture"] | {"block": SMALL["architecture"]["block"] | {"activation": activation}}
    raw = {"architecture": arch, "training": SMALL["training"] | training}
    spec = sp.sample(sf.parse_space(raw))
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


@pytest.mark.parametrize("name", ["constant", "cosine", "onecycle"])
def test_each_schedule_peaks_at_the_recipes_lr_and_cosine_ones_end_near_zero(name):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule, lrs = SCHEDULES[name](opt, 200), []
    for _ in range(200):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if schedule:
            schedule.step()
    assert max(lrs) == pytest.approx(0.1, rel=1e-3)
    if name == "constant":
        assert set(lrs) == {0.1}
    else:  # warm up from a fraction of the peak, then anneal towards zero
        assert lrs[0] < 0.05 and lrs[-1] < 0.002 and lrs.index(max(lrs)) in range(5, 60)


def test_schedule_and_label_smoothing_reach_the_training_loop(idx_dir):
    plain, _ = _run(idx_dir)
    smoothed, _ = _run(idx_dir, label_smoothing=0.2)
    cosine, _ = _run(idx_dir, schedule="cosine")
    assert smoothed[-1].loss > plain[-1].loss  # a smoothed target cannot be fitted to zero loss
    assert cosine[0].loss != plain[0].loss and cosine[-1].val_acc >= 0.6


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
    spec = sp.sample(sf.parse_space(SMALL))
    train, val = split_train_val(load_dataset("fashion-mnist", idx_dir), 0.25, seed=0)
    model = build_model(spec, (1, 28, 28), 10)
    bf16 = fit(model, train, val, spec.training, epochs=3, precision="bf16")  # the GPU's autocast path, on CPU
    assert bf16[-1].val_acc >= 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_matches_cpu_accuracy_and_leaks_no_memory(idx_dir):
    spec = sp.sample(sf.parse_space(SMALL))
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


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_a_schedule_laid_out_again_mid_run_still_peaks_at_the_recipes_lr_and_anneals(name):
    """What `fit(shrink=True)` does when a retrain runs slow: a new schedule over the steps left."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    first = SCHEDULES[name](opt, 200)
    for _ in range(50):
        opt.step()
        first.step()
    schedule, lrs = SCHEDULES[name](opt, 100), []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert max(lrs) == pytest.approx(0.1, rel=1e-2) and lrs[-1] < 0.002


def test_epochs_within_cuts_the_epochs_to_what_the_first_ones_pace_fits_and_a_share_of_one_more():
    assert epochs_within(1.5, 0.5, 10.0, 20) == (6, 0.0)  # the one done and 5 more, nothing left over
    assert epochs_within(1.5, 0.5, 11.5, 20) == (6, pytest.approx(2 / 3))  # 1.5 s left: 0.5 to score, 1 to train
    assert epochs_within(1.5, 0.5, 10.6, 20) == (6, 0.0)  # 0.1 s of training: not worth scoring again
    assert epochs_within(2.0, 0.0, 100.0, 20) == (20, 0.0)  # never more than planned
    assert epochs_within(4.0, 1.0, -3.0, 20) == (1, 0.0)  # already late: the one done


def test_fit_stops_between_batches_at_its_deadline(idx_dir):
    spec = sp.sample(sf.parse_space(SMALL))
    train, val = split_train_val(load_dataset("fashion-mnist", idx_dir), 0.25, seed=0)
    with pytest.raises(TimeUp, match="stopped at the time limit in epoch 1") as e:
        fit(build_model(spec, (1, 28, 28), 10), train, val, spec.training, epochs=3, deadline=time.monotonic())
    assert e.value.history == []


def test_fit_tells_progress_inside_each_epoch_at_most_as_often_as_asked(idx_dir):
    spec = sp.sample(sf.parse_space(SMALL))
    train, val = split_train_val(load_dataset("fashion-mnist", idx_dir), 0.25, seed=0)
    every, seldom = [], []
    fit(build_model(spec, (1, 28, 28), 10), train, val, spec.training, epochs=2, on_batch=every.append, batch_every=0)
    n = -(-len(train.y) // 32)
    assert [(r.epoch, r.batch) for r in every] == [(e, b) for e in (1, 2) for b in range(1, n + 1)]
    assert all(r.n_batches == n and r.images_per_s > 0 for r in every)
    fit(build_model(spec, (1, 28, 28), 10), train, val, spec.training, epochs=2, on_batch=seldom.append,
        batch_every=3600)
    assert [(r.epoch, r.batch) for r in seldom] == [(1, n), (2, n)]  # throttled: only each epoch's last batch


def _lone_epoch(idx_dir, name, deadline, images, on_batch=None):
    """One epoch of SMALL on `images` of the training split, with `shrink` and `deadline`; returns its
    record, the training set's size and every learning rate the epoch's steps used."""
    spec = sp.sample(sf.parse_space({**SMALL, "training": SMALL["training"] | {"schedule": name}}))
    train, val = split_train_val(load_dataset("fashion-mnist", idx_dir), 0.25, seed=0)
    model = build_model(spec, (1, 28, 28), 10)
    lrs = []  # the rate each optimizer step used
    hook = register_optimizer_step_pre_hook(lambda opt, *_: lrs.append(opt.param_groups[0]["lr"]))
    try:
        history = fit(model, train, val, spec.training, epochs=1, deadline=deadline, shrink=True, images=images,
                  on_batch=on_batch, batch_every=0)
    finally:
        hook.remove()
    return history[0], len(train.y), lrs


@pytest.mark.parametrize("name,images", [("cosine", 64), ("onecycle", 64), ("onecycle", 20)])
def test_a_lone_epoch_planned_on_part_of_the_images_grows_to_all_that_fit_on_one_schedule(idx_dir, name, images):
    """A one-epoch retrain whose pace was timed too slow: halfway it sees that the whole set fits before the
    (far) deadline and trains on all of it, its schedule stretched over them, not restarted (also when
    the first batch was a partial one: one-cycle refuses a step past its plan)."""
    record, n, lrs = _lone_epoch(idx_dir, name, time.monotonic() + 3600, images)
    assert record.images == n and len(lrs) == -(-n // 32)
    assert lrs[-1] < 0.002 and max(lrs) == pytest.approx(0.01, rel=0.05)  # annealed to the end, peaked once
    peak = lrs.index(max(lrs))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # no restart after the peak


def test_a_lone_epoch_without_a_deadline_trains_on_the_images_asked(idx_dir):
    record, n, lrs = _lone_epoch(idx_dir, "cosine", None, 96)
    assert record.images == 96 < n and len(lrs) == 3


def test_halfway_through_a_lone_epoch_it_ends_where_the_deadline_allows():
    """The decision `fit` takes halfway: with the deadline passed, end after the images already trained;
    with hours left, go on to all of them."""
    spec = sp.sample(sf.parse_space(SMALL))
    model = build_model(spec, (1, 28, 28), 10)
    val = Split(torch.zeros(64, 1, 28, 28, dtype=torch.uint8), torch.zeros(64, dtype=torch.long))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    assert _resizer(model, val, None, spec.training, opt, time.monotonic() - 1)(500, 16, 4000)[0] == 500
    assert _resizer(model, val, None, spec.training, opt, time.monotonic() + 3600)(500, 16, 4000)[0] == 4000


def test_a_lone_epoch_that_reaches_its_deadline_ends_there_with_what_it_trained(idx_dir):
    """Slower after halfway than before (here each batch is followed by a pause): at the deadline the epoch
    ends and is scored, rather than raising TimeUp and losing the whole retrain."""
    record, n, _ = _lone_epoch(idx_dir, "cosine", time.monotonic() + 1.0, 10**6, on_batch=lambda _: time.sleep(0.3))
    assert 0 < record.images < n
