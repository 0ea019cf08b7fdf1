"""Every command end to end through Typer's CliRunner, on tiny real-format data and a real SQLite study."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from typer.testing import CliRunner

import nas
from nas.cli import app
from nas.data import load_dataset
from nas.names import counted
from nas.spacefile import baseline_params, load_space

SPACES = Path(__file__).parent.parent / "nas" / "spaces"
runner = CliRunner()


def nas_cli(*args: str, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def squash(text: str) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(text.split())


def test_help_imports_no_library_and_shows_flags_without_a_type():
    """`nas --help` and every command's --help load neither torch, Optuna nor SQLAlchemy, and no flag (--help,
    --json) is labelled `<bool>`, as if it took a value (typer 0.29 labels them so)."""
    code = ("import sys, typer; from nas.cli import app; from typer.testing import CliRunner; "
            "commands = list(typer.main.get_command(app).commands); "
            "outs = [CliRunner().invoke(app, [*c, '--help']) for c in [[], *([n] for n in commands)]]; "
            "assert all(r.exit_code == 0 for r in outs); "
            "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy') if m in sys.modules), "
            "sum(r.output.count('<bool>') for r in outs), len(commands))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] 0 10"  # the ten commands of nas, and nas itself


def test_validate_shows_dimensions_size_and_sampled_shapes():
    out = squash(nas_cli("validate", "--space", SPACES / "lenet.yaml").output)
    for text in ("block3.channels", "choice ['conv5x5', 'conv3x3x2']", "discrete combinations", "2 baselines",
                 "sample 1", "sample 3", "parameters", "MFLOPs", "objectives: accuracy (maximised)"):
        assert text in out
    assert "1×28×28 →" in out


def test_validate_objectives_are_for_the_builtin_space_not_a_space_file():
    out = squash(nas_cli("validate", "--space", "lenet", "--objectives", "accuracy,latency", code=2).output)
    assert "a space file names its own (`objectives:`)" in out and "Leave out --space or --objectives" in out


def test_validate_a_fixed_architecture():
    out = squash(nas_cli("validate", "--space", SPACES / "seed_lenet.yaml").output)
    assert "a fixed architecture" in out and "1×28×28 → 6×12×12 → 16×4×4 → 120 → 84 → 10; 44,426 parameters" in out


@pytest.mark.parametrize("text,where", [
    ("architecture: {block: {chanels: 8}}", "architecture.block.chanels: unknown key; did you mean 'channels'?"),
    ("training: {batch_size: big}", "training.batch_size: expected an integer"),
    ("architecture: {block: {conv: {choice: []}}}", "architecture.block.conv.choice: expected a non-empty list"),
    ("training: {lr: {float: [0.1, 0.01]}}", "training.lr.float: low 0.1 is greater than high 0.01"),
])
def test_a_broken_space_gets_one_paragraph_and_exit_2(tmp_path, text, where):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    for command in (["validate"], ["search", "--storage", f"sqlite:///{tmp_path}/s.db"], ["train"]):
        result = runner.invoke(app, [*command, "--space", str(path)])
        assert result.exit_code == 2
        assert where in squash(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "s.db").exists()


@pytest.mark.slow
def test_search_resume_best_export_load_and_train(tmp_path, tiny_space, idx_dir):
    db = f"sqlite:///{tmp_path}/nas.db"
    common = ["--storage", db, "--data-dir", idx_dir]
    out = squash(nas_cli("search", "--space", tiny_space, "--trials", 3, *common).output)
    assert "3 trained trials" in out and "in study 'tiny'" in out and "val acc" in out
    out = squash(nas_cli("search", "--space", tiny_space, "--trials", 2, *common).output)
    assert "3 finished trials so far" in out and "5 trained trials" in out
    study = optuna.load_study(study_name="tiny", storage=db)
    assert len(study.trials) == 5 and len({t.number for t in study.trials}) == 5

    rows = json.loads(nas_cli("best", "--storage", db, "--top", 2, "--json").stdout)["trials"]
    assert rows[0]["val_accuracy"] == study.best_value and rows[0]["val_accuracy"] >= rows[-1]["val_accuracy"]

    out_dir = tmp_path / "export"
    report = json.loads(nas_cli("best", "--storage", db, "--export", out_dir, "--retrain-epochs", 2, "--data-dir",
                                idx_dir, "--json").stdout)["export"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["arch.yaml", "metrics.json", "model.onnx", "model.pt", "model.ts"]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] == report["test_accuracy"] and metrics["trial"] == study.best_trial.number
    assert set(metrics["per_class_accuracy"]) == set(load_dataset("fashion-mnist", idx_dir).classes)
    torch.load(out_dir / "model.pt", weights_only=True)

    model = nas.load_model(out_dir)
    ds = load_dataset("fashion-mnist", idx_dir)
    with torch.no_grad():
        pred = model(ds.x_test.float() / 255).argmax(1)  # what ToTensor gives: floats in [0, 1]
    assert (pred == ds.y_test).float().mean().item() == pytest.approx(metrics["test_accuracy"])
    assert not model.training

    again = squash(nas_cli("best", "--storage", db, "--export", out_dir, "--data-dir", idx_dir, code=2).output)
    assert "already exists; pass --force" in again

    trained = json.loads(nas_cli("train", "--space", out_dir / "arch.yaml", "--epochs", 1, "--data-dir", idx_dir,
                                 "--json").stdout)
    assert len(trained["history"]) == 1 and 0 <= trained["test_accuracy"] <= 1

    listing = json.loads(nas_cli("studies", "--storage", db, "--json").stdout)
    assert [(s["name"], s["trials"], s["front"]) for s in listing] == [("tiny", 5, None)]  # one objective: no front


def test_export_without_retraining_reproduces_the_trial(tmp_path, tiny_space, idx_dir):
    db = f"sqlite:///{tmp_path}/nas.db"
    nas_cli("search", "--space", tiny_space, "--trials", 2, "--storage", db, "--data-dir", idx_dir)
    out = json.loads(nas_cli("best", "--storage", db, "--export", tmp_path / "e", "--data-dir", idx_dir, "--json").stdout)
    study = optuna.load_study(study_name="tiny", storage=db)
    assert out["export"]["trial"] == study.best_trial.number and out["export"]["epochs"] == 2
    assert out["export"]["reproduced_val_accuracy"] == pytest.approx(study.best_value, abs=1e-6)
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["reproduced_val_accuracy"] == out["export"]["reproduced_val_accuracy"]
    other = next(t for t in study.trials if t.number != study.best_trial.number)  # any trial, not only the best
    out = json.loads(nas_cli("best", "--storage", db, "--export", tmp_path / "other", "--data-dir", idx_dir,
                             "--trial", other.number, "--json").stdout)
    assert out["export"]["trial"] == other.number and [r["number"] for r in out["trials"]] == [other.number]
    assert out["export"]["reproduced_val_accuracy"] == pytest.approx(other.value, abs=1e-6)


@pytest.mark.parametrize("fixture", ["npz_gray", "npz_colour"])
def test_any_npz_dataset_works_end_to_end(request, tmp_path, tiny_space, fixture):
    npz = request.getfixturevalue(fixture)
    db = f"sqlite:///{tmp_path}/nas.db"
    nas_cli("search", "--space", tiny_space, "--trials", 2, "--storage", db, "--dataset", npz, "--study", "npz")
    nas_cli("best", "--storage", db, "--study", "npz", "--export", tmp_path / "e", "--dataset", npz)
    model = nas.load_model(tmp_path / "e")
    x = np.load(npz)["x_test"]
    x = torch.tensor(x if x.ndim == 4 else x[..., None]).permute(0, 3, 1, 2).float() / 255
    assert model(x).shape == (len(x), 10)


def test_resuming_on_another_dataset_is_refused(tmp_path, tiny_space, idx_dir, npz_gray):
    db = f"sqlite:///{tmp_path}/nas.db"
    nas_cli("search", "--space", tiny_space, "--trials", 1, "--storage", db, "--data-dir", idx_dir)
    out = squash(nas_cli("search", "--space", tiny_space, "--trials", 1, "--storage", db, "--dataset", npz_gray, code=2).output)
    assert "was searched with dataset 'fashion-mnist'" in out


def test_missing_data_and_unknown_study_are_clear_errors(tmp_path, tiny_space):
    out = squash(nas_cli("search", "--space", tiny_space, "--storage", f"sqlite:///{tmp_path}/a.db", code=2).output)
    assert "Fashion-MNIST was not found" in out and "apt-get install dataset-fashion-mnist" in out
    out = squash(nas_cli("best", "--storage", f"sqlite:///{tmp_path}/a.db", "--study", "nope", code=2).output)
    assert "no such study storage" in out and not (tmp_path / "a.db").exists()


def test_bad_option_values_are_usage_errors(tiny_space):
    assert "expected auto, cpu, mps or cuda" in squash(nas_cli("train", "--space", tiny_space, "--device", "gpu", code=2).output)
    assert "expected one of tpe, random" in squash(nas_cli("search", "--space", tiny_space, "--sampler", "cma", code=2).output)


def test_best_retrains_the_top_k_and_ranks_them_on_test(finished_study, idx_dir):
    db, _ = finished_study
    study = optuna.load_study(study_name="tiny", storage=db)
    top3 = [t.number for t in sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)][:3]
    out = json.loads(nas_cli("best", "--storage", db, "--top", 3, "--retrain-epochs", 1, "--data-dir", idx_dir,
                             "--json").stdout)
    retrained = out["retrained"]
    assert sorted(r["trial"] for r in retrained) == sorted(top3) and out["export"] is None
    assert [r["test_accuracy"] for r in retrained] == sorted((r["test_accuracy"] for r in retrained), reverse=True)
    for r in retrained:
        assert r["gap"] == pytest.approx(r["test_accuracy"] - r["val_accuracy"]) and r["epochs"] == 1
    text = squash(nas_cli("best", "--storage", db, "--top", 2, "--retrain-epochs", 1, "--data-dir", idx_dir).output)
    assert "top 2 retrained on train+val for 1 epoch, ranked by test accuracy" in text and "test − val" in text


def test_an_image_folder_dataset_works_end_to_end(tmp_path, tiny_space):
    from PIL import Image

    from conftest import make_images

    x, y = make_images(12, seed=1)
    for i, (img, label) in enumerate(zip(x, y)):
        (tmp_path / "imgs" / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "imgs" / f"class{label}" / f"{i}.png")
    db = f"sqlite:///{tmp_path}/nas.db"
    nas_cli("search", "--space", tiny_space, "--trials", 2, "--storage", db, "--dataset", tmp_path / "imgs")
    out = json.loads(nas_cli("best", "--storage", db, "--export", tmp_path / "e", "--dataset", tmp_path / "imgs",
                             "--json").stdout)
    assert out["export"]["classes"] == [f"class{i}" for i in range(10)]
    image = sorted((tmp_path / "imgs" / "class3").iterdir())[0]
    said = json.loads(nas_cli("predict", tmp_path / "e", image, "--top", 10, "--json").stdout)
    assert sorted(c["class"] for c in said[0]["top"]) == out["export"]["classes"]


@pytest.mark.slow
def test_a_search_reads_its_space_and_dataset_once_and_its_parent_builds_no_objective(tmp_path, tiny_space, idx_dir,
                                                                                     calls):
    """Counted through the real functions (they still run): once each, with one worker or two."""
    from nas import data, objective, search as searching

    calls.count("space", (searching, "load_space"))
    calls.count("data", (data, "load_dataset"))
    calls.count("objective", (objective.Objective, "__init__"))
    db = f"sqlite:///{tmp_path}/nas.db"
    nas_cli("search", "--space", tiny_space, "--trials", 2, "--storage", db, "--data-dir", idx_dir)
    assert calls == {"space": 1, "data": 1, "objective": 1}
    nas_cli("search", "--space", tiny_space, "--trials", 2, "--storage", db, "--data-dir", idx_dir, "--workers", 2)
    assert calls == {"space": 2, "data": 2, "objective": 1}  # the workers build theirs, with the parent's data


def small_colour_npz(path: Path, side: int) -> Path:
    """4 classes of side×side RGB images, each class lighting its own pair of rows: learnable at any size."""
    rng = np.random.default_rng(side)

    def part(n):
        y = np.repeat(np.arange(4), n)
        x = rng.integers(0, 60, size=(len(y), side, side, 3), dtype=np.uint8)
        for c in range(4):
            x[y == c, 2 * c * side // 8: 2 * c * side // 8 + max(1, side // 8)] = 230
        return x, y

    (xt, yt), (xs, ys) = part(30), part(10)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path


@pytest.mark.parametrize("shape, blocks", [((1, 28, 28), 3), ((3, 32, 32), 3), ((3, 8, 8), 2), ((1, 4, 4), 1)])
def test_the_builtin_space_is_scaled_to_the_images(shape, blocks):
    from nas.autospace import default_space
    from nas.model import assess
    from nas.space import IntRange, sample
    from nas.spacefile import parse_space

    space = parse_space(default_space("x.npz", "x", shape, 60_000, gpu=False))
    most = space.n_blocks.high if isinstance(space.n_blocks, IntRange) else space.n_blocks.value
    assert most == blocks and space.max_mflops == pytest.approx(12.0 * shape[1] * shape[2] / 784, rel=0.01)
    assert space.subset == 15_000 and space.val_fraction == 0.3 and space.name == "auto-x"
    assert parse_space(default_space("x.npz", "x", shape, 500, gpu=True)).subset is None  # small data: all of it
    for params in baseline_params(space):  # the warm start fits the space, the image and the FLOP budget
        spec = sample(space, optuna.trial.FixedTrial(params))
        assert len(spec.blocks) == min(2, blocks) and assess(spec, shape, 10, torch.device("cpu"), None, space.max_mflops)[1] is None


@pytest.mark.parametrize("device,objectives", [("auto", None), ("cpu", None), ("cpu", "accuracy,params"),
                                               *([("cuda", None)] if torch.cuda.is_available() else [])])
def test_validate_writes_the_builtin_space_that_search_uses_on_this_machine(tmp_path, device, objectives):
    """One decision (`autospace.builtin_space`): `nas validate --write` and `nas search` with the same --device
    and --objectives build the same space (a GPU's is larger; `--device cpu` on a GPU machine asks for a CPU's;
    a search for a cost starts from more baselines), written as plain YAML (no anchors a user would trip on)."""
    from dataclasses import replace

    from nas import search as searching

    data = small_colour_npz(tmp_path / "c.npz", 8)
    wanted = ["--objectives", objectives] if objectives else []
    nas_cli("validate", "--dataset", data, "--device", device, *wanted, "--write", tmp_path / "auto.yaml")
    assert "&id" not in (tmp_path / "auto.yaml").read_text()
    written = load_space(tmp_path / "auto.yaml")
    job = searching.SearchJob(None, dataset=str(data), storage=f"sqlite:///{tmp_path}/s.db", device=device, epochs=1,
                              objectives=tuple(objectives.split(",")) if objectives else None)
    searched = searching.run(job, lambda event: None).space
    assert replace(searched, baselines=(), path=None) == replace(written, baselines=(), path=None)
    assert baseline_params(searched) == baseline_params(written)


@pytest.mark.parametrize("side", [8, 32])
def test_search_without_a_space_uses_the_builtin_one_written_by_validate(tmp_path, side):
    data = small_colour_npz(tmp_path / f"c{side}.npz", side)
    out = squash(nas_cli("validate", "--dataset", data, "--write", tmp_path / "auto.yaml").output)
    assert f"space 'auto-c{side}' (the built-in space)" in out and "wrote" in out
    assert load_space(tmp_path / "auto.yaml").name == f"auto-c{side}"  # a space file to start from
    db = f"sqlite:///{tmp_path}/s.db"
    nas_cli("search", "--dataset", data, "--storage", db, "--trials", 3, "--epochs", 1, "--quiet")
    trials = optuna.load_study(study_name=f"auto-c{side}", storage=db).trials
    trained = [t for t in trials if not t.user_attrs.get("rejected")]
    assert len(trained) == 3 and all(t.state.is_finished() for t in trials)  # rejected nets were drawn again
    warm = baseline_params(load_space(tmp_path / "auto.yaml"))  # the written file keeps the warm start
    assert len(warm) == 2 and [t.params for t in trials[:2]] == warm  # and the search ran it first


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8), (1, 4, 4)])
def test_a_builtin_space_searched_for_a_cost_adds_a_ladder_of_new_architectures_to_the_warm_start(shape):
    from nas.autospace import default_space
    from nas.latency import arch_key
    from nas.model import assess
    from nas.space import sample
    from nas.spacefile import parse_space

    alone = parse_space(default_space("x.npz", "x", shape, 60_000, gpu=False))
    costly = parse_space(default_space("x.npz", "x", shape, 60_000, gpu=False, objectives=("accuracy", "latency")))
    warm, all_params = baseline_params(alone), baseline_params(costly)
    assert all_params[:len(warm)] == warm and len(all_params) > len(warm)  # accuracy alone: the warm start only
    specs = [sample(costly, optuna.trial.FixedTrial(params)) for params in all_params]
    ladder = {arch_key(spec) for spec in specs[len(warm):]}
    assert len(ladder) == len(specs) - len(warm) and not ladder & {arch_key(spec) for spec in specs[:len(warm)]}
    assert all(assess(spec, shape, 10, torch.device("cpu"), None, costly.max_mflops)[1] is None for spec in specs)


def test_a_search_for_accuracy_and_latency_in_the_builtin_space_queues_the_ladder_after_the_warm_start(tmp_path):
    from nas.autospace import cost_ladder, warm_start

    data, db = small_colour_npz(tmp_path / "c8.npz", 8), f"sqlite:///{tmp_path}/s.db"
    nas_cli("search", "--dataset", data, "--storage", db, "--trials", 1, "--epochs", 1, "--objectives",
            "accuracy,latency", "--quiet")
    trials = optuna.load_study(study_name="auto-c8", storage=db).trials
    assert len(trials) == len(warm_start(2)) + len(cost_ladder(2)) == 5  # one trained, the others wait their turn
    queued = trials[2].system_attrs["fixed_params"]  # the ladder's first: the smallest net
    assert queued["block1.conv"] == "conv5x5" and queued["block1.channels"] == 16 and queued["blocks"] == 1


@pytest.mark.slow
def test_run_searches_retrains_the_best_exports_it_and_writes_the_report(tmp_path, idx_dir, calls):
    """The retrain reuses what the search read: the dataset is read once, the training set copied to the device once."""
    from nas import data

    calls.count("data", (data, "load_dataset"))
    calls.count("to device", (data, "prepare_final_data"))
    db, out, page = f"sqlite:///{tmp_path}/s.db", tmp_path / "model", tmp_path / "report.html"
    text = squash(nas_cli("run", "--data-dir", idx_dir, "--budget", "30s", "--storage", db, "--export", out,
                          "--report", page, "--quiet").output)
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"for {counted(metrics['epochs'], 'epoch')} (measured" in text and metrics["retrained_on_train_and_val"]
    assert re.search(r"best 1 of [1-9][0-9]* trained trials? .*in 'auto-fashion-mnist'", text), text
    assert page.stat().st_size > 0 and ("searched_arch" in metrics) == ("its width" in text or "augmentation" in text)
    assert nas.load_model(out)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert calls == {"data": 1, "to device": 1}


def test_a_run_widens_a_builtin_spaces_net_only_as_far_as_its_time_allows(idx_dir):
    from nas import autorun, data
    from nas.spec import ArchSpec, BlockSpec, LayerSpec, TrainSpec

    spec = ArchSpec((BlockSpec("conv3x3x2", 8, "relu", True, "max", "same", 0.0),), (LayerSpec(16, "relu", 0.0),),
                    "default", TrainSpec("adamw", 0.01, 32, 0.0, 0.0))
    final = data.prepare_final_data(data.load_dataset("fashion-mnist", idx_dir), torch.device("cpu"))
    plenty, none, own = (autorun.plan_retrain(spec, final, torch.device("cpu"), s, built_in=b)
                         for s, b in ((1e6, True), (0.0, True), (1e6, False)))
    assert plenty.width == max(autorun.WIDTHS) and plenty.spec.blocks[0].channels == 16
    assert plenty.spec.training.augment == plenty.augment == autorun.RETRAIN_AUGMENT
    assert plenty.epochs == autorun.MAX_RETRAIN_EPOCHS
    assert none.width == 1 and none.epochs == 1 and none.spec.blocks == spec.blocks
    assert own.spec == spec and own.width == 1 and own.augment is None  # a user's space binds its final net


def test_the_same_seed_gives_the_same_trials(tmp_path, tiny_space, idx_dir):
    runs = []
    for name in ("a", "b"):
        db = f"sqlite:///{tmp_path}/{name}.db"
        nas_cli("search", "--space", tiny_space, "--storage", db, "--data-dir", idx_dir, "--trials", 3, "--seed", 3, "--quiet")
        runs.append([(t.params, t.values, t.state) for t in optuna.load_study(study_name="tiny", storage=db).trials])
    assert runs[0] == runs[1] and len(runs[0]) == 3


def test_best_without_study_shows_the_newest_and_names_the_others(tmp_path, idx_dir):
    storage = f"sqlite:///{tmp_path}/s.db"
    for name in ("older", "newer"):
        result = CliRunner().invoke(app, ["search", "--space", "seed_network", "--study", name, "--trials", "1",
                                          "--epochs", "1", "--storage", storage, "--data-dir", str(idx_dir), "--quiet"])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["best", "--storage", storage])
    assert result.exit_code == 0, result.output
    assert "'newer'" in result.output and "showing the newest" in result.output and "'older'" in result.output
    quiet = CliRunner().invoke(app, ["best", "--storage", storage, "--json"])
    assert quiet.exit_code == 0 and json.loads(quiet.stdout)["study"] == "newer"


def test_the_banner_says_how_many_threads_and_why(tmp_path, idx_dir, monkeypatch):
    args = ["search", "--space", "seed_network", "--trials", "1", "--epochs", "1", "--storage",
            f"sqlite:///{tmp_path}/s.db", "--data-dir", str(idx_dir)]
    result = CliRunner().invoke(app, args + ["--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "2 torch threads (--threads)" in " ".join(result.output.split())
    assert torch.get_num_threads() == 2  # set for the trial
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "1 torch thread (OMP_NUM_THREADS)" in " ".join(result.output.split())
    assert torch.get_num_threads() == 1


def test_counts_say_one_in_the_singular_and_others_in_the_plural():
    assert [counted(n, "trial") for n in (0, 1, 2, 1500)] == ["0 trials", "1 trial", "2 trials", "1,500 trials"]
    assert counted(1, "class", "classes") == "1 class" and counted(3, "class", "classes") == "3 classes"


def test_rejected_nets_are_counted_apart_from_trained_trials_and_baselines_are_marked():
    from nas.views import _tally
    from nas.record import count_trials, trial_row

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"x": 0.5})
    for i, (state, rejected) in enumerate([("complete", False), ("pruned", True), ("pruned", True),
                                           ("pruned", False), ("complete", False)]):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("rejected", rejected)
        study.tell(trial, 0.5 if state == "complete" else None,
                   state=optuna.trial.TrialState.PRUNED if state == "pruned" else None)
    tally = count_trials(study.trials)
    assert tally == {"complete": 2, "pruned": 1, "failed": 0, "running": 0, "waiting": 0, "rejected": 2, "trained": 3}
    assert _tally(tally) == "3 trained trials (1 pruned; 2 nets rejected before training)"
    assert _tally(count_trials(study.trials[:1])) == "1 trained trial"
    assert _tally(count_trials(study.trials[1:2])) == "0 trained trials (1 net rejected before training)"
    assert [trial_row(t)["baseline"] for t in study.trials] == [True, False, False, False, False]


def test_best_says_how_many_of_the_trained_trials_it_shows_and_the_nets_rejected(tmp_path, idx_dir):
    space = tmp_path / "s.yaml"  # blocks 3 of 5×5 convs do not fit 28×28: some nets are rejected
    space.write_text("name: s\nbudget: {epochs: 1}\narchitecture: {blocks: {int: [1, 3]}, block: {channels: 2}, "
                     "head: {layers: 1, units: 8}}\n")
    db = f"sqlite:///{tmp_path}/s.db"
    nas_cli("search", "--space", space, "--trials", 4, "--storage", db, "--data-dir", idx_dir, "--quiet")
    study = optuna.load_study(study_name="s", storage=db)
    n_rejected = sum(bool(t.user_attrs.get("rejected")) for t in study.trials)
    out = squash(nas_cli("best", "--storage", db, "--top", 2).output)
    rejected = f" ({n_rejected} net{'s' * (n_rejected != 1)} rejected before training)" if n_rejected else ""
    assert f"best 2 of 4 trained trials{rejected} in 's'" in out, out


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan"])
def test_a_bad_log_interval_is_one_clear_error_before_any_study(tmp_path, tiny_space, value):
    result = runner.invoke(app, ["search", "--space", str(tiny_space), "--storage", f"sqlite:///{tmp_path}/s.db"],
                           env={"NAS_LOG_EVERY": value})
    assert result.exit_code == 2 and f"NAS_LOG_EVERY='{value}'" in squash(result.output), result.output
    assert not (tmp_path / "s.db").exists()
