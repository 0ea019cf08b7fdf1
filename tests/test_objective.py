"""The objective driven through Optuna's own ask/tell and optimize, on tiny data."""

import optuna
import pytest
import torch

from nas import space as sp
from nas import spacefile as sf
from nas.data import load_dataset
from nas.objective import Objective
from nas.data import prepare_search_data
from nas.train import train_spec

CPU = torch.device("cpu")


@pytest.fixture
def prepared(idx_dir):
    return prepare_search_data(load_dataset("fashion-mnist", idx_dir), 0.2, seed=0, device=CPU)


def _study(pruner=None):
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner)


def test_a_trial_stores_what_report_and_export_need(tiny_space, prepared):
    space = sf.load_space(tiny_space)
    study = _study()
    study.optimize(Objective(space, prepared, epochs=2, device=CPU), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    spec = sp.ArchSpec.from_dict(t.user_attrs["spec"])
    assert spec == sp.sample(space, optuna.trial.FixedTrial(t.params))
    assert t.user_attrs["arch"] == spec.describe()
    assert t.user_attrs["n_params"] > 0 and t.user_attrs["flops"] > 0 and t.user_attrs["seconds"] > 0
    assert [c["epoch"] for c in t.user_attrs["curve"]] == [1, 2]
    assert t.intermediate_values == {1: t.user_attrs["curve"][0]["val_acc"], 2: t.value}


def test_the_trial_can_be_rebuilt_and_retrained_to_the_same_score(tiny_space, prepared):
    study = _study()
    study.optimize(Objective(sf.load_space(tiny_space), prepared, epochs=2, device=CPU, seed=5), n_trials=2)
    t = study.trials[1]
    spec = sp.ArchSpec.from_dict(t.user_attrs["spec"])
    _, history = train_spec(spec, prepared, 2, t.user_attrs["seed"], CPU)
    assert history[-1].val_acc == t.value


def _fixed(raw_arch, **training):
    return sf.parse_space({"architecture": raw_arch, "training": {"batch_size": 32} | training})


def _run_one(space, prepared, pruner=None, prior=None):
    study = _study(pruner)
    if prior:
        study.add_trial(prior)
    study.optimize(Objective(space, prepared, epochs=2, device=CPU), n_trials=1)
    return study.trials[-1]


def test_an_architecture_that_does_not_fit_the_input_is_pruned_before_training(prepared):
    space = _fixed({"blocks": 3, "block": {"conv": "conv5x5", "channels": 4}})
    t = _run_one(space, prepared)
    assert t.state == optuna.trial.TrialState.PRUNED
    assert t.user_attrs["reason"].startswith("invalid: block 3") and "curve" not in t.user_attrs
    assert t.user_attrs["rejected"] and t.constraints["fits_input"] > 0  # the sampler learns it is infeasible


def test_max_params_prunes_before_training(prepared):
    space = sf.parse_space({"constraints": {"max_params": 1000}, "architecture": {"blocks": 1}})
    t = _run_one(space, prepared)
    assert t.state == optuna.trial.TrialState.PRUNED and "max_params 1,000" in t.user_attrs["reason"]
    assert t.user_attrs["rejected"] and t.constraints["max_params"] == pytest.approx(t.user_attrs["n_params"] / 1000 - 1)


def test_rejected_nets_do_not_count_against_the_trials_and_tpe_steers_away_from_them(prepared):
    """Blocks 3 to 5 of 5×5 valid convs do not fit 28×28: a run of 20 trials trains 20 nets, and TPE
    (constraint-aware) draws fewer infeasible nets once it has seen some."""
    from nas import study as studies

    space = sf.parse_space({"architecture": {"blocks": {"int": [1, 5]}, "block": {"channels": {"choice": [2, 4]}},
                                             "head": {"layers": 1, "units": 8}}, "budget": {"epochs": 1}})
    study = optuna.create_study(direction="maximize", sampler=studies.make_sampler("tpe", 0))
    granted = iter(range(20))
    studies.run_trials(study, Objective(space, prepared, 1, CPU), lambda: next(granted, None) is not None, None,
                       lambda row: None)
    trials = study.get_trials()
    trained = [t for t in trials if not t.user_attrs.get("rejected")]
    assert len(trained) == 20 and all(t.params["blocks"] <= 2 and max(t.constraints.values()) <= 0 for t in trained)
    rejected = [t for t in trials if t.user_attrs.get("rejected")]
    assert rejected and all(t.params["blocks"] >= 3 and t.constraints["fits_input"] > 0 for t in rejected)
    first, last = ([t.user_attrs.get("rejected", False) for t in part] for part in (trials[:10], trials[-10:]))
    assert sum(first) > sum(last), (first, last)  # random at first, then TPE avoids what it saw rejected


def test_the_pruner_is_consulted_every_epoch(prepared):
    space = _fixed({"blocks": 1, "block": {"channels": 4}, "head": {"layers": 1, "units": 8}})
    prior = optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0},
                                      distributions={}, params={})
    t = _run_one(space, prepared, optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0), prior)
    assert t.state == optuna.trial.TrialState.PRUNED
    assert t.user_attrs["reason"].startswith("pruned at epoch 1") and len(t.user_attrs["curve"]) == 1


def test_a_diverging_trial_is_pruned_as_diverged(prepared):
    space = _fixed({"blocks": 1, "block": {"channels": 4, "activation": "leaky_relu"}}, optimizer="sgd", lr=100.0)
    t = _run_one(space, prepared)
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["reason"].startswith("diverged")


def test_a_trial_that_raises_fails_alone_with_its_reason_and_the_study_goes_on(prepared):
    from nas.study import CAUGHT

    space = _fixed({"blocks": 1, "block": {"channels": 4}, "head": {"layers": 1, "units": 8}})
    calls = []

    def out_of_memory_once(number, record):  # what CUDA raises when a trial does not fit on the GPU
        calls.append(number)
        if number == 0:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    study = _study()
    study.optimize(Objective(space, prepared, epochs=1, device=CPU, on_epoch=out_of_memory_once), n_trials=2, catch=CAUGHT)
    first, second = study.trials
    assert first.state == optuna.trial.TrialState.FAIL
    assert first.user_attrs["reason"] == "failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert second.state == optuna.trial.TrialState.COMPLETE


@pytest.mark.slow
def test_no_network_outlives_its_trial(tiny_space, prepared):
    """Nothing accumulates across trials: after each one, no model (and so no weight tensor) is left alive."""
    import gc

    def live_models():
        gc.collect()
        return sum(type(o) is torch.nn.Sequential for o in gc.get_objects())

    before = live_models()
    counts = []
    study = _study(optuna.pruners.MedianPruner(n_startup_trials=2))
    study.optimize(Objective(sf.load_space(tiny_space), prepared, epochs=2, device=CPU), n_trials=8,
                   callbacks=[lambda *_: counts.append(live_models())])
    assert counts == [before] * 8


def test_a_net_too_large_for_memory_is_refused_from_its_spec(prepared):
    """4096-channel blocks and a 65,536-unit head: 17.9 billion parameters, 72 GB. Nothing is allocated."""
    import resource
    import time

    raw = {"architecture": {"blocks": 2, "block": {"conv": "conv3x3x2", "channels": 4096, "padding": "same"},
                            "head": {"layers": 2, "units": 65536}}}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    for constraints, reason in (({"max_params": 1_000_000}, "too large: 17,902,129,162 parameters > max_params 1,000,000"),
                                ({}, "too large: training needs about")):
        t = _run_one(sf.parse_space(raw | {"constraints": constraints}), prepared)
        assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["reason"].startswith(reason)
        assert t.user_attrs["n_params"] == 17_902_129_162 and "curve" not in t.user_attrs
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 1 << 20  # KiB: grew by under 1 GiB
    assert time.monotonic() - started < 60


def test_the_objective_passes_batch_progress_on_with_the_trials_number(tiny_space, prepared):
    heard = []
    study = _study()
    study.optimize(Objective(sf.load_space(tiny_space), prepared, epochs=2, device=CPU,
                             on_batch=lambda number, record: heard.append((number, record.epoch, record.batch))),
                   n_trials=2)
    assert {n for n, _, _ in heard} == {0, 1} and {e for _, e, _ in heard} == {1, 2}  # each epoch's last batch at least
