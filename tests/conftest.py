"""Shared fixtures: every test writes only under its tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run the installed `mtbench` console script in `cwd` and capture its output."""
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlruns.db", "COLUMNS": "200",
                **(env or {})}
    exe = Path(sys.executable).with_name("mtbench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mtbench.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def model_test_setting(name: str) -> tuple[str, tuple[int, int]]:
    """(backbone, (H, W)) to build and run registered model `name` on: what the model declares (ModelEntry)."""
    from mtbench.models import MODELS

    entry = MODELS.get(name)
    return entry.smoke_backbone, entry.test_size


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Write a YAML text into tmp_path/<name> and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


SLURM_UP = REPO / "scripts" / "slurm_local_up.sh"
SLURM_READY = {"idle", "mixed"}   # a node with free slots ("mixed": some jobs already run on it)


def _slurm_states() -> set[str] | None:
    """The node states `sinfo` reports, or None when sinfo is missing or does not answer."""
    if shutil.which("sinfo") is None:
        return None
    try:
        # `scontrol ping` fails at once when slurmctld is down; sinfo would retry for ~9 s first.
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
        if "UP" not in ping.stdout:
            return None
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(proc.stdout.split()) if proc.returncode == 0 else None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A running localhost SLURM cluster (scripts/slurm_local_up.sh); returns its partition, else skips.

    CI starts the cluster before pytest (.ci/run). Where sinfo is missing or does not answer, this tries the up
    script once (root only; SLURM_LOCAL_CPUS defaults to 4 slots, as in CI).
    """
    states = _slurm_states()
    if states is None:
        env = {**os.environ, "SLURM_LOCAL_CPUS": os.environ.get("SLURM_LOCAL_CPUS", "4")}
        try:
            proc = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=600, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"no SLURM cluster: {SLURM_UP.name} ran over 600 s")
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
            pytest.skip(f"no SLURM cluster: {SLURM_UP.name} failed: {errors[0] if errors else proc.stderr[-300:]}")
        states = _slurm_states()
    deadline = time.monotonic() + 60
    while not (states or set()) & SLURM_READY:
        if time.monotonic() > deadline:
            pytest.skip(f"no SLURM cluster: no idle node after 60 s (sinfo states: {sorted(states or [])})")
        time.sleep(1)
        states = _slurm_states()
    return "debug"
