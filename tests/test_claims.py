"""`nas search --study-trials N`: processes sharing one storage run exactly N trials in all, counted in the
storage (real processes, real SQLite files and a real PostgreSQL server)."""

from __future__ import annotations

import signal

import optuna
import pytest

from nas import claims
from test_survive import LONG_TRIALS, QUICK_TRIALS, finish, here, hint_of, start, wait_for_running

State = optuna.trial.TrialState


def counted(storage: str, name: str) -> tuple[list[optuna.trial.FrozenTrial], int]:
    """The study's trials that count (not rejected, not lost), and all its trials."""
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    kept = [t for t in trials if not t.user_attrs.get("rejected")
            and not (t.state == State.FAIL and claims.is_lost(t.user_attrs.get("reason")))]
    return kept, len(trials)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/nas.db"
    return request.getfixturevalue("postgres_url")


@pytest.mark.slow
def test_three_processes_run_exactly_the_study_trials_asked_for(storage, tmp_path, idx_dir):
    name = f"claims-{tmp_path.name}"[:60]
    space = tmp_path / "quick.yaml"
    space.write_text(QUICK_TRIALS)
    procs = [start("search", "--space", space, "--study", name, "--storage", storage, "--data-dir", idx_dir,
                   "--study-trials", 7, "--pruner", "none", "--seed", i, "--quiet", *(["--workers", 2] if i == 0 else []))
             for i in range(3)]  # the first with two worker processes: they claim from the same count
    for p in procs:
        code, out, err = finish(p)
        assert code == 0, out + err
    kept, n_all = counted(storage, name)
    assert len(kept) == 7 == n_all and all(t.state in (State.COMPLETE, State.PRUNED) for t in kept)
    study = optuna.load_study(study_name=name, storage=storage)
    assert claims.claimed(study) == 7


def test_the_count_includes_earlier_trials_and_lost_ones_are_run_again(tmp_path, idx_dir):
    storage = f"sqlite:///{tmp_path}/nas.db"
    space = tmp_path / "quick.yaml"
    space.write_text(QUICK_TRIALS)
    base = ["search", "--space", space, "--storage", storage, "--data-dir", idx_dir, "--pruner", "none", "--quiet"]
    code, out, err = here(*base, "--trials", 2)
    assert code == 0, out + err
    study = optuna.load_study(study_name="quick", storage=storage)
    lost = study.trials[0]  # as a worker stopped by a signal leaves its trial
    study.add_trial(optuna.trial.create_trial(state=State.FAIL, params=lost.params, distributions=lost.distributions,
                                              user_attrs={"reason": "interrupted"}))
    code, out, err = here(*base, "--study-trials", 4)
    assert code == 0, out + err
    kept, n_all = counted(storage, "quick")
    assert len(kept) == 4 and n_all == 5  # 2 before, the lost one not counted, 2 more
    code, out, err = here(*base, "--study-trials", 4)  # a requeued task: the count is reached, nothing runs
    assert code == 0, out + err
    assert counted(storage, "quick")[1] == 5


@pytest.mark.slow
def test_a_search_stopped_by_sigterm_resumes_with_the_same_command_and_ends_at_the_count(tmp_path, idx_dir):
    storage = f"sqlite:///{tmp_path}/nas.db"
    space = tmp_path / "medium.yaml"
    space.write_text(LONG_TRIALS.replace("name: long", "name: medium").replace("epochs: 150", "epochs: 20"))
    proc = start("search", "--space", space, "--storage", storage, "--data-dir", idx_dir, "--study-trials", 3,
                 "--pruner", "none")
    victim = wait_for_running(storage, "medium", 0, proc)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    hint = hint_of(err)
    assert code == 128 + signal.SIGTERM and "--study-trials" in hint and "--trials" not in hint, out + err
    assert optuna.load_study(study_name="medium", storage=storage).trials[victim.number].user_attrs["reason"] == "interrupted"
    code, out, err = here(*hint[1:])
    assert code == 0, out + err
    kept, n_all = counted(storage, "medium")
    assert len(kept) == 3 and n_all == 4 and all(t.state == State.COMPLETE for t in kept)


def test_lost_reasons_are_told_from_trained_failures():
    assert claims.is_lost("interrupted") and claims.is_lost(None)
    assert claims.is_lost("failed: worker vm:12 died")
    assert not claims.is_lost("failed: RuntimeError: boom") and not claims.is_lost("diverged at epoch 1")


@pytest.mark.parametrize("value", ["0", "99999999999999999999"])
def test_a_study_count_out_of_range_is_refused_before_anything_opens(tmp_path, value):
    """A count the storage cannot hold (SQLite's and PostgreSQL's integers) is a usage error, not an OverflowError."""
    code, out, err = here("search", "--space", "lenet", "--study-trials", value, "--storage", f"sqlite:///{tmp_path}/s.db")
    said = " ".join((out + err).split())
    assert code == 2 and "--study-trials" in said and "Traceback" not in said and "OverflowError" not in said, said
    assert not (tmp_path / "s.db").exists()
