"""Shared fixtures: every test writes only under its tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Write a YAML text into tmp_path/<name> and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
