"""MLflow's UI as `mtbench ui` serves it, looked at in headless Chromium: a finished quickstart smoke and its report.

What a person sees on the printed address: the model-training Runs page (not GenAI's), the experiment's
description, the three trial runs with their Dataset and Description filled, then the report run's files.
Screenshots go under the test's temporary folder (and to docs/figures/ with MTBENCH_SAVE_FIGURES=1, for the README).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser import chromium_driver, skip_without_chromium, wait_for_text
from conftest import REPO, run_cli

pytestmark = [pytest.mark.service, pytest.mark.slow]

RUNS = ("single_task-seed0", "shared_encoder-seed0", "demt-seed0")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(folder: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`mtbench ui --port PORT` in `folder`; returns the process and the address it prints once serving."""
    exe = Path(sys.executable).with_name("mtbench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mtbench.cli"]
    out = folder / "ui.out"
    with out.open("w") as stdout:
        proc = subprocess.Popen([*cmd, "ui", "--port", str(port)], cwd=folder, stdout=stdout,
                                stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "300",
                                                               "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlruns.db"})
    deadline = time.monotonic() + 180
    while not (found := re.search(r"Open (http\S+)", out.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mtbench ui printed no address:\n{out.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, found.group(1)


def test_mlflow_ui_shows_the_quickstart_runs_and_the_report_files(tmp_path):
    skip_without_chromium()
    smoke = run_cli("run", str(REPO / "experiments" / "quickstart.yaml"), "--smoke", cwd=tmp_path, timeout=900)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    report = run_cli("report", cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    report_run = re.search(r"MLflow report run (\w+)", report.stdout).group(1)

    proc, address = start_ui(tmp_path, free_port())
    try:
        assert "workflowType=machine_learning" in address
        with chromium_driver(tmp_path) as driver:
            driver.get(address)
            page = wait_for_text(driver, *RUNS, "Dataset", "Description", "synthetic_nyud",
                                 "Shared-encoder multi-task model against single-task baselines")
            driver.save_screenshot(str(tmp_path / "mlflow_runs.png"))
            assert "Model registry" in page and "Observability" not in page  # the model-training view, not GenAI's
            assert "4 matching runs" in page  # the trials and the report run
            assert "demt, seed 0: demt on tiny" in page  # the run descriptions fill their column
            if os.environ.get("MTBENCH_SAVE_FIGURES"):
                shutil.copy(tmp_path / "mlflow_runs.png", REPO / "docs" / "figures" / "mlflow_runs.png")

            driver.get(address.replace("/runs?", f"/runs/{report_run}/artifacts?"))
            wait_for_text(driver, "Artifacts", "results.tex", "results.md", "task_change.png")
            driver.save_screenshot(str(tmp_path / "mlflow_report_run.png"))
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: mtbench stops the server's whole process group
        assert proc.wait(timeout=60) == 130
    assert "Traceback" not in (tmp_path / "ui.out").read_text()
