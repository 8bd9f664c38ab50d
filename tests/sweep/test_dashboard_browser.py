"""Optuna's dashboard on a study run through the real CLI, looked at in headless Chromium."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import chromium_driver, skip_without_chromium, wait_for_text
from conftest import run_cli

STUDY = """name: dash
dataset: {name: synthetic_nyud, options: {height: 32, width: 48, num_train: 16, num_val: 4, num_test: 4}}
model: {name: shared_encoder, backbone: tiny}
train: {steps: 4, batch_size: 2, eval_batch_size: 4, eval_every: 2, checkpoint_every: 2}
seeds: [0]
search:
  objective: semseg/mIoU
  n_trials: 2
  space:
    train.optimizer.lr: {type: float, low: 1.0e-4, high: 0.01, log: true}
"""

# serve_dashboard in its own process, as `mtbench` would run it: it prints the address, SIGTERM stops it.
SERVE = """import sys
from mtbench.config import load_experiment
from mtbench.sweep.dashboard import serve_dashboard
sys.exit(serve_dashboard(load_experiment(sys.argv[1]), port=int(sys.argv[2]), ready=lambda url: print(url, flush=True)))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_line(proc: subprocess.Popen, log: Path, timeout_s: float) -> str:
    """The first line `proc` prints, or a failure with its log when it prints none in time."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout_s)
    except queue.Empty:
        line = ""
    if not line.strip():
        pytest.fail(f"serve_dashboard printed no address within {timeout_s} s:\n{log.read_text()[-3000:]}")
    return line.strip()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.mark.service
@pytest.mark.slow
def test_the_dashboard_shows_the_study_and_both_trials(tmp_path):
    skip_without_chromium()  # before the study is run: nothing to look at it with
    (tmp_path / "dash.yaml").write_text(STUDY)
    result = run_cli("run", "dash.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    port = free_port()
    log = tmp_path / "serve_dashboard.log"
    with log.open("w") as stderr:
        server = subprocess.Popen([sys.executable, "-c", SERVE, "dash.yaml", str(port)], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        url = first_line(server, log, timeout_s=120)
        assert url.startswith(f"http://127.0.0.1:{port}/dashboard/studies/"), url
        with chromium_driver(tmp_path) as driver:
            driver.get(url)  # the study's page: its name, the best trial and each trial's curve
            wait_for_text(driver, "dash (id=", "Best Trial (number=", "trial #0", "trial #1")
            driver.save_screenshot(str(tmp_path / "dashboard_study.png"))
            driver.get(f"{url}/trials")  # the trial list
            text = wait_for_text(driver, "2 Trials", "Trial 0", "Trial 1")
            assert "Trial 2" not in text and text.count("Complete") >= 2
            driver.save_screenshot(str(tmp_path / "dashboard_trials.png"))
        assert (tmp_path / "dashboard_trials.png").stat().st_size > 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
        server.stdout.close()
    assert code == 143  # SIGTERM, handled: the dashboard's process group was stopped on the way out
    assert not answers(f"http://127.0.0.1:{port}/api/studies")  # nothing left serving
