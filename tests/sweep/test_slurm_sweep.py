"""Sweeps on a real local SLURM cluster (scripts/slurm_local_up.sh): job array, requeue + resume, failures."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
from pathlib import Path

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


def logged_steps(db: Path, key: str) -> list[int]:
    """Every step at which `key` was logged in the sqlite store `db`, in order (a re-logged step shows twice)."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT step FROM metrics WHERE key = ? ORDER BY step", (key,))]
        except sqlite3.OperationalError:  # the store's tables are still being created
            return []


def test_preempted_trial_checkpoints_its_step_requeues_and_ends_as_if_uninterrupted(tmp_path, slurm_cluster):
    # No regular checkpoint before the end (checkpoint_every > steps): what the requeued job resumes from is
    # the checkpoint the preemption wrote at the step it landed in.
    steps = 120
    text = BASE.format(name="r", steps=steps, partition=slurm_cluster).replace("checkpoint_every: 2",
                                                                               "checkpoint_every: 1000")
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    for folder in (straight, preempted):
        folder.mkdir()
        (folder / "r.yaml").write_text(text)
    assert run_cli("run", "r.yaml", "--launcher", "local", cwd=straight, timeout=900).returncode == 0
    expected = json.loads(next((straight / "runs").rglob("result.json")).read_text())["metrics"]

    submitted = run_cli("run", "r.yaml", "--no-wait", cwd=preempted)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = next(iter(json.loads((preempted / "runs" / "r" / "slurm" / "jobs.json").read_text()).values()))
    deadline = time.time() + 300
    while max(logged_steps(preempted / "mlruns.db", "train/loss_total"), default=0) < 20:
        assert time.time() < deadline, "the job never logged step 20"
        time.sleep(0.2)

    # A second coordinator while the job trains: its job finds the trial's lock held and skips the trial.
    second = run_cli("run", "r.yaml", cwd=preempted, timeout=600)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stdout + second.stderr
    assert "skipped" in second.stderr and "is in use by process" in " ".join(second.stderr.split())

    # Preemption as SLURM signals it (submitit's SlurmJob._interrupt): SIGTERM, then USR2.
    for sig in ("TERM", "USR2"):
        subprocess.run(["scancel", f"--signal={sig}", job_id], check=True, capture_output=True)
    attached = run_cli("status", "r.yaml", "--wait", cwd=preempted, timeout=900)
    assert attached.returncode == 0, attached.stdout + attached.stderr
    trial = preempted / "runs" / "r" / "shared_encoder" / "seed0"
    assert json.loads((trial / "result.json").read_text())["metrics"] == expected
    states = subprocess.run(["sacct", "-j", job_id, "-D", "-n", "-X", "-o", "State"], capture_output=True,
                            text=True).stdout.split()
    assert "REQUEUED" in states, states
    # The requeued job went on from the step the preemption checkpointed: no step was trained (and logged) twice.
    history = logged_steps(preempted / "mlruns.db", "train/loss_total")
    assert history == list(range(10, steps + 1, 10)), history
    runs = tracking.load_runs(f"sqlite:///{preempted}/mlruns.db", "r")
    assert list(runs["status"]) == ["FINISHED"]  # one run, reopened by the requeued job


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


def test_smoke_with_the_slurm_launcher_runs_the_smoke_trials_as_a_job_array(tmp_path, slurm_cluster):
    """`--smoke --launcher slurm` (a check of a cluster setup): one job array, every trial in sacct and MLflow."""
    from conftest import REPO

    result = run_cli("run", str(REPO / "experiments" / "quickstart.yaml"), "--smoke", "--launcher", "slurm",
                     "-o", f"launcher.partition={slurm_cluster}", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 trials (3 variants x 1 seeds) on slurm" in result.stdout
    jobs = json.loads((tmp_path / "runs" / "quickstart" / "slurm" / "jobs.json").read_text())
    [array] = {j.split("_")[0] for j in jobs.values()}
    accounted = subprocess.run(["sacct", "-j", array, "-n", "-X", "-o", "JobID,State"], capture_output=True,
                               text=True, timeout=30).stdout.split()
    assert sorted(jobs.values()) == sorted(accounted[0::2]) and set(accounted[1::2]) == {"COMPLETED"}, accounted
    runs = tracking.load_runs(f"sqlite:///{tmp_path}/mlruns.db", "quickstart")
    assert len(runs) == 3 and set(runs["status"]) == {"FINISHED"}  # every trial of the array is in MLflow
    status = run_cli("status", str(REPO / "experiments" / "quickstart.yaml"), "--smoke", cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count("FINISHED") == 3, status.stdout + status.stderr
