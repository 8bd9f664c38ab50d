"""Experiment YAML: base inheritance, overrides, validation errors, smoke, trial expansion."""

from __future__ import annotations

import pytest

from mtbench.config import expand_trials, load_experiment
from mtbench.config.loading import deep_merge, parse_override
from mtbench.errors import MtbenchError

BASE = """
name: base_exp
dataset: {name: synthetic_nyud, options: {height: 32, width: 32}}
model: {name: shared_encoder, backbone: tiny}
train: {steps: 10, batch_size: 2, optimizer: {lr: 0.01}}
seeds: [0, 1]
"""


def test_deep_merge_dicts_merge_lists_replace():
    merged = deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}


def test_base_inheritance_and_child_override(write_yaml):
    write_yaml("base.yaml", BASE)
    child = write_yaml("child.yaml", "base: base.yaml\nname: child\ntrain: {steps: 20}\n")
    exp = load_experiment(child)
    assert exp.name == "child"
    assert exp.train.steps == 20
    assert exp.train.batch_size == 2  # inherited through the deep merge
    assert exp.train.optimizer.lr == 0.01


def test_name_defaults_to_file_stem(write_yaml):
    path = write_yaml("my_exp.yaml", "model: {backbone: tiny}\n")
    assert load_experiment(path).name == "my_exp"


def test_cli_overrides_are_typed_yaml(write_yaml):
    path = write_yaml("e.yaml", BASE)
    exp = load_experiment(path, ["train.optimizer.lr=1e-4", "seeds=[3]", "model.options.head_channels=8"])
    assert exp.train.optimizer.lr == pytest.approx(1e-4)
    assert exp.seeds == [3]
    assert exp.model.options == {"head_channels": 8}
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_variants_times_seeds(write_yaml):
    path = write_yaml("e.yaml", BASE + "variants:\n  - {name: st, overrides: {model.name: single_task}}\n"
                      "  - {name: mt}\n")
    trials = expand_trials(load_experiment(path))
    assert [t.key for t in trials] == ["base_exp/st/seed0", "base_exp/st/seed1", "base_exp/mt/seed0",
                                       "base_exp/mt/seed1"]
    assert trials[0].model.name == "single_task" and trials[2].model.name == "shared_encoder"


def test_smoke_swaps_dataset_backbone_steps(write_yaml):
    path = write_yaml("e.yaml", "dataset: {name: pascal_context, root: /nowhere}\n"
                      "model: {backbone: swin_base, pretrained: true}\ntrain: {steps: 40000}\nseeds: [5, 6, 7]\n"
                      "variants: [{name: v, overrides: {model.backbone: resnet50}}]\n")
    exp = load_experiment(path, smoke=True)
    trial = expand_trials(exp)[0]
    assert trial.dataset.name == "synthetic_pascal" and trial.dataset.root is None
    assert trial.model.backbone == "tiny" and trial.model.pretrained is False
    assert trial.train.steps == 4 and exp.seeds == [5]


@pytest.mark.parametrize(("text", "overrides", "message"), [
    (BASE + "trian: {}\n", [], "unknown key 'trian'. Did you mean 'train'?"),
    (BASE, ["train.setps=3"], "unknown key 'train.setps'. Did you mean 'steps'?"),
    (BASE, ["train.steps=many"], "train.steps: Input should be a valid integer"),
    (BASE, ["model.name=demtt"], "unknown model 'demtt'"),
    (BASE, ["model.backbone=resnet19"], "unknown backbone 'resnet19'. Did you mean 'resnet18'"),
    (BASE, ["dataset.name=nyudv2"], "unknown dataset 'nyudv2'"),
    (BASE, ["dataset.tasks=[sal]"], "task 'sal' is not available on dataset 'synthetic_nyud'"),
    (BASE, ["model.options.head_chanels=3"], "unknown option 'head_chanels' for model 'shared_encoder'. "
                                             "Did you mean 'head_channels'?"),
    (BASE, ["loss.weighting=uncertainy"], "unknown weighting 'uncertainy'. Did you mean 'uncertainty'"),
    (BASE, ["train.schedule.warmup_steps=50"], "must be smaller than train.steps"),
    (BASE + "variants: [{name: a}, {name: a}]\n", [], "repeated: a"),
    ("- just\n- a list\n", [], "the top level must be a mapping"),
    ("a: [unclosed\n", [], "not valid YAML"),
    (BASE, ["noequals"], "must look like key.path=value"),
])
def test_bad_config_is_one_clear_error(write_yaml, text, overrides, message):
    path = write_yaml("bad.yaml", text)
    with pytest.raises(MtbenchError) as info:
        load_experiment(path, overrides)
    assert message in str(info.value)


def test_missing_file_and_base_cycle(write_yaml, tmp_path):
    with pytest.raises(MtbenchError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    write_yaml("a.yaml", "base: b.yaml\n")
    path = write_yaml("b.yaml", "base: a.yaml\n")
    with pytest.raises(MtbenchError, match="cycle"):
        load_experiment(path)
