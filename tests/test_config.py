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


def test_smoke_comes_first_then_the_users_overrides_and_flags(write_yaml):
    path = write_yaml("e.yaml", "launcher: {name: slurm, partition: gpu, time_min: 30, workers: 4}\n"
                      "search: {objective: semseg/mIoU, n_trials: 50, "
                      "space: {train.optimizer.lr: {type: float, low: 0.001, high: 0.1}}}\n")
    plain = load_experiment(path, smoke=True)
    assert plain.launcher.name == "local" and plain.launcher.workers == 1 and plain.search.n_trials == 2
    exp = load_experiment(path, ["train.steps=7", "search.n_trials=4", "launcher.name=slurm", "launcher.workers=2"],
                          smoke=True)
    assert exp.train.steps == 7 and exp.search.n_trials == 4
    assert (exp.launcher.name, exp.launcher.workers, exp.launcher.partition) == ("slurm", 2, "gpu")


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
    (BASE, ["loss.weighting=uncertainy"], "unknown balancer 'uncertainy'. Did you mean 'uncertainty'"),
    (BASE, ["train.schedule.warmup_steps=50"], "must be smaller than train.steps"),
    (BASE + "variants: [{name: a}, {name: a}]\n", [], "repeated: a"),
    ("- just\n- a list\n", [], "the top level must be a mapping"),
    ("a: [unclosed\n", [], "not valid YAML"),
    (BASE, ["noequals"], "must look like key.path=value"),
    (BASE, ["train.optimizer.name=adamm"], "train.optimizer.name: Input should be 'adamw', 'adam' or 'sgd'"),
    (BASE, ["train.optimizer.decay_on=norms"], "train.optimizer.decay_on: Input should be 'kernels' or 'all'"),
    (BASE, ["train.schedule.per=iteration"], "train.schedule.per: Input should be 'step' or 'epoch'"),
    (BASE, ["loss.task_options={depht: {normalize_by: elements}}"],
     "loss.task_options names task(s) 'depht' that this trial does not train. Did you mean 'depth'? "
     "Its tasks: semseg, depth, normals, edge."),
    (BASE, ["loss.task_options={normals: {normalise_by: elements}}"],
     "loss.task_options: unknown option 'normalise_by' for the normals loss (l1_normals). "
     "Did you mean 'normalize_by'?"),
    (BASE, ["loss.task_options={normals: {normalize_by: voxels}}"],
     "loss.task_options: normals loss: normalize_by must be one of pixels, elements; got 'voxels'."),
    (BASE, ["loss.task_options={depth: {pos_weight: 0.8}}"],
     "loss.task_options: unknown option 'pos_weight' for the depth loss (l1_depth). Its options: none."),
    (BASE, ["loss.task_options={normals: elements}"], "loss.task_options.normals: Input should be a valid "
                                                      "dictionary"),
    (BASE, ["loss.edge_pos_weight=0.8", "loss.task_options={edge: {pos_weight: 0.9}}"],
     "the edge loss's pos_weight is given twice: loss.edge_pos_weight 0.8 and loss.task_options.edge.pos_weight "
     "0.9; keep one of them"),
    (BASE + "variants: [{name: v, overrides: {loss.task_options.sal: {}}}]\n", [],
     "variant 'v': loss.task_options names task(s) 'sal' that this trial does not train"),
    ("", [], "the file is empty (or only comments)"),
    ("# only a comment\n", [], "the file is empty (or only comments)"),
    (BASE + "variants: [{name: a, overrides: {model.name: demt}}, {name: b, overrides: {model.name: padnet}}]\n",
     ["model.name=nosuch"], "-o model.name=nosuch: has no effect: every variant (a, b) sets model.name itself"),
    (BASE + "variants: [{name: a, overrides: {model.options: {mixer_width: 8}}}]\n",
     ["model.options.mixer_width=16"], "every variant (a) sets model.options itself"),
    (BASE + "grid: {train.optimizer.lr: [0.1, 0.01]}\n", ["train.optimizer.lr=0.5"],
     "has no effect: the grid sweeps train.optimizer.lr"),
    (BASE, ["loss.weighting=dwa", "loss.options={temprature: 1.0}"],
     "unknown option 'temprature' for balancer 'dwa' (loss.options). Did you mean 'temperature'?"),
    (BASE + "variants: [{name: st, overrides: {model.name: single_task}}]\n", ["loss.weighting=upgrad"],
     "balancer 'upgrad' aggregates the gradients of the shared encoder, but model 'single_task' has none"),
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


# ---- options added after trial ids were published (ID_NEUTRAL) -----------------------------------------

NEW_OPTIONS = {  # each ID_NEUTRAL key with a value other than its neutral one
    "train.optimizer.decay_on": "all",
    "train.schedule.per": "epoch",
    "train.sync_bn": True,
    "loss.task_options": {"normals": {"normalize_by": "elements"}},
    "loss.options": {"temperature": 1.0},
    "train.compile": True,
    "train.channels_last": True,
}
CONTEXT = {"loss.options": ["loss.weighting=dwa"]}  # what the option needs beside it


def test_every_neutral_key_is_exercised():
    from mtbench.config.schema import ID_NEUTRAL

    assert set(NEW_OPTIONS) == set(ID_NEUTRAL)


@pytest.mark.parametrize("key", sorted(NEW_OPTIONS))
def test_neutral_value_keeps_the_trial_id_and_another_value_changes_it(write_yaml, key):
    import json

    from mtbench.config.schema import ID_NEUTRAL
    from mtbench.tracking import flatten_config

    def trial(*overrides: object):
        texts = [f"{key}={json.dumps(value)}" for value in overrides]  # JSON is YAML
        return expand_trials(load_experiment(path, CONTEXT.get(key, []) + texts))[0]

    path = write_yaml("e.yaml", BASE)
    plain, neutral, other = trial(), trial(ID_NEUTRAL[key]), trial(NEW_OPTIONS[key])
    assert neutral.id == plain.id
    assert other.id != plain.id
    # The option is in the resolved config (logged, written to config.yaml), but at its neutral value not in the
    # identity that the id hashes.
    assert key in flatten_config(plain.model_dump())
    assert not any(k.startswith(key) for k in flatten_config(neutral.identity()))
    assert any(k.startswith(key) for k in flatten_config(other.identity()))


def test_loss_task_options_merge_with_edge_pos_weight():
    from mtbench.config.schema import LossConfig

    assert LossConfig().task_loss_options() == {"edge": {"pos_weight": 0.95}}
    assert LossConfig(edge_pos_weight=0.8, task_options={"normals": {"normalize_by": "elements"}}).task_loss_options() \
        == {"normals": {"normalize_by": "elements"}, "edge": {"pos_weight": 0.8}}
    # pos_weight given in task_options alone (edge_pos_weight left at its default) is the edge loss's.
    assert LossConfig(task_options={"edge": {"pos_weight": 0.8}}).task_loss_options() == {"edge": {"pos_weight": 0.8}}


def test_bad_loss_task_options_exit_2_through_the_cli(write_yaml, tmp_path):
    from conftest import run_cli

    path = write_yaml("e.yaml", BASE)
    result = run_cli("run", str(path), "--dry-run", "-o", "loss.task_options={normals: {normalise_by: elements}}",
                     cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown option 'normalise_by' for the normals loss" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_run_selects_trials_by_variant_and_seed(tmp_path):
    from conftest import EXPERIMENTS, run_cli

    from mtbench.config.loading import select_trials

    trials = expand_trials(load_experiment(EXPERIMENTS / "quickstart.yaml"))
    assert [(t.variant, t.seed) for t in select_trials(trials, variant="demt")] == [("demt", 0), ("demt", 1)]
    assert [(t.variant, t.seed) for t in select_trials(trials, seed=1)] == [
        ("single_task", 1), ("shared_encoder", 1), ("demt", 1)]
    with pytest.raises(MtbenchError, match="no trial with seed 7"):
        select_trials(trials, seed=7)
    result = run_cli("run", str(EXPERIMENTS / "quickstart.yaml"), "--variant", "demtt", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and "no variant 'demtt'. Did you mean 'demt'?" in result.stderr + result.stdout
    result = run_cli("run", str(EXPERIMENTS / "quickstart.yaml"), "--variant", "demt", "--seed", "1", "--dry-run",
                     cwd=tmp_path)
    assert result.returncode == 0 and "148bca30d1fc" in result.stdout and "1 trials" in result.stdout


def test_an_override_that_one_variant_leaves_alone_is_accepted(write_yaml):
    text = BASE + "variants: [{name: a, overrides: {model.name: demt}}, {name: b}]\n"
    load_experiment(write_yaml("e.yaml", text), ["model.name=padnet"])
