"""A study is its own record: what it stores when it is made, who reads it (resume, a search joining without
--space, best), the studies made before it (tests/data/old_study.db, made by nas before the record existed),
and which errors fail a trial alone and which stop the search."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from nas import pareto, study as studies
from nas.cli import app

OLD = Path(__file__).parent / "data"  # old_study.db: studies 'old' (3 trials) and 'old-pareto' (accuracy,params)


def nas(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def old(tmp_path, monkeypatch) -> Path:
    """A copy of the old study, its space and its data, in the current folder (the study names its data
    `old_data.npz`, relative, as it was given)."""
    for name in ("old_study.db", "old_space.yaml", "old_data.npz"):
        shutil.copy(OLD / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


DB = "sqlite:///old_study.db"


def test_a_study_made_before_the_record_still_resumes_reports_and_exports(old):
    before = optuna.load_study(study_name="old", storage=DB)
    assert studies.read_record(before).space is None  # made before nas recorded its space
    n_before = len(before.trials)
    nas("search", "--space", "old_space.yaml", "--storage", DB, "--trials", "1", "--device", "cpu", "--quiet")
    after = optuna.load_study(study_name="old", storage=DB)
    assert len(after.trials) == n_before + 1 and "record" not in after.user_attrs  # still the old kind
    listed = json.loads(nas("best", "--storage", DB, "--study", "old", "--json"))
    assert listed and "old" in json.dumps(listed)
    nas("report", "--storage", DB, "--study", "old", "--out", "report.html")
    assert (old / "report.html").stat().st_size > 0
    nas("best", "--storage", DB, "--study", "old", "--export", "model", "--device", "cpu", "--quiet")
    metrics = json.loads((old / "model" / "metrics.json").read_text())
    assert metrics["study"] == "old" and metrics["dataset"] == "old_data.npz"
    pick = studies.front(optuna.load_study(study_name="old-pareto", storage=DB))[0].number
    nas("best", "--storage", DB, "--study", "old-pareto", "--trial", pick, "--export", "front", "--device", "cpu",
        "--quiet")
    assert (old / "front" / "metrics.json").is_file()


def test_a_new_study_records_its_space_data_split_and_objectives_and_a_search_without_space_joins_it(old):
    nas("search", "--space", "old_space.yaml", "--study", "new", "--objectives", "accuracy,params", "--storage", DB,
        "--trials", "1", "--device", "cpu", "--quiet")
    study = optuna.load_study(study_name="new", storage=DB)
    record = studies.read_record(study)
    assert record.space == (old / "old_space.yaml").read_text()
    assert (record.dataset, record.val_fraction, record.split_seed, record.subset) == ("old_data.npz", 0.2, 0, None)
    assert record.objectives == ("accuracy", "params") and record.epochs == 1 and not record.built_in
    assert record.fingerprint.startswith("blake2b:") and record.nas_version
    (old / "old_space.yaml").unlink()  # a worker elsewhere has no space file: it joins from the record
    nas("search", "--study", "new", "--storage", DB, "--trials", "1", "--device", "cpu", "--quiet")
    study = optuna.load_study(study_name="new", storage=DB)
    assert len(study.trials) == 2 and len(study.directions) == 2


def test_a_dataset_whose_contents_changed_is_refused_with_both_fingerprints(old):
    nas("search", "--space", "old_space.yaml", "--study", "new", "--storage", DB, "--trials", "1", "--device", "cpu",
        "--quiet")
    known = studies.read_record(optuna.load_study(study_name="new", storage=DB)).fingerprint
    with np.load(old / "old_data.npz") as f:
        arrays = dict(f)
    arrays["x_train"][0] = 255 - arrays["x_train"][0]  # one image changed, same name, same shape
    np.savez(old / "old_data.npz", **arrays)
    out = nas("search", "--study", "new", "--storage", DB, "--trials", "1", "--device", "cpu", "--quiet", code=2)
    assert known in out and "changed" in " ".join(out.split())


def run_nas(cwd: Path, *args: object) -> subprocess.CompletedProcess:
    """`nas ARGS` as a user types it, in its own process started in `cwd`."""
    return subprocess.run([sys.executable, "-m", "nas.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_a_plain_search_in_another_folder_joins_by_name_and_other_data_is_refused(old, tmp_path_factory):
    """A worker elsewhere (another folder, as on another machine) has only the storage, the study's name and its
    copy of the data: no space file. Its own copy joins; another dataset is refused before any trial."""
    url = f"sqlite:///{old / 'old_study.db'}"
    nas("search", "--space", "old_space.yaml", "--study", "joined", "--storage", url, "--trials", "1", "--device", "cpu",
        "--quiet")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(old / "old_data.npz", elsewhere / "copy.npz")
    done = run_nas(elsewhere, "search", "--storage", url, "--study", "joined", "--dataset", "copy.npz", "--trials", 1,
                   "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(optuna.load_study(study_name="joined", storage=url).trials) == 2
    with np.load(elsewhere / "copy.npz") as f:
        arrays = dict(f)
    arrays["x_train"][0] = 255 - arrays["x_train"][0]  # one image changed: other data under the same name
    np.savez(elsewhere / "copy.npz", **arrays)
    known = studies.read_record(optuna.load_study(study_name="joined", storage=url)).fingerprint
    done = run_nas(elsewhere, "search", "--storage", url, "--study", "joined", "--dataset", "copy.npz", "--trials", 1,
                   "--device", "cpu", "--quiet")
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2 and known in said and "copy.npz" in said and "changed" in said, said
    assert len(optuna.load_study(study_name="joined", storage=url).trials) == 2


def test_a_bug_in_nas_stops_the_search_with_a_message_not_a_failed_trial(old, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("an injected bug")

    monkeypatch.setattr("nas.objective.new_model", broken)
    result = CliRunner().invoke(app, ["search", "--space", "old_space.yaml", "--study", "bug", "--storage", DB,
                                      "--trials", "3", "--device", "cpu", "--quiet"])
    out = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "bug in nas" in out and "TypeError: an injected bug" in out and "report it" in out
    assert "Traceback" not in result.output
    trials = optuna.load_study(study_name="bug", storage=DB).trials
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.FAIL  # stopped at the first


def test_the_front_is_optunas_best_trials():
    """`pareto.front` (the one notion of a front) agrees with Optuna's, constraints included."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i in range(60):
        values = [float(rng.integers(0, 8)) / 8, float(rng.integers(0, 8))]  # ties on purpose
        study.add_trial(optuna.trial.create_trial(values=values, system_attrs={"constraints": [float(i % 5 == 0)]}))
    mine = {t.number for t in pareto.front(study.trials)}
    assert mine == {t.number for t in study.best_trials} and mine
