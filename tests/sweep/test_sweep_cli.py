"""Sweeps through the real CLI: a grid on 2 local workers, skip-finished reruns, an Optuna study."""

from __future__ import annotations

import pytest
from conftest import run_cli

from mtbench import tracking

BASE = """name: {name}
dataset: {{name: synthetic_nyud, options: {{height: 32, width: 48, num_train: 16, num_val: 4, num_test: 4}}}}
model: {{name: shared_encoder, backbone: tiny}}
train: {{steps: 6, batch_size: 2, eval_batch_size: 4, eval_every: 2, checkpoint_every: 2}}
seeds: [0]
"""


@pytest.mark.slow
def test_grid_on_two_workers_then_a_rerun_skips_every_finished_trial(tmp_path):
    exp = tmp_path / "g.yaml"
    exp.write_text(BASE.format(name="g") + "grid:\n  train.optimizer.lr: [0.001, 0.01]\n"
                   "  model.options.head_channels: [8, 16]\n")
    first = run_cli("run", "g.yaml", "--workers", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    runs = tracking.load_runs(uri, "g")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    again = run_cli("run", "g.yaml", cwd=tmp_path)
    assert again.returncode == 0 and len(tracking.load_runs(uri, "g")) == 4  # nothing ran twice
    table = run_cli("run", "g.yaml", "--dry-run", cwd=tmp_path)
    assert table.stdout.count("FINISHED") == 4 and "lr=0.01,head_channels=16" in table.stdout
    fresh = run_cli("run", "g.yaml", "--fresh", "--workers", "2", cwd=tmp_path)
    assert fresh.returncode == 0 and len(tracking.load_runs(uri, "g")) == 8  # --fresh runs all 4 again


@pytest.mark.slow
def test_study_with_two_workers_finishes_exactly_n_trials(tmp_path):
    import optuna

    exp = tmp_path / "s.yaml"
    exp.write_text(BASE.format(name="s") + """launcher: {workers: 2}
search:
  objective: semseg/mIoU
  n_trials: 5
  pruner: median
  space:
    train.optimizer.lr: {type: float, low: 1.0e-6, high: 0.05, log: true}
    model.options.head_channels: {type: categorical, choices: [8, 16]}
""")
    result = run_cli("run", "s.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/runs/s/optuna.db")
    states = [t.state for t in study.trials]
    finished = [s for s in states if s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(states) == 5 and len(finished) == 5
    runs = tracking.load_runs(f"sqlite:///{tmp_path}/mlruns.db", "s")
    assert len(runs) == 6  # 5 trials + the study's parent run
    assert (tmp_path / "reports" / "s" / "best_config.yaml").is_file()
    # Running the command again finds the study complete and runs nothing.
    again = run_cli("run", "s.yaml", cwd=tmp_path)
    assert again.returncode == 0 and "5 of 5 trials finished; running 0" in again.stdout
    assert len(tracking.load_runs(f"sqlite:///{tmp_path}/mlruns.db", "s")) == 6
    # The report reopens the study from the storage its parent run names: objective over trials.
    report = run_cli("report", "-e", "s", "--reference", "none", cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "reports" / "s" / "optuna_history.png").is_file()
    assert (tmp_path / "reports" / "s" / "best_config.yaml").is_file()  # kept: not a file of the report


def test_a_pruned_trial_ends_killed_and_tagged(tmp_path, monkeypatch, write_yaml):
    import optuna

    from mtbench.config import load_experiment
    from mtbench.sweep import search

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    monkeypatch.chdir(tmp_path)
    path = write_yaml("p.yaml", BASE.format(name="p") + """search:
  objective: semseg/mIoU
  n_trials: 1
  space: {train.optimizer.lr: {type: float, low: 0.001, high: 0.01}}
""")
    exp = load_experiment(path)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    parent = search.parent_run(exp, uri)
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.optimize(lambda t: search.objective(exp, parent, t), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    run = tracking._client(uri).get_run(tracking.find_runs(uri, "p", {tracking.TAG_STUDY_TRIAL: "0"})[0])
    assert run.info.status == "KILLED" and run.data.tags[tracking.TAG_PRUNED] == "true"
    assert run.data.tags[tracking.TAG_PARENT] == parent


def test_a_running_study_trial_whose_lock_is_held_is_not_marked_stale(tmp_path):
    """A second `mtbench run` of a study must not fail the trials another live process trains: a RUNNING
    trial counts as stale only when nobody holds its trial lock."""
    import optuna

    from mtbench.config.loading import load_experiment
    from mtbench.engine.trial import LOCK, trial_dir
    from mtbench.locks import exclusive
    from mtbench.sweep.search import fail_stale_trials, open_storage, study_name, trial_config

    path = tmp_path / "s.yaml"
    path.write_text(BASE.format(name="s") + f"output_dir: {tmp_path / 'runs'}\n" + """search:
  objective: semseg/mIoU
  n_trials: 2
  space: {train.optimizer.lr: {type: float, low: 0.001, high: 0.01}}
""")
    exp = load_experiment(path)
    storage = open_storage(exp)
    study = optuna.create_study(study_name=study_name(exp), storage=storage, direction="maximize")
    training, dead = study.ask(), study.ask()
    with exclusive(trial_dir(trial_config(exp, {}, training.number)) / LOCK, wait=False, what="trial"):
        assert fail_stale_trials(exp, study, storage) == 1
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {training.number: optuna.trial.TrialState.RUNNING, dead.number: optuna.trial.TrialState.FAIL}
    assert fail_stale_trials(exp, study, storage) == 1  # its holder is gone now: stale too


@pytest.mark.slow
def test_the_tune_demt_study_runs_as_a_smoke(tmp_path):
    """experiments/tune_demt.yaml runs through the CLI (--smoke: two trials) and its study finishes them."""
    import optuna
    from conftest import EXPERIMENTS

    result = run_cli("run", str(EXPERIMENTS / "tune_demt.yaml"), "--smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="tune_demt", storage=f"sqlite:///{tmp_path}/runs/tune_demt/optuna.db")
    states = [t.state for t in study.trials]
    assert len(states) == 2 and all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                                    for s in states)
    assert {"train.optimizer.lr", "model.options.mixer_width"} <= set(study.trials[0].params)
    assert (tmp_path / "reports" / "tune_demt" / "best_config.yaml").is_file()
