"""The shipped Slurm scripts (deploy/slurm) on a real one-node Slurm cluster with a real PostgreSQL storage:
a job array runs exactly the trials asked for, a cancelled task's trial is recorded as interrupted and the
others finish the count, and the last job exports the best net and writes the report."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import pytest

from conftest import write_idx_dataset
from test_claims import counted
from test_survive import LONG_TRIALS, QUICK_TRIALS

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
State = optuna.trial.TrialState
SUBMIT = Path(__file__).parent.parent / "deploy" / "slurm" / "submit.sh"


def submit(slurm, tmp_path: Path, space: Path, storage: str, study: str, trials: int, data: Path) -> tuple[str, str]:
    """Submit the 3-task array and its finishing job from `tmp_path`; (array id, finishing job id)."""
    env = {"NAS_STORAGE": storage, "NAS_STUDY": study, "NAS_TRIALS": str(trials), "NAS_SPACE": str(space),
           "NAS_DATA_DIR": str(data), "NAS_OUT": str(tmp_path / "results"), "NAS_WORKERS": "1",
           "NAS_ARGS": "--pruner none", "NAS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = slurm.run("env", *(f"{k}={v}" for k, v in env.items()), "bash", "-c",
                    f"cd {tmp_path} && {SUBMIT} --array=0-2")
    array, finish = out.split()
    return array, finish


def logs(tmp_path: Path) -> str:
    return "".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(tmp_path.glob("nas-*.log")))


def test_a_job_array_runs_exactly_the_trials_asked_for_then_exports_and_reports(slurm, postgres_url, tmp_path, idx_dir):
    space = tmp_path / "quick.yaml"
    space.write_text(QUICK_TRIALS)
    submit(slurm, tmp_path, space, postgres_url, "slurm-array", 6, idx_dir)
    slurm.wait_idle(600)
    kept, n_all = counted(postgres_url, "slurm-array")
    assert len(kept) == 6 == n_all, logs(tmp_path)
    assert all(t.state in (State.COMPLETE, State.PRUNED) for t in kept)
    assert len(list(tmp_path.glob("nas-search-*_*.log"))) == 3  # all three tasks ran
    results = tmp_path / "results"
    assert (results / "export" / "model.onnx").is_file() and (results / "report.html").is_file(), logs(tmp_path)


def test_a_cancelled_task_leaves_its_trial_interrupted_and_the_others_finish_the_count(slurm, postgres_url, tmp_path,
                                                                                         idx_dir):
    space = tmp_path / "medium.yaml"
    space.write_text(LONG_TRIALS.replace("name: long", "name: medium").replace("epochs: 150", "epochs: 30"))
    array, _ = submit(slurm, tmp_path, space, postgres_url, "slurm-cancel", 5, idx_dir)
    victim = running_trial(postgres_url, "slurm-cancel", tmp_path)
    task = slurm_task(int(victim.user_attrs["worker"].rsplit(":", 1)[1]))
    slurm.run("scancel", f"{array}_{task}")
    slurm.wait_idle(600)
    trials = optuna.load_study(study_name="slurm-cancel", storage=postgres_url).get_trials()
    said = [(t.number, t.state.name, t.user_attrs.get("reason")) for t in trials]
    assert trials[victim.number].user_attrs.get("reason") == "interrupted", (said, logs(tmp_path))
    kept, _ = counted(postgres_url, "slurm-cancel")
    assert len(kept) == 5 and not [t for t in trials if t.state == State.RUNNING], (said, logs(tmp_path))
    assert (tmp_path / "results" / "export" / "model.onnx").is_file(), logs(tmp_path)


def test_a_task_joins_by_name_without_a_space_file_and_one_with_other_data_is_refused_saying_why(
        slurm, postgres_url, tmp_path, idx_dir):
    """The study is made once (on the login node, with the space file); tasks then need only the storage, the
    study's name and the data. A task whose data differs is refused before it trains, and its log says why."""
    from nas.cli import app
    from nas.data import load_dataset
    from typer.testing import CliRunner

    space = tmp_path / "quick.yaml"
    space.write_text(QUICK_TRIALS)
    made = CliRunner().invoke(app, ["search", "--space", str(space), "--storage", postgres_url, "--study", "slurm-data",
                                    "--data-dir", str(idx_dir), "--trials", "1", "--pruner", "none", "--quiet"])
    assert made.exit_code == 0, made.output
    other = write_idx_dataset(tmp_path / "other", n_train=60)  # same name and shape, other images
    for name, folder in (("right", idx_dir), ("wrong", other)):
        env = {"NAS_STORAGE": postgres_url, "NAS_STUDY": "slurm-data", "NAS_TRIALS": "2", "NAS_DATA_DIR": str(folder),
               "NAS_WORKERS": "1", "NAS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        slurm.run("env", *(f"{k}={v}" for k, v in env.items()), "sbatch", f"--chdir={tmp_path}",
                  f"--output={tmp_path}/{name}.log", f"--job-name={name}", str(SUBMIT.parent / "nas-search.sbatch"))
    slurm.wait_idle(600)
    right, wrong = (tmp_path / "right.log").read_text(), (tmp_path / "wrong.log").read_text()
    kept, n_all = counted(postgres_url, "slurm-data")
    assert len(kept) == 2 == n_all, right + wrong  # the study's one, and the right task's one
    said = " ".join(wrong.split())
    known, now = (load_dataset("fashion-mnist", d).fingerprint() for d in (idx_dir, other))
    assert known in said and now in said and "changed" in said, said
    assert "wrong FAILED" in slurm.run("squeue", "--noheader", "--states=all", "--format=%j %T"), wrong


def running_trial(storage: str, study: str, tmp_path: Path) -> optuna.trial.FrozenTrial:
    """A trial of the study that is training (past its first epoch), polled from the storage."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=study, storage=storage).get_trials()
        except KeyError:  # not created yet
            trials = []
        running = [t for t in trials if t.state == State.RUNNING and t.intermediate_values]
        if running:
            return running[0]
        time.sleep(0.3)
    raise AssertionError(f"no trial ever trained:\n{logs(tmp_path)}")


def slurm_task(pid: int) -> str:
    """The array task index of process `pid` (this machine is the cluster's one node)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"SLURM_ARRAY_TASK_ID="))


def test_the_shipped_scripts_are_valid_bash():
    import subprocess

    for script in SUBMIT.parent.iterdir():
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    assert os.access(SUBMIT, os.X_OK)
