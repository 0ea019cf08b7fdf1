"""`nas report`: the data behind each figure, then the HTML file it writes (browser checks: test_browser.py)."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from typer.testing import CliRunner

from nas.cli import app
from nas.report import pareto_front, summarize


def test_summary_holds_every_trial_and_the_export(finished_study):
    db, _ = finished_study
    study = optuna.load_study(study_name="tiny", storage=db)
    s = summarize(study)
    states = [t.state.name.lower() for t in study.trials]
    assert s.counts == {st: states.count(st) for st in set(states)} and sum(s.counts.values()) == 30
    best = [h["best"] for h in s.history]
    assert best == sorted(best) and best[-1] == study.best_value
    trained = [t for t in study.trials if t.user_attrs.get("curve")]
    assert [c["number"] for c in s.curves] == [t.number for t in trained]
    assert all(c["epochs"] == list(range(1, len(c["val_acc"]) + 1)) for c in s.curves)
    assert [r["number"] for r in s.top] == [t.number for t in sorted(
        (t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)][:10]
    assert s.export["classes"][0] == "T-shirt/top" and len(s.export["confusion"]) == 10
    assert set(s.pareto["n_params"]) <= {p["number"] for p in s.size}


def _trial(number, value, n_params):
    return optuna.trial.create_trial(value=value, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                     user_attrs={"n_params": n_params, "flops": 2 * n_params})


def test_pareto_front_keeps_only_trials_nothing_beats_on_both_accuracy_and_size():
    trials = [_trial(0, 0.80, 1000), _trial(1, 0.85, 5000), _trial(2, 0.83, 6000), _trial(3, 0.90, 9000),
              _trial(4, 0.79, 1000), _trial(5, 0.90, 20000)]
    for i, t in enumerate(trials):
        t.number = i
    assert pareto_front(trials, "params") == [0, 1, 3]
    assert pareto_front(trials, "flops") == [0, 1, 3]


def test_report_is_one_offline_html_file_with_every_section(finished_study, tmp_path):
    db, _ = finished_study
    out = tmp_path / "r" / "report.html"
    result = CliRunner().invoke(app, ["report", "--storage", db, "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    for section in ("top", "history", "curves", "importances", "parallel", "slices", "pareto-params",
                    "pareto-flops", "confusion", "per-class"):
        assert f'id="{section}"' in page, section
    assert "<script src=" not in page and page.count("plotly.js v") >= 1  # the library is inlined, nothing fetched
    assert "Ankle boot" in page and list(out.parent.iterdir()) == [out]  # class names; no temp file left


def test_report_of_a_study_without_completed_trials_says_so(tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="empty", storage=db, direction="maximize")
    study.set_user_attr("data", {"dataset": "fashion-mnist", "val_fraction": 0.1, "split_seed": 0, "subset": None})
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    result = CliRunner().invoke(app, ["report", "--storage", db, "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "no completed trial yet" in result.output
    assert not (tmp_path / "r.html").exists()


def test_a_report_says_which_figures_it_could_not_draw_and_why(tmp_path, tiny_space, idx_dir):
    """One completed trial: no importances, so no importance, parallel or slice plot, and no export yet; the
    report lists each under "Not drawn" with its reason instead of leaving it out unexplained."""
    db, out = f"sqlite:///{tmp_path}/s.db", tmp_path / "r.html"
    runner = CliRunner()
    searched = runner.invoke(app, ["search", "--space", str(tiny_space), "--data-dir", str(idx_dir), "--trials", "1",
                                   "--storage", db, "--quiet"])
    assert searched.exit_code == 0, searched.output
    summary = summarize(optuna.load_study(study_name="tiny", storage=db))
    why = "only 1 completed trial; ranking the parameters needs at least 2"
    assert summary.importances == {} and dict(summary.not_drawn) == {
        "Parameter importances": why, "Parallel coordinates": why, "Slices of the most important parameters": why,
        "Test confusion matrix and accuracy per class":
            "no model of this study is exported yet; `nas best --export DIR` exports one and records it"}
    result = runner.invoke(app, ["report", "--storage", db, "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert 'id="not-drawn"' in page and 'id="importances"' not in page and 'id="history"' in page
    assert f"<li>Slices of the most important parameters — {why}</li>" in page


def test_a_report_with_everything_drawn_lists_nothing_as_not_drawn(finished_study):
    db, _ = finished_study
    assert summarize(optuna.load_study(study_name="tiny", storage=db)).not_drawn == []
