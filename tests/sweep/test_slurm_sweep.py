"""Sweeps on a real local SLURM cluster (scripts/slurm_local_up.sh): job array, requeue + resume, failures."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import run_cli

from mtbench import tracking

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BASE = """name: {name}
dataset: {{name: synthetic_nyud, options: {{height: 32, width: 48, num_train: 16, num_val: 4, num_test: 4}}}}
model: {{name: shared_encoder, backbone: tiny}}
train: {{steps: {steps}, batch_size: 2, eval_batch_size: 4, eval_every: {steps}, checkpoint_every: 2, num_workers: 0}}
seeds: [0]
launcher: {{name: slurm, partition: {partition}, cpus_per_task: 1, time_min: 60, array_parallelism: 4}}
"""


def test_grid_runs_as_a_job_array_with_every_trial_in_mlflow(tmp_path, slurm_cluster):
    grid = "grid:\n  train.optimizer.lr: [0.001, 0.01]\n  model.options.head_channels: [8, 16]\n"
    (tmp_path / "g.yaml").write_text(BASE.format(name="g", steps=4, partition=slurm_cluster) + grid)
    result = run_cli("run", "g.yaml", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = tracking.load_runs(f"sqlite:///{tmp_path}/mlruns.db", "g")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    jobs = json.loads((tmp_path / "runs" / "g" / "slurm" / "jobs.json").read_text())
    assert len(jobs) == 4 and len({j.split("_")[0] for j in jobs.values()}) == 1  # one array job
    status = run_cli("status", "g.yaml", cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count("FINISHED") == 4


def test_requeued_trial_resumes_from_its_checkpoint_with_the_uninterrupted_result(tmp_path, slurm_cluster):
    steps = 120
    straight, requeued = tmp_path / "straight", tmp_path / "requeued"
    for folder in (straight, requeued):
        folder.mkdir()
        (folder / "r.yaml").write_text(BASE.format(name="r", steps=steps, partition=slurm_cluster))
    assert run_cli("run", "r.yaml", "--launcher", "local", cwd=straight, timeout=900).returncode == 0
    expected = json.loads(next((straight / "runs").rglob("result.json")).read_text())["metrics"]

    submitted = run_cli("run", "r.yaml", "--no-wait", cwd=requeued)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = next(iter(json.loads((requeued / "runs" / "r" / "slurm" / "jobs.json").read_text()).values()))
    checkpoint = requeued / "runs" / "r" / "shared_encoder" / "seed0" / "last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "the job never wrote a checkpoint"
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    attached = run_cli("status", "r.yaml", "--wait", cwd=requeued, timeout=900)
    assert attached.returncode == 0, attached.stdout + attached.stderr
    got = json.loads((checkpoint.parent / "result.json").read_text())["metrics"]
    assert got == expected
    restarts = subprocess.run(["sacct", "-j", job_id, "-D", "-n", "-X", "-o", "State"], capture_output=True,
                              text=True).stdout.split()
    assert "REQUEUED" in restarts or len(restarts) > 1


def test_failing_trial_is_reported_with_its_slurm_log_tail(tmp_path, slurm_cluster):
    (tmp_path / "f.yaml").write_text(BASE.format(name="f", steps=4, partition=slurm_cluster)
                                     + "dataset: {name: nyud, root: no_such_folder}\n")
    result = run_cli("run", "f.yaml", "-o", "dataset.options={}", cwd=tmp_path, timeout=900)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "failed" in result.stderr and "no_such_folder" in result.stderr


def test_options_sbatch_rejects_are_a_clear_error_before_any_trial_runs(tmp_path, slurm_cluster):
    (tmp_path / "b.yaml").write_text(BASE.format(name="b", steps=4, partition="no_such_partition"))
    result = run_cli("run", "b.yaml", cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sbatch refused" in result.stderr and "no_such_partition" in result.stderr
    assert not (tmp_path / "mlruns.db").exists() or tracking.find_runs(f"sqlite:///{tmp_path}/mlruns.db", "b", {}) == []


def test_study_workers_run_as_slurm_jobs_and_finish_exactly_n_trials(tmp_path, slurm_cluster):
    import optuna

    (tmp_path / "s.yaml").write_text(BASE.format(name="s", steps=4, partition=slurm_cluster).replace(
        "array_parallelism: 4}", "array_parallelism: 4, workers: 2}") + """search:
  objective: semseg/mIoU
  n_trials: 3
  space: {train.optimizer.lr: {type: float, low: 0.001, high: 0.05, log: true}}
""")
    result = run_cli("run", "s.yaml", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/runs/s/optuna.db")
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    assert len(tracking.load_runs(f"sqlite:///{tmp_path}/mlruns.db", "s")) == 4  # 3 trials + the parent run
    assert len(list((tmp_path / "runs" / "s" / "slurm").glob("[0-9]*_[0-9]*"))) == 2  # one array of 2 worker jobs
