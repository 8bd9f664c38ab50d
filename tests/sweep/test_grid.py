"""Grid expansion, stable trial ids, variant mappings and the sweep sections' bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtbench.config import expand_trials, load_experiment
from mtbench.errors import MtbenchError

BASE = """name: g
dataset: {name: synthetic_nyud, options: {height: 32, width: 48, num_train: 16, num_val: 4, num_test: 4}}
model: {name: shared_encoder, backbone: tiny}
train: {steps: 2, batch_size: 2, eval_every: 2, checkpoint_every: 2}
seeds: [0, 1]
"""


def test_grid_is_the_cartesian_product_times_variants_and_seeds(write_yaml):
    path = write_yaml("g.yaml", BASE + """variants:
  a: {model.options.head_channels: 8}
  b: {}
grid:
  train.optimizer.lr: [0.001, 0.01, 0.1]
  train.batch_size: [2, 4]
""")
    trials = expand_trials(load_experiment(path))
    assert len(trials) == 2 * 3 * 2 * 2
    assert trials[0].variant == "a@lr=0.001,batch_size=2" and trials[0].model.options == {"head_channels": 8}
    assert {t.train.optimizer.lr for t in trials} == {0.001, 0.01, 0.1}
    assert len({t.id for t in trials}) == len(trials)  # every (variant, point, seed) is its own trial
    # The id is a hash of the resolved config: stable across loads, independent of output_dir/tracking.
    again = expand_trials(load_experiment(path, ["output_dir=elsewhere", "tracking.uri=sqlite:///x.db"]))
    assert [t.id for t in again] == [t.id for t in trials]
    changed = expand_trials(load_experiment(path, ["train.steps=3"]))
    assert not {t.id for t in changed} & {t.id for t in trials}


def test_clashing_short_names_use_the_whole_key():
    from mtbench.config.loading import grid_label

    assert grid_label({"train.optimizer.lr": 0.01, "model.options.lr": 1, "train.steps": 5}) == \
        "train.optimizer.lr=0.01,model.options.lr=1,steps=5"
    assert grid_label({"dataset.root": "a/b"}) == "root=a_b"  # no path separators in folder names


@pytest.mark.parametrize(("section", "message"), [
    ("grid:\n  train.optimizer.lrr: [0.1]\n", "lrr"),
    ("grid:\n  train.steps: []\n", "has no values"),
    ("search:\n  objective: semseg/mIoU\n  space:\n    train.optimizer.lr: {type: float, low: 0.1, high: 0.01}\n",
     "inverted"),
    ("search:\n  objective: semseg/mIoU\n  space:\n    train.optimizer.lr: {type: categorical, choices: []}\n",
     "non-empty"),
    ("search:\n  objective: semseg/mIoU\n  space: {}\n", "space"),
    ("launcher: {name: kubernetes}\n", "launcher"),
])
def test_bad_sweep_sections_are_clear_errors(write_yaml, section, message):
    path = write_yaml("g.yaml", BASE + section)
    with pytest.raises(MtbenchError, match=message):
        load_experiment(path)


def test_search_with_grid_is_refused(write_yaml):
    path = write_yaml("g.yaml", BASE + """grid: {train.steps: [2]}
search:
  objective: semseg/mIoU
  space: {train.optimizer.lr: {type: float, low: 0.001, high: 0.1}}
""")
    with pytest.raises(MtbenchError, match="remove `grid` and `variants`"):
        load_experiment(path)


def test_unknown_search_key_is_refused_before_any_trial(write_yaml, tmp_path, monkeypatch):
    from mtbench.sweep.search import run_study

    monkeypatch.chdir(tmp_path)
    path = write_yaml("g.yaml", BASE + """search:
  objective: semseg/mIoU
  space: {train.optimizer.lrr: {type: float, low: 0.001, high: 0.1}}
""")
    with pytest.raises(MtbenchError, match="lrr"):
        run_study(load_experiment(path))
    assert not (tmp_path / "runs").exists()


def test_unreachable_storage_is_a_clear_error(write_yaml, tmp_path, monkeypatch):
    from mtbench.sweep.search import run_study

    monkeypatch.chdir(tmp_path)
    path = write_yaml("g.yaml", BASE + f"""search:
  objective: semseg/mIoU
  storage: sqlite:///{tmp_path}/missing/dir/optuna.db
  space: {{train.optimizer.lr: {{type: float, low: 0.001, high: 0.1}}}}
""")
    with pytest.raises(MtbenchError, match="search.storage: cannot open"):
        run_study(load_experiment(path))


def test_slurm_without_sbatch_is_refused_before_submission(write_yaml, monkeypatch):
    from mtbench.config.schema import LauncherConfig
    from mtbench.sweep import launchers

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MtbenchError, match="sbatch"):
        launchers.slurm_executor(Path("x"), LauncherConfig(name="slurm"))


def test_delta_m_objective_against_given_values_and_its_bad_inputs(write_yaml):
    from mtbench.sweep.search import direction, objective_value, reference_metrics

    path = write_yaml("g.yaml", BASE + """dataset: {name: synthetic_nyud, tasks: [semseg, depth]}
search:
  objective: delta_m
  reference: {semseg/mIoU: 38.0, depth/rmse: 0.62}
  space: {train.optimizer.lr: {type: float, low: 0.001, high: 0.1}}
""")
    exp = load_experiment(path)
    # Δm = 100/2 · ((40 − 38)/38 − (0.60 − 0.62)/0.62) = +4.2445 (mtbench.metrics.delta_m's worked example).
    value = objective_value(exp, {"semseg/mIoU": 40.0, "depth/rmse": 0.60, "edge/loss_bce": 1.0},
                            reference_metrics(exp))
    assert value == pytest.approx(4.2445, abs=1e-4) and direction(exp) == "maximize"
    with pytest.raises(MtbenchError, match="needs `reference`"):
        load_experiment(path, ["search.reference=null"])
    with pytest.raises(MtbenchError, match="no published row"):
        reference_metrics(load_experiment(path, ["search.reference=published:ATRC/nyudd"]))
