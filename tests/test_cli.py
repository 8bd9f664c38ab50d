"""The real `mtbench` CLI end to end on the synthetic dataset: smoke runs, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import EXPERIMENTS, run_cli

pytestmark = pytest.mark.slow

TINY = """
name: tiny
dataset: {name: synthetic_nyud, options: {height: 32, width: 40, num_train: 32, num_val: 8, num_test: 8}}
model: {name: shared_encoder, backbone: tiny}
train: {steps: STEPS, batch_size: 4, eval_batch_size: 8, eval_every: 20, checkpoint_every: 5,
        optimizer: {lr: 0.002}, schedule: {warmup_steps: 2}}
seeds: [0]
"""


def tiny_experiment(folder: Path, steps: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(TINY.replace("STEPS", str(steps)))
    return path


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr


# balancers.yaml is 35 variants of two models that tests/test_balancing.py already trains under every balancer:
# its smoke run would add minutes to CI for nothing new, so it gets a dry run. tune_demt.yaml is an Optuna study
# (no per-trial table to check here): tests/sweep/test_sweep_cli.py runs its smoke and checks the study.
SMOKE_RUN = sorted(p for p in EXPERIMENTS.glob("*.yaml") if p.name not in ("balancers.yaml", "tune_demt.yaml"))


def test_balancers_experiment_expands_to_every_balancer_on_both_models(tmp_path):
    import mtbench.balancing  # noqa: F401  (registers the balancers)
    from mtbench.registry import WEIGHTINGS

    result = run_cli("run", str(EXPERIMENTS / "balancers.yaml"), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"balancers: {2 * (2 * len(WEIGHTINGS.names()) + 1)} trials" in result.stdout


@pytest.mark.parametrize("experiment", SMOKE_RUN, ids=lambda p: p.name)
def test_smoke_run_of_every_experiment_file(experiment, tmp_path):
    result = run_cli("run", str(experiment), "--smoke", cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FINISHED" in result.stdout
    assert (tmp_path / "mlruns.db").is_file()
    assert list((tmp_path / "runs").rglob("result.json"))


def test_run_logs_to_mlflow_and_report_writes_tables(tmp_path):
    from mtbench import tracking

    exp = tiny_experiment(tmp_path)
    result = run_cli("run", str(exp), "-o", "seeds=[0, 1]", "-o",
                     "variants=[{name: single_task, overrides: {model.name: single_task}}, {name: shared_encoder}]",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = tracking.load_runs(f"sqlite:///{tmp_path}/mlruns.db", "tiny")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert {"semseg/mIoU", "depth/rmse", "normals/mean"} <= set(runs.columns)
    report = run_cli("report", "--experiment", "tiny", "--out", "reports", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    folder = tmp_path / "reports" / "tiny"
    for name in ("results.tex", "results.md", "results.csv", "runs.csv", "ablation.tex", "report_standalone.tex",
                 "delta_m_vs_gflops.png", "task_change.pdf", "val_curves.png"):
        assert (folder / name).is_file(), name
    assert "Δm against the mean of single_task (2 seeds) over semseg, depth, normals" in report.stdout
    assert "MLflow report run" in report.stdout
    summary = pd.read_csv(folder / "results.csv").set_index("label")
    assert summary.loc["shared_encoder", "gflops"] > 0 and summary.loc["single_task", "params_m"] > 0
    reports = tracking.load_runs(f"sqlite:///{tmp_path}/mlruns.db", "tiny", kinds=("report",))
    assert len(reports) == 1 and reports["status"].iloc[0] == "FINISHED"


def test_report_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path):
    from mtbench import tracking

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    for variant, key in (("single_task", "sal/maxF"), ("invpt", "sal/maxF-invpt")):
        tracker = tracking.Tracker.start(uri, "mixed", variant, {tracking.TAG_VARIANT: variant, tracking.TAG_SEED: "0",
                                                                 tracking.TAG_MODEL: variant})
        tracker.log_metrics({f"test/{key}": 80.0}, step=1)
        tracker.end()
    cases = {("-e", "nope"): "no MLflow experiment named 'nope'",
             ("-e", "mixed"): "sal: the runs computed sal/maxF with different metric variants",
             ("-e", "mixed", "--tag", "mtbench.model=demt"): "no runs in experiment(s) 'mixed' matching",
             ("-e", "mixed", "--tag", "model"): "--tag 'model': write key=value",
             (): "sal: the runs computed sal/maxF with different metric variants"}  # no -e: the only experiment
    for args, message in cases.items():
        result = run_cli("report", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stdout + result.stderr and "Traceback" not in result.stderr, args
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").iterdir())


def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path):
    steps = 150
    straight = tmp_path / "straight"
    assert run_cli("run", str(tiny_experiment(straight, steps)), cwd=straight).returncode == 0
    expected = json.loads(next((straight / "runs").rglob("result.json")).read_text())["metrics"]

    killed = tmp_path / "killed"
    exp = tiny_experiment(killed, steps)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{killed}/mlruns.db"}
    exe = Path(sys.executable).with_name("mtbench")
    proc = subprocess.Popen([str(exe), "run", str(exp)], cwd=killed, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoint = killed / "runs" / "tiny" / "shared_encoder" / "seed0" / "last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (checkpoint.parent / "result.json").exists(), "not killed mid-run"

    resumed = run_cli("run", str(exp), "--resume", cwd=killed)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((checkpoint.parent / "result.json").read_text())["metrics"]
    assert got == expected


def test_non_finite_loss_fails_the_trial_clearly(tmp_path):
    from mtbench import tracking

    exp = tiny_experiment(tmp_path)
    result = run_cli("run", str(exp), "-o", "train.optimizer={name: sgd, lr: 1.0e+12}", cwd=tmp_path)
    assert_clean_error(result, "became", "Lower train.optimizer.lr")
    runs = tracking.load_runs(f"sqlite:///{tmp_path}/mlruns.db", "tiny")
    assert list(runs["status"]) == ["FAILED"]


@pytest.mark.parametrize(("args", "needles"), [
    (["-o", "train.setps=3"], ["unknown key 'train.setps'", "Did you mean 'steps'"]),
    (["-o", "train.steps=-1"], ["train.steps", "greater than 0"]),
    (["-o", "model.name=demtt"], ["unknown model 'demtt'"]),
    (["-o", "model.backbone=resnet19"], ["unknown backbone 'resnet19'"]),
    (["-o", "dataset.name=synthetic_nyu"], ["unknown dataset 'synthetic_nyu'", "Did you mean 'synthetic_nyud'"]),
    (["-o", "output_dir=blocker/runs"], ["output_dir: cannot write to"]),
], ids=["unknown-key", "wrong-type", "model", "backbone", "dataset", "unwritable-output"])
def test_bad_input_is_one_message_and_exit_2(tmp_path, args, needles):
    exp = tiny_experiment(tmp_path)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    result = run_cli("run", str(exp), *args, cwd=tmp_path)
    assert_clean_error(result, *needles)
    assert not (tmp_path / "runs").exists()


def test_missing_experiment_file(tmp_path):
    assert_clean_error(run_cli("run", "nope.yaml", cwd=tmp_path), "nope.yaml' does not exist")


def test_unreachable_tracking_uri(tmp_path):
    exp = tiny_experiment(tmp_path)
    started = time.time()
    result = run_cli("run", str(exp), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert_clean_error(result, "127.0.0.1:9")
    assert time.time() - started < 60
    assert not (tmp_path / "runs").exists()


def test_list_shows_every_registry(tmp_path):
    result = run_cli("list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("shared_encoder", "single_task", "resnet18", "swin_tiny", "hrnet_w18_small", "synthetic_nyud",
                 "synthetic_pascal", "uncertainty", "semseg"):
        assert name in result.stdout


@pytest.mark.service
def test_ui_serves_the_run_store(tmp_path):
    import socket
    import urllib.request

    exp = tiny_experiment(tmp_path, steps=4)
    assert run_cli("run", str(exp), cwd=tmp_path).returncode == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns.db"}
    exe = Path(sys.executable).with_name("mtbench")
    proc = subprocess.Popen([str(exe), "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, body = time.time() + 90, ""
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/search?max_results=50",
                                            timeout=5) as response:
                    body = response.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert '"name": "tiny"' in body.replace('":"', '": "')
        with urllib.request.urlopen(base + "/", timeout=5) as response:
            assert response.status == 200 and "<html" in response.read().decode().lower()
        # A report read from (and logged to) the server: the UI lists its files beside the runs.
        report = run_cli("report", "-e", "tiny", "--reference", "none", "--tracking-uri", base, cwd=tmp_path)
        assert report.returncode == 0, report.stdout + report.stderr
        run_id = report.stdout.split("MLflow report run ")[1].split()[0]
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}", timeout=10) as response:
            listed = json.loads(response.read().decode())
        assert {"results.tex", "results.md", "val_curves.png"} <= {f["path"] for f in listed["files"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_resume_refuses_a_changed_config(tmp_path):
    exp = tiny_experiment(tmp_path, steps=6)
    assert run_cli("run", str(exp), cwd=tmp_path).returncode == 0
    (next((tmp_path / "runs").rglob("result.json"))).unlink()  # as if killed after the last checkpoint
    result = run_cli("run", str(exp), "--resume", "-o", "model.options.head_channels=16", cwd=tmp_path)
    assert_clean_error(result, "the config changed since it was written", "model.options.head_channels")


def test_best_val_selection_is_recorded(tmp_path):
    from mtbench import tracking

    exp = tiny_experiment(tmp_path, steps=20)
    result = run_cli("run", str(exp), "-o", "train.select=best_val", "-o", "train.eval_every=5",
                     "-o", "train.select_metric=depth/rmse", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = tracking.load_runs(f"sqlite:///{tmp_path}/mlruns.db", "tiny")
    assert list(runs["checkpoint"]) == ["best_val"]
    folder = tmp_path / "runs" / "tiny" / "shared_encoder" / "seed0"
    assert (folder / "best.pt").is_file()
    bad = run_cli("run", str(exp), "-o", "train.select_metric=depth/rmsee", cwd=tmp_path)
    assert_clean_error(bad, "train.select_metric", "Did you mean 'depth/rmse'")


def test_flops_command_reports_params_and_gflops(tmp_path):
    result = run_cli("flops", "shared_encoder", "--backbone", "tiny", "--dataset", "synthetic_nyud",
                     "--input-size", "64x96", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input_size"] == "64x96" and report["gflops"] > 0 and report["params"]["total"] > 0
    assert "multiply-add" in report["convention"]
    assert_clean_error(run_cli("flops", "demt", "--input-size", "448by576", cwd=tmp_path), "HEIGHTxWIDTH")
