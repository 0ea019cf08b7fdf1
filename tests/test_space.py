import json
from pathlib import Path

import optuna
import pytest
import yaml

from nas import model
from nas import space as sp
from nas import spacefile as sf

SPACES = Path(__file__).parent.parent / "nas" / "spaces"


def test_shipped_spaces_load_and_baselines_fit():
    lenet = sf.load_space(SPACES / "lenet.yaml")
    dims = lenet.dimensions()
    for name in ("blocks", "block3.conv", "block3.channels", "block1.activation", "fc2.units", "lr", "init"):
        assert name in dims
    assert isinstance(dims["lr"], sp.FloatRange) and dims["lr"].log
    assert len(sf.baseline_params(lenet)) == 2
    for seed in ("seed_lenet.yaml", "seed_network.yaml"):
        assert sf.load_space(SPACES / seed).dimensions() == {}


def test_seed_lenet_is_the_tutorial_net():
    spec = sp.sample(sf.load_space(SPACES / "seed_lenet.yaml"))
    assert [(b.conv, b.channels, b.activation, b.pool) for b in spec.blocks] == [
        ("conv5x5", 6, "leaky_relu", "max"),
        ("conv5x5", 16, "leaky_relu", "max"),
    ]
    assert [h.units for h in spec.head] == [120, 84]
    assert (spec.training.optimizer, spec.training.lr, spec.training.batch_size) == ("adam", 0.001, 256)


def test_every_registry_agrees_with_the_names_the_space_and_the_command_line_allow():
    from nas import names, record, study, train

    by_field = {"conv": model.BLOCKS, "activation": model.ACTIVATIONS, "pool": model.POOLS, "padding": model.PADDINGS,
                "optimizer": train.OPTIMIZERS, "augment": train.AUGMENTATIONS, "schedule": train.SCHEDULES,
                "readout": model.READOUTS}
    kinds = {**sf._BLOCK, **sf._LAYER, **sf._TRAINING, "init": sf._INIT, "readout": sf._READOUT}
    named = {field: kind.allowed for field, kind in kinds.items() if kind.kind == "name"}
    assert set(named) == set(by_field) | {"init"}  # every name a space takes has a registry that builds it
    for field, allowed in named.items():
        assert tuple(by_field.get(field, model.INITS)) == allowed, field
    assert tuple(study.SAMPLERS) == names.SAMPLERS and tuple(study.PRUNERS) == names.PRUNERS
    assert tuple(record.OBJECTIVES) == names.OBJECTIVES == sf._OBJECTIVE.allowed


@pytest.mark.parametrize("lookup,words", [
    (lambda: __import__("nas.study").study.make_sampler("cma", 0), "unknown sampler 'cma'; expected one of tpe, random"),
    (lambda: __import__("nas.study").study.make_pruner("always", 5), "unknown pruner 'always'; expected one of median, hyperband, pareto, none"),
    (lambda: __import__("nas.train").train.augment_batch(None, "rotate", None), "unknown augmentation 'rotate'; expected one of none, flip"),
    (lambda: __import__("nas.train").train.make_optimizer(None, sp.TrainSpec("lion", 0.1, 8, 0, 0)),
     "unknown optimizer 'lion'; expected one of adam, adamw, sgd, adadelta"),
    (lambda: sf.parse_space({"training": {"schedule": "step"}}), "training.schedule: got str 'step'; expected one of "
                                                                   "constant, cosine, onecycle"),
], ids=["sampler", "pruner", "augmentation", "optimizer", "schedule"])
def test_an_unknown_name_is_refused_with_the_valid_ones_listed(lookup, words):
    from nas.errors import NasError

    with pytest.raises(NasError, match=words.replace("(", r"\(")):
        lookup()


def test_baseline_params_sample_back_to_the_baseline():
    lenet = sf.load_space(SPACES / "lenet.yaml")
    seed = sp.sample(sf.load_space(SPACES / "seed_network.yaml"))
    params = sp.to_params(lenet, seed)
    assert sp.sample(lenet, optuna.trial.FixedTrial(params)) == seed


def test_spec_round_trips_through_json_and_a_fixed_space_file(tmp_path):
    lenet = sf.load_space(SPACES / "lenet.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(5):
        spec = sp.sample(lenet, study.ask())
        assert sp.ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        path = tmp_path / "fixed.yaml"
        path.write_text(yaml.safe_dump(sf.fixed_space_dict(spec, "x", "fashion-mnist", 3)))
        assert sp.sample(sf.load_space(path)) == spec


def test_block_parameters_exist_only_when_the_block_does(tiny_space):
    space = sf.load_space(tiny_space)
    trial = optuna.trial.FixedTrial({"blocks": 1, "block1.conv": "conv5x5", "block1.channels": 4,
                                     "block1.activation": "relu", "block1.batch_norm": False,
                                     "fc1.units": 16, "lr": 0.005})
    spec = sp.sample(space, trial)
    assert len(spec.blocks) == 1 and len(spec.head) == 1
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        t = study.ask()
        spec = sp.sample(space, t)
        assert {k.split(".")[0] for k in t.params if k.startswith("block") and "." in k} == {
            f"block{i}" for i in range(1, len(spec.blocks) + 1)
        }
        study.tell(t, 0.5)


def test_momentum_is_sampled_for_sgd_only():
    raw = {"training": {"optimizer": {"choice": ["adam", "sgd"]}, "momentum": {"float": [0.5, 0.99]}}}
    space = sf.parse_space(raw)
    assert "momentum" in space.dimensions()
    adam = optuna.trial.FixedTrial({"optimizer": "adam"})
    assert sp.sample(space, adam).training.momentum == 0.0
    sgd = optuna.trial.FixedTrial({"optimizer": "sgd", "momentum": 0.8})
    assert sp.sample(space, sgd).training.momentum == 0.8


def test_fixed_space_needs_no_trial_but_a_searched_one_does():
    with pytest.raises(sp.SpaceError, match="`lr` is searched"):
        sp.sample(sf.parse_space({"training": {"lr": {"float": [0.001, 0.1]}}}))


def test_yaml_floats_without_a_dot_are_accepted():
    space = sf.parse_space({"training": {"lr": "1e-3"}})
    assert sp.sample(space).training.lr == 0.001


BROKEN = [
    ("architecture: {blok: {}}", r"architecture\.blok: unknown key; did you mean 'block'\?"),
    ("architecture: {block: {channels: wide}}", r"architecture\.block\.channels: expected an integer in \[1, 4096\], got str 'wide'"),
    ("architecture: {block: {conv: {choice: []}}}", r"architecture\.block\.conv\.choice: expected a non-empty list of one of conv3x3, conv5x5, conv3x3x2"),
    ("training: {lr: {float: [0.1, 0.001]}}", r"training\.lr\.float: low 0\.1 is greater than high 0\.001"),
    ("training: {lr: {float: [0, 0.1], log: true}}", r"training\.lr\.float\[0\]: expected a number in \[1e-12, 100\], got int 0"),
    ("training: {weight_decay: {float: [0, 0.1], log: true}}", r"training\.weight_decay\.float: a log range needs low > 0"),
    ("architecture: {block: {activation: {choice: [relu, relu]}}}", r"architecture\.block\.activation\.choice: 'relu' is listed twice"),
    ("architecture: {block: {activation: rleu}}", r"architecture\.block\.activation: got str 'rleu' \(did you mean 'relu'\?\); expected one of relu"),
    ("architecture: {block: {batch_norm: {int: [0, 1]}}}", r"architecture\.block\.batch_norm: \{int: \.\.\.\} does not fit this field, which takes true or false"),
    ("architecture: {blocks: [{channel: 4}]}", r"architecture\.blocks\[0\]\.channel: unknown key; did you mean 'channels'\?"),
    ("budget: {epochs: 0}", r"budget\.epochs: expected an integer in \[1, 10000\], got int 0"),
    ("baselines: [nowhere.yaml]", r"baselines\[0\]: no such file"),
    ("baselines: [{architecture: {blocks: [{channels: 8}]}, budget: {}}]", r"baselines\[0\]\.budget: unknown key; allowed keys are architecture, training"),
    ("baselines: [{training: {lr: fast}}]", r"baselines\[0\]: training\.lr: expected a number"),
    ("baselines: [3]", r"baselines: expected a list of space file paths or inline nets"),
    ("baselines: [.]", r"baselines\[0\]: '.*' is a folder; name a space file in it"),
    ("training: [1, 2]", r"training: expected a mapping, got list"),
    ("name: [", r"not valid YAML at line"),
]


@pytest.mark.parametrize("text,message", BROKEN)
def test_broken_space_files_name_the_path_and_what_is_allowed(tmp_path, text, message):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(sp.SpaceError, match=message) as e:
        sf.load_space(path)
    assert str(e.value).startswith(str(path))


def test_an_inline_baseline_is_enqueued_like_a_baseline_file(tmp_path):
    net = "{architecture: {blocks: [{conv: conv3x3x2, channels: 8}]}, training: {lr: 0.01}}"
    (tmp_path / "base.yaml").write_text(net + "\n")
    template = ("architecture: {{blocks: {{int: [1, 2]}}, block: {{conv: {{choice: [conv5x5, conv3x3x2]}}, channels: "
                "{{choice: [4, 8]}}}}}}\ntraining: {{lr: {{float: [0.001, 0.1]}}}}\nbaselines: [{}]\n")
    (tmp_path / "file.yaml").write_text(template.format("base.yaml"))
    (tmp_path / "inline.yaml").write_text(template.format(net))
    by_file, inline = (sf.baseline_params(sf.load_space(tmp_path / f)) for f in ("file.yaml", "inline.yaml"))
    assert inline == by_file == [{"blocks": 1, "block1.conv": "conv3x3x2", "block1.channels": 8, "lr": 0.01}]
    (tmp_path / "searched.yaml").write_text(template.format("{architecture: {blocks: {int: [1, 2]}}}"))
    with pytest.raises(sp.SpaceError, match=r"searched\.yaml: baselines\[0\]: `blocks` is searched"):
        sf.baseline_params(sf.load_space(tmp_path / "searched.yaml"))
    (tmp_path / "outside.yaml").write_text(template.format("{architecture: {blocks: [{channels: 16}]}}"))
    with pytest.raises(sp.SpaceError, match=r"baselines\[0\] of .*outside\.yaml does not fit .*`block1\.channels` is 16"):
        sf.baseline_params(sf.load_space(tmp_path / "outside.yaml"))


def test_baseline_outside_the_space_is_reported(tmp_path):
    (tmp_path / "base.yaml").write_text("architecture: {block: {channels: 100}}\n")
    (tmp_path / "space.yaml").write_text("architecture: {block: {channels: {choice: [4, 8]}}}\nbaselines: [base.yaml]\n")
    with pytest.raises(sp.SpaceError, match=r"baseline .*base\.yaml does not fit .*`block1\.channels` is 100, but the space allows choice \[4, 8\]"):
        sf.baseline_params(sf.load_space(tmp_path / "space.yaml"))
