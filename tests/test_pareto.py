"""Several objectives: the pareto pruner's rule on made-up curves (ask/tell, no training), latency
measurement, and the front through `nas search`, `nas best` and its export."""

from __future__ import annotations

import dataclasses
import json
import re
import time

import optuna
import pytest
import torch
from typer.testing import CliRunner

from nas import latency, pareto, study as studies, views
from nas.cli import app
from nas.objective import Objective
from nas.spacefile import parse_space
from nas.spec import ArchSpec
from nas.train import EpochRecord

State = optuna.trial.TrialState


def squash(text: str) -> str:
    return " ".join(text.split())


def add_trial(study: optuna.Study, accs: list[float], latency_ms: float, state: State = State.COMPLETE) -> None:
    """A trial that trained len(accs) epochs with these validation accuracies and this latency."""
    curve = [{"epoch": e, "val_acc": a} for e, a in enumerate(accs, 1)]
    values = [accs[-1], latency_ms] if state == State.COMPLETE else None
    study.add_trial(optuna.trial.create_trial(state=state, values=values, user_attrs={"curve": curve, "latency_ms": latency_ms}))


def ask(study: optuna.Study, latency_ms: float) -> optuna.Trial:
    trial = study.ask()
    trial.set_user_attr("latency_ms", latency_ms)
    return trial


def pareto_objective(epochs: int = 8) -> Objective:
    space = parse_space({"objectives": ["accuracy", "latency"], "budget": {"dominated_by": 2}})  # an old key: still read, unused
    return Objective(space, None, epochs, torch.device("cpu"), pareto=True)


def stops(objective: Objective, trial: optuna.Trial, epoch: int, acc: float) -> bool:
    try:
        objective._pareto_prune(trial, EpochRecord(epoch, 0.0, 0.0, acc, 0.0))
    except optuna.TrialPruned:
        return True
    return False


def test_dominators_counts_those_as_good_in_every_objective_and_better_in_one():
    me = (0.80, 2.0)
    others = [(0.85, 1.0), (0.80, 2.0), (0.80, 1.5), (0.90, 3.0), (0.70, 0.5), (0.81, 2.0)]
    assert pareto.dominators(me, others) == 3  # (0.85, 1.0), (0.80, 1.5), (0.81, 2.0); a tie dominates nothing
    assert pareto.dominators((0.5,), [(0.6,), (0.5,), (0.4,)]) == 1  # accuracy alone: the single-objective case


def test_ranks_are_the_depths_of_non_dominated_sorting():
    points = [(0.9, 3.0), (0.8, 1.0), (0.7, 2.0), (0.6, 3.0), (0.8, 1.0), (0.95, 0.5)]
    assert pareto.ranks(points) == [1, 1, 2, 3, 1, 0]  # equal points share a rank
    assert pareto.ranks([]) == [] and pareto.ranks([(0.5,), (0.7,), (0.5,)]) == [1, 0, 1]


def test_the_pareto_pruner_stops_a_trial_ranked_behind_the_median_of_the_finished_trials():
    study = optuna.create_study(directions=["maximize", "minimize"])
    chain = [(0.9, 1.0), (0.8, 2.0), (0.7, 3.0), (0.6, 4.0)]  # each dominates the next: ranks 0, 1, 2, 3
    for i, (acc, ms) in enumerate(chain):  # pruned trials count at the epochs they reached
        add_trial(study, [0.5, acc, acc, acc][:3 + i % 2], ms, State.COMPLETE if i % 2 else State.PRUNED)
    add_trial(study, [0.3], 0.5, State.PRUNED)  # stopped before epoch 2: not ranked there
    add_trial(study, [0.95, 0.95, 0.95], 0.1, State.RUNNING)  # still running: not ranked either
    objective = pareto_objective()
    assert not stops(objective, ask(study, 3.5), 2, 0.65)  # 4 finished trials reached epoch 2: too few to judge

    add_trial(study, [0.5, 0.5, 0.5, 0.5], 5.0)  # the fifth: ranks 0, 1, 2, 3, 4 at epoch 2, median 2
    slow = ask(study, 3.5)
    assert stops(objective, slow, 2, 0.65)  # behind (0.9, 1), (0.8, 2) and (0.7, 3): rank 3
    assert study.trials[slow.number].user_attrs["reason"] == ("pruned at epoch 2: Pareto rank 3 there, behind the "
                                                              "median rank 2 of the 5 finished trials that reached it")
    assert not stops(objective, ask(study, 2.5), 2, 0.75)  # rank 2, at the median: it goes on
    assert not stops(objective, ask(study, 0.4), 2, 0.10)  # the fastest of those ranked: the front, never stopped
    assert stops(objective, ask(study, 9.0), 3, 0.01)  # every epoch
    assert stops(objective, ask(study, 9.0), 1, 0.01)  # the first too: 6 finished trials reached it, all ahead
    assert not stops(objective, ask(study, 9.0), 8, 0.01)  # never the last: the trial is already paid for


def test_latency_timing_is_bounded_by_runs_and_time_and_takes_turns_in_windows():
    calls = []
    times = latency.timed_runs({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, seconds=0)
    assert [len(t) for t in times.values()] == [latency.MIN_RUNS] * 2  # no time left: the fewest runs
    block = latency.WARMUP + latency.MIN_RUNS
    assert calls == ["a"] * block + ["b"] * block  # a warmed-up block each: runs of the other size spoil the cache
    times = latency.timed_runs({"a": lambda: None}, seconds=float("inf"))
    assert len(times["a"]) == latency.MAX_RUNS  # all the time in the world: still a bounded count
    calls.clear()
    figures = latency.low_percentiles({"latency_ms": lambda: calls.append("a"), "latency_ms_64": lambda: calls.append("b")},
                                      seconds=0, windows=3)
    assert set(figures) == {"latency_ms", "latency_ms_64", "latency_spread_ms", "latency_spread_ms_64"}
    n_windows, rest = divmod(len(calls), 2 * block)  # at least 3 (more while the fastest is noisy)
    assert calls == (["a"] * block + ["b"] * block) * n_windows and not rest and 3 <= n_windows <= latency.MAX_WINDOWS


def test_latency_keeps_the_fastest_window_with_its_own_spread():
    slow, fast = [0.004, 0.005, 0.006, 0.009, 0.02], [0.001, 0.0012, 0.0013, 0.0014, 0.003]
    times = latency.lowest_window([{"latency_ms": slow}, {"latency_ms": fast}, {"latency_ms": slow}])
    assert times["latency_ms"] == pytest.approx(1.16) and times["latency_spread_ms"] == pytest.approx(0.22)


def test_latency_times_more_windows_while_the_fastest_is_noisy():
    assert latency.noisy({"latency_ms": 0.05, "latency_spread_ms": 0.01}, "latency_ms")  # 20%: slowed as well
    assert not latency.noisy({"latency_ms": 0.05, "latency_spread_ms": 0.002}, "latency_ms")  # 4%: a quiet window
    runs = iter(range(10_000))
    block = latency.WARMUP + latency.MIN_RUNS
    uneven = lambda: time.sleep(0.002 * (next(runs) % block))  # each window's runs: 4, 6, ... 12 ms; never quiet
    latency.low_percentiles({"latency_ms": uneven}, seconds=0, windows=2)
    assert next(runs) == latency.MAX_WINDOWS * block  # as many windows as allowed


def test_latency_timed_in_windows_takes_the_window_that_was_not_slowed():
    runs = iter(range(10_000))
    slowed = lambda: time.sleep(0.02 if next(runs) < 2 * (latency.WARMUP + latency.MIN_RUNS) else 0.0)  # 2 windows slowed
    times = latency.low_percentiles({"latency_ms": slowed}, seconds=0, windows=3)
    assert times["latency_ms"] < 20  # the third window's figure, not a slowed one (each of those over 20 ms)


def test_onnx_latency_times_a_net_at_batch_1_and_64_with_its_noise():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    times = latency.onnx_latency(net, (1, 28, 28), seconds=0)
    assert set(times) == {"latency_ms", "latency_ms_64", "latency_spread_ms", "latency_spread_ms_64"}
    assert 0 < times["latency_ms"] < times["latency_ms_64"] and times["latency_spread_ms"] >= 0
    assert net.training  # the caller's model is left as it was (timed on a copy in eval mode)


def test_one_architecture_has_one_latency_in_a_study_whatever_its_learning_rate(idx_dir, tmp_path):
    space = tmp_path / "one-net.yaml"  # one architecture; only the learning rate is searched
    space.write_text("name: one\nobjectives: [accuracy, latency]\nbudget: {epochs: 1}\n"
                     "architecture: {blocks: 1, block: {channels: 4}, head: {layers: 1, units: 8}}\n"
                     "training: {lr: {float: [1.0e-4, 1.0e-2], log: true}}\n")
    db = f"sqlite:///{tmp_path}/one.db"
    result = CliRunner().invoke(app, ["search", "--space", str(space), "--storage", db, "--data-dir", str(idx_dir),
                                      "--trials", "3", "--pruner", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="one", storage=db)
    assert len({t.params["lr"] for t in study.trials}) == 3
    assert len({t.user_attrs["latency_ms"] for t in study.trials}) == 1  # timed once, by the first trial
    assert len({t.user_attrs["arch_key"] for t in study.trials}) == 1
    assert all(t.user_attrs["latency_spread_ms"] >= 0 and "latency_spread_ms_64" in t.user_attrs for t in study.trials)
    [(key, times)] = [(k, v) for k, v in study.user_attrs.items() if k.startswith("latency:")]
    assert key == f"latency:{study.trials[0].user_attrs['arch_key']}" and times["latency_ms"] == study.trials[2].user_attrs["latency_ms"]
    spec = ArchSpec.from_dict(study.trials[0].user_attrs["spec"])
    other = dataclasses.replace(spec, blocks=tuple(dataclasses.replace(b, dropout=0.3) for b in spec.blocks))
    assert latency.arch_key(other) == latency.arch_key(spec)  # dropout is nothing at inference
    wider = dataclasses.replace(spec, blocks=tuple(dataclasses.replace(b, channels=8) for b in spec.blocks))
    assert latency.arch_key(wider) != latency.arch_key(spec) != latency.arch_key(spec, "cuda")


def test_best_says_when_two_points_of_the_front_are_within_the_noise():
    rows = [{"number": 1, "latency_ms": 1.00, "latency_spread_ms": 0.05}, {"number": 2, "latency_ms": 1.03, "latency_spread_ms": 0.01},
            {"number": 3, "latency_ms": 2.0, "latency_spread_ms": 0.05}]
    assert views._within_noise(rows) == ["#1 and #2 differ in latency by 0.030 ms, less than the measured noise (0.050 ms): "
                                         "take them as equally fast."]


def test_a_search_for_accuracy_and_latency_has_a_front_that_best_lists(multi_study):
    study = optuna.load_study(study_name="multi", storage=multi_study)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    trained = [t for t in study.trials if t.state in (State.COMPLETE, State.PRUNED) and not t.user_attrs.get("rejected")]
    assert all(t.user_attrs["latency_ms"] > 0 and "latency_ms_64" in t.user_attrs for t in trained)
    assert all(t.values == [t.user_attrs["curve"][-1]["val_acc"], t.user_attrs["latency_ms"]]
               for t in trained if t.state == State.COMPLETE)
    result = CliRunner().invoke(app, ["best", "--storage", multi_study, "--json"])
    rows = json.loads(result.stdout)["trials"]
    assert sorted(r["number"] for r in rows) == sorted(t.number for t in study.best_trials)
    assert [r["val_accuracy"] for r in rows] == sorted((r["val_accuracy"] for r in rows), reverse=True)
    text = squash(CliRunner().invoke(app, ["best", "--storage", multi_study]).output)
    assert re.search(rf"Pareto front \(accuracy, latency\): {len(rows)} of 12 trained trials( \(\d+ pruned\))? in 'multi'",
                     text) and "latency ms" in text, text
    pruned = [t for t in trained if t.state == State.PRUNED]  # by the pareto pruner; Optuna records no values for these
    assert pruned and all(t.values is None and "pruned at epoch" in t.user_attrs["reason"] for t in pruned)
    result = CliRunner().invoke(app, ["best", "--storage", multi_study, "--trial", str(pruned[0].number), "--json"])
    [row] = json.loads(result.stdout)["trials"]
    assert row["val_accuracy"] == pruned[0].user_attrs["curve"][-1]["val_acc"]


def test_any_trial_of_the_front_exports_with_its_latency_measured_again(multi_study, idx_dir, tmp_path):
    study = optuna.load_study(study_name="multi", storage=multi_study)
    pick = study.best_trials[-1].number
    result = CliRunner().invoke(app, ["best", "--storage", multi_study, "--trial", str(pick), "--export",
                                      str(tmp_path / "e"), "--data-dir", str(idx_dir)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["trial"] == pick and metrics["search_latency_ms"] == study.trials[pick].user_attrs["latency_ms"]
    assert metrics["latency_ms"] > 0 and metrics["latency_ms_64"] > 0
    assert "ONNX latency measured again after the export" in squash(result.output)


@pytest.mark.slow
def test_single_objective_searches_measure_no_latency_unless_a_constraint_asks(tiny_space, idx_dir, tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    args = ["--storage", db, "--data-dir", str(idx_dir), "--trials", "2", "--quiet"]
    assert CliRunner().invoke(app, ["search", "--space", str(tiny_space), *args]).exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=db)
    assert len(study.directions) == 1 and not any("latency_ms" in t.user_attrs for t in study.trials)
    limited = tmp_path / "limited.yaml"  # one fixed net, slower than a nanosecond: it cannot be trained
    limited.write_text("name: limited\nconstraints: {max_latency_ms: 1.0e-6}\nbudget: {epochs: 1}\n"
                       "architecture: {blocks: 1, block: {channels: 4}, head: {layers: 1, units: 8}}\n")
    result = CliRunner().invoke(app, ["search", "--space", str(limited), *args])
    assert result.exit_code == 1 and "too slow:" in squash(result.output), result.output
    [trial] = optuna.load_study(study_name="limited", storage=db).trials
    assert trial.user_attrs["rejected"] and trial.user_attrs["latency_ms"] > 1.0e-6 and trial.constraints["max_latency_ms"] > 0


def test_studies_shows_the_size_of_the_front_and_validate_the_objectives(multi_study, tmp_path):
    study = optuna.load_study(study_name="multi", storage=multi_study)
    [row] = json.loads(CliRunner().invoke(app, ["studies", "--storage", multi_study, "--json"]).stdout)
    assert row["front"] == len(study.best_trials) and row["best"] is None
    assert "front" in squash(CliRunner().invoke(app, ["studies", "--storage", multi_study]).output)
    space = tmp_path / "multi.yaml"
    space.write_text("name: m\nobjectives: [accuracy, latency, params]\n"
                     "architecture: {blocks: 1, block: {channels: 4}, head: {layers: 1, units: 8}}\n")
    out = squash(CliRunner().invoke(app, ["validate", "--space", str(space)]).output)
    assert "objectives: accuracy (maximised), latency, params (minimised)" in out, out
