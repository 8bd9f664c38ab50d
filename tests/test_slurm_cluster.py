"""submitit's real SlurmExecutor against the localhost SLURM cluster (scripts/slurm_local_up.sh).

Only mtbench/sweep/launchers.py may import submitit inside the package (test_integrations.py); tests may, but
behind importorskip so that a checkout without it still collects.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

pytestmark = pytest.mark.slurm

# The jobs' Python cannot import this test module (tests/ is not on its path): ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def add(a: int, b: int) -> int:
    return a + b


class Counter(submitit.helpers.Checkpointable):
    """Counts to n, one tick per 0.5 s, writing its progress; submitit checkpoints it when preempted."""

    def __init__(self, progress: str) -> None:
        self.progress = progress
        self.i = 0
        self.starts: list[tuple[int, str]] = []   # (count, SLURM_RESTART_COUNT) at each (re)start

    def __call__(self, n: int) -> tuple[int, list[tuple[int, str]]]:
        import os

        self.starts.append((self.i, os.environ.get("SLURM_RESTART_COUNT", "0")))
        while self.i < n:
            self.i += 1
            Path(self.progress).write_text(str(self.i))
            time.sleep(0.5)
        return self.i, self.starts


def executor(tmp_path: Path, partition: str, **params):
    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    ex.update_parameters(slurm_partition=partition, cpus_per_task=1, mem_gb=1, **params)
    return ex


def wait_done(job, timeout: float):
    """job.result(), but fail (and cancel the job) instead of blocking forever."""
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {timeout} s (state {job.state})")
        time.sleep(0.5)
    return job.result()


def test_map_array_runs_on_slurm(slurm_cluster, tmp_path):
    ex = executor(tmp_path, slurm_cluster, timeout_min=5)
    jobs = ex.map_array(add, [1, 2, 3], [10, 20, 30])
    assert [wait_done(j, 120) for j in jobs] == [11, 22, 33]
    array_ids = {j.job_id.split("_")[0] for j in jobs}
    assert len(array_ids) == 1 and all("_" in j.job_id for j in jobs)   # one `sbatch --array`, three tasks


def test_preempted_checkpointable_job_is_requeued_and_resumes(slurm_cluster, tmp_path):
    # timeout_min >= 60: below ~13 submitit counts any preemption as a time-out (notes/slurm_local.md, G12).
    ex = executor(tmp_path, slurm_cluster, timeout_min=60)
    progress = tmp_path / "progress"
    job = ex.submit(Counter(str(progress)), 12)
    deadline = time.monotonic() + 60
    while not (progress.exists() and int(progress.read_text() or 0) >= 3):
        assert time.monotonic() < deadline, f"job {job.job_id} made no progress (state {job.state})"
        time.sleep(0.2)
    # Preemption as SLURM does it: SIGTERM then USR2; submitit's handler checkpoints the Counter and runs
    # `scontrol requeue`, and the requeued job starts again from the checkpoint (~12 s later, G3).
    job._interrupt()
    count, starts = wait_done(job, 120)
    assert count == 12
    assert len(starts) == 2 and starts[0] == (0, "0")
    assert starts[1][0] >= 3 and starts[1][1] == "1"   # resumed mid-way, on the first restart
    states = subprocess.run(["sacct", "-j", job.job_id, "-D", "-X", "-n", "-o", "State"],
                            capture_output=True, text=True, timeout=30).stdout.split()
    assert "REQUEUED" in states, states
