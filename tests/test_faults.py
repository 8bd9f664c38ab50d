"""Fault injection: the real `mtbench run` signalled, killed, starved of disk or of its tracking store, then rerun.

Each test checks what the user sees and what rerunning does: the exit code and one message (no traceback), no
MLflow run left RUNNING, no process left behind, and after rerunning the same command exactly one FINISHED run
whose test metrics equal those of an uninterrupted run of the same trial (bit-identical on CPU).

The trainers run with OMP_NUM_THREADS=1: on a small, busy machine torch's default threads make a 32x32 step ten
times slower, and one thread keeps every run's floating-point order the same.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

STEPS = 60
TINY = f"""
name: faults
dataset: {{name: synthetic_nyud, options: {{height: 32, width: 32, num_train: 16, num_val: 4, num_test: 4}}}}
model: {{name: shared_encoder, backbone: tiny}}
train: {{steps: {STEPS}, batch_size: 4, eval_batch_size: 4, eval_every: 20, checkpoint_every: 10, device: cpu,
        optimizer: {{lr: 0.002}}, schedule: {{warmup_steps: 2}}}}
seeds: [0]
"""
EXPERIMENT = "faults"
TRIAL = Path("runs") / EXPERIMENT / "shared_encoder" / "seed0"  # under the run's cwd (output_dir: runs)
END_REASON = "mtbench.end_reason"
_logs = itertools.count()


# ------------------------------------------------------------------------------------------ running the CLI
def experiment(folder: Path) -> Path:
    path = folder / "faults.yaml"
    path.write_text(TINY)
    return path


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder}/mlruns.db"


def start(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `mtbench ARGS` in `folder`; its stdout and stderr go to files that can be read while it runs."""
    exe = Path(sys.executable).with_name("mtbench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mtbench.cli"]
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_uri(folder), "COLUMNS": "200", "OMP_NUM_THREADS": "1",
                **(env or {})}
    n = next(_logs)
    out, err = folder / f".mtbench-{n}.out", folder / f".mtbench-{n}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([*cmd, *args], cwd=folder, env=full_env, stdout=stdout, stderr=stderr)
    proc.out_path, proc.err_path = out, err  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"mtbench ran over {timeout} s:\n{proc.err_path.read_text()[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.out_path.read_text(),
                                       proc.err_path.read_text())


def run(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return finish(start(folder, *args, env=env))


def text(output: str) -> str:
    """`output` with every run of whitespace as one space (rich wraps long lines)."""
    return " ".join(output.split())


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr


def assert_one_message(result: subprocess.CompletedProcess[str], code: int, first: str, *more: str) -> None:
    """Exit `code`, no traceback, and stderr says `first` exactly once (and each of `more`)."""
    assert result.returncode == code, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    stderr = text(result.stderr)
    assert stderr.count(first) == 1, result.stderr
    for needle in more:
        assert needle in stderr, result.stderr


def wait_for(condition: Callable[[], object], what: str, proc: subprocess.Popen | None = None,
             timeout: float = 180) -> None:
    """Poll `condition` until it holds; fail if `proc` ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"mtbench ended (exit {proc.returncode}) before {what}:\n{proc.err_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.02)


def logged(db: Path, prefix: str, step: int) -> bool:
    """Whether the sqlite store `db` holds a metric named `prefix...` at `step` or later (read-only peek)."""
    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            row = con.execute("SELECT 1 FROM metrics WHERE key LIKE ? AND step >= ? LIMIT 1", (f"{prefix}%", step))
            return row.fetchone() is not None
    except sqlite3.Error:  # not created yet, or locked for a moment
        return False


# ------------------------------------------------------------------------------------------ the tracking store
def runs_of(uri: str) -> list:
    """Every run of the experiment at `uri`, through MLflow's client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    return [] if found is None else list(client.search_runs([found.experiment_id]))


def finished_once(uri: str) -> object:
    """The one FINISHED run of the trial; no run is left RUNNING."""
    runs = runs_of(uri)
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 1, [(r.info.run_id, r.info.status) for r in runs]
    return finished[0]


def final_metrics(run: object) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}


def histories(uri: str, run: object) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every logged value of every metric of `run` but its wall times (`wall_time_s`, `time/*`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics if key != "wall_time_s" and not key.startswith("time/")}


@dataclass
class Baseline:
    test: dict[str, float]
    histories: dict[str, list[tuple[int, float]]]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """The trial run once without faults: the numbers every resumed run must reproduce."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert_ok(run(folder, "run", str(experiment(folder))))
    finished = finished_once(sqlite_uri(folder))
    return Baseline(final_metrics(finished), histories(sqlite_uri(folder), finished))


# ------------------------------------------------------------------------------------------ processes
def processes() -> dict[int, tuple[int, str, str, str]]:
    """pid -> (parent pid, state, command line, cwd) of every process this user may read in /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # ended meanwhile, or not ours
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry.name)] = (int(fields[1]), fields[0], cmdline, cwd)
    return found


def descendants(pid: int) -> set[int]:
    """The children of `pid`, their children, and so on (live ones)."""
    table = processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, state, _, _) in table.items() if ppid in frontier and state != "Z"} - found
        found |= frontier
    return found


def assert_nothing_left(folder: Path | None, pids: set[int] = frozenset(), timeout: float = 20) -> None:
    """No live process runs in `folder` or names it, and none of `pids` lives (orphans included)."""
    def in_folder(cmd: str, cwd: str) -> bool:
        return folder is not None and (str(folder) in cmd or cwd.startswith(str(folder)))

    def left() -> dict[int, str]:
        return {p: cmd for p, (_, state, cmd, cwd) in processes().items()
                if state != "Z" and p != os.getpid() and (p in pids or in_folder(cmd, cwd))}

    deadline = time.monotonic() + timeout
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == {}


def rerun_resumes_the_same_run(tmp_path: Path, exp: Path, uri: str, stopped: Any, baseline: Any) -> None:
    """The same command again: it resumes `stopped`'s run to the uninterrupted run's test metrics."""
    assert_ok(run(tmp_path, "run", str(exp)))
    finished = finished_once(uri)
    assert finished.info.run_id == stopped.info.run_id and len(runs_of(uri)) == 1
    assert final_metrics(finished) == baseline.test
    assert_nothing_left(tmp_path)


# ------------------------------------------------------------------------------------------ 1-2: signals
@pytest.mark.parametrize(("signum", "code", "message"), [
    (signal.SIGTERM, 143, "terminated (SIGTERM): the trial's run is marked KILLED"),
    (signal.SIGINT, 130, "interrupted: the trial's run is marked KILLED"),
], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_training_then_rerun_resumes_to_the_same_numbers(tmp_path, baseline, signum, code, message):
    exp, uri = experiment(tmp_path), sqlite_uri(tmp_path)
    proc = start(tmp_path, "run", str(exp))
    wait_for((tmp_path / TRIAL / "last.pt").exists, "a checkpoint", proc)
    children = descendants(proc.pid)
    proc.send_signal(signum)
    assert_one_message(finish(proc), code, message, "rerun the same command")
    assert not (tmp_path / TRIAL / "result.json").exists()
    [stopped] = runs_of(uri)
    assert stopped.info.status == "KILLED"
    if signum == signal.SIGTERM:  # the step it landed in finished and was checkpointed
        from mtbench.engine.checkpoint import load_checkpoint

        step = load_checkpoint(tmp_path / TRIAL / "last.pt")["step"]
        assert stopped.data.tags[END_REASON] == f"terminated (SIGTERM) after step {step}, checkpointed"
    else:
        assert stopped.data.tags[END_REASON] == "interrupted (SIGINT)"
    assert_nothing_left(tmp_path, children)

    rerun_resumes_the_same_run(tmp_path, exp, uri, stopped, baseline)


# ------------------------------------------------------------------------------------------ 3: SIGTERM in the test
def test_sigterm_during_the_final_test_leaves_no_worker_behind(tmp_path):
    # Loader workers (train.num_workers) exist during the test evaluation; 48 test images keep the odsF
    # evaluation (in-process: final_test_meters passes the edge meter no num_workers) busy for a few seconds.
    exp, uri, db = experiment(tmp_path), sqlite_uri(tmp_path), tmp_path / "mlruns.db"
    args = ("run", str(exp), "-o", "train.num_workers=2", "-o", "dataset.options.num_test=48")
    proc = start(tmp_path, *args)
    # The final validation is logged (sqlite: synchronously) just before the test evaluation starts; once it is,
    # the trainer's children are the test loader's workers.
    wait_for(lambda: logged(db, "val/", STEPS) and descendants(proc.pid), "the final test evaluation", proc)
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert_one_message(finish(proc), 143, "terminated (SIGTERM)", "rerun the same command")
    [stopped] = runs_of(uri)
    assert stopped.info.status == "KILLED" and stopped.data.tags[END_REASON] == "terminated (SIGTERM)"
    assert not final_metrics(stopped), "SIGTERM did not land in the final test evaluation"
    assert_nothing_left(tmp_path, children)

    assert_ok(run(tmp_path, *args))
    finished = finished_once(uri)
    assert finished.info.run_id == stopped.info.run_id and "test/edge/odsF" in finished.data.metrics
    assert_nothing_left(tmp_path)


def test_interrupted_evaluation_stops_the_edge_matching_workers():
    """The odsF meter's worker pool (num_workers > 0) dies with an interrupted evaluation (`Meter.close`).

    In-process: `mtbench run` builds that meter without workers (see test above), so no CLI run reaches the pool.
    """
    import torch

    from mtbench.engine.evaluate import evaluate
    from mtbench.metrics import build_meter

    meter = build_meter("edge", dataset="synthetic_nyud", variant="odsf_nms", num_workers=2)
    before = descendants(os.getpid())
    workers: set[int] = set()

    def batches():
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            edge = (torch.rand(4, 1, 32, 32, generator=generator) > 0.9).float()
            yield {"image": torch.randn(4, 3, 32, 32, generator=generator), "edge": edge}
        commands = {p: cmd for p, (_, _, cmd, _) in processes().items()}
        workers.update(p for p in descendants(os.getpid()) - before if "resource_tracker" not in commands.get(p, ""))
        raise KeyboardInterrupt

    class EdgeNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"edge": self.conv(x)}

    with pytest.raises(KeyboardInterrupt):
        evaluate(EdgeNet(), batches(), {"edge:odsf_nms": meter}, device=torch.device("cpu"))
    assert workers, "the meter started no worker process"
    assert_nothing_left(None, workers, timeout=10)


# ------------------------------------------------------------------------------------------ 4-5: kill -9
def test_kill_9_before_the_first_checkpoint_closes_the_stale_run(tmp_path):
    exp, uri, db = experiment(tmp_path), sqlite_uri(tmp_path), tmp_path / "mlruns.db"
    args = ("run", str(exp), "-o", "train.checkpoint_every=1000")  # the only checkpoint is the last step's
    proc = start(tmp_path, *args)
    wait_for(lambda: logged(db, "train/", 10), "a logged training step", proc)
    children = descendants(proc.pid)
    proc.kill()
    proc.wait()
    assert not (tmp_path / TRIAL / "last.pt").exists()
    [dead] = runs_of(uri)
    assert dead.info.status == "RUNNING"  # nobody could close it
    assert_nothing_left(tmp_path, children)

    assert_ok(run(tmp_path, *args))
    finished = finished_once(uri)
    stale = [r for r in runs_of(uri) if r.info.run_id == dead.info.run_id]
    assert [r.info.status for r in stale] == ["KILLED"] and stale[0].data.tags[END_REASON].startswith("stale")
    assert finished.info.run_id != dead.info.run_id and len(runs_of(uri)) == 2
    assert_nothing_left(tmp_path)


def test_kill_9_after_a_checkpoint_resumes_the_same_run_to_the_same_numbers(tmp_path, baseline):
    exp, uri = experiment(tmp_path), sqlite_uri(tmp_path)
    proc = start(tmp_path, "run", str(exp))
    wait_for((tmp_path / TRIAL / "last.pt").exists, "a checkpoint", proc)
    children = descendants(proc.pid)
    proc.kill()
    proc.wait()
    [dead] = runs_of(uri)
    assert dead.info.status == "RUNNING"
    assert_nothing_left(tmp_path, children)

    rerun_resumes_the_same_run(tmp_path, exp, uri, dead, baseline)


# ------------------------------------------------------------------------------------------ 6: damaged checkpoints
def test_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path, baseline):
    exp, uri = experiment(tmp_path), sqlite_uri(tmp_path)
    last, previous = tmp_path / TRIAL / "last.pt", tmp_path / TRIAL / "last.prev.pt"
    proc = start(tmp_path, "run", str(exp))
    wait_for(previous.exists, "a second checkpoint", proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc).returncode == 143
    kept = previous.read_bytes()
    for path in (last, previous):  # as a crash mid-write on a filesystem without atomic rename would leave them
        os.truncate(path, path.stat().st_size // 2)

    both = run(tmp_path, "run", str(exp))
    assert_one_message(both, 2, "no readable checkpoint to resume from", "last.pt", "last.prev.pt", "--fresh")
    assert [r.info.status for r in runs_of(uri)] == ["KILLED"]

    previous.write_bytes(kept)
    rerun = run(tmp_path, "run", str(exp))
    assert_ok(rerun)
    assert text(rerun.stderr).count("Resuming from the previous checkpoint") == 1, rerun.stderr
    assert "last.pt' cannot be read" in text(rerun.stderr) and "--fresh" not in rerun.stderr  # it goes on
    finished = finished_once(uri)
    assert len(runs_of(uri)) == 1 and final_metrics(finished) == baseline.test
    assert_nothing_left(tmp_path)


# ------------------------------------------------------------------------------------------ 7: two coordinators
def test_second_run_of_a_trial_in_training_skips_it(tmp_path, baseline):
    exp, uri = experiment(tmp_path), sqlite_uri(tmp_path)
    first = start(tmp_path, "run", str(exp))
    wait_for((tmp_path / TRIAL / "last.pt").exists, "a checkpoint", first)
    first.send_signal(signal.SIGSTOP)  # hold it mid-training (holding the trial's lock) while the second one runs
    try:
        second = run(tmp_path, "run", str(exp))
    finally:
        first.send_signal(signal.SIGCONT)
    assert_one_message(second, 2, "is in use by process", f"process {first.pid} on {socket.gethostname()}",
                       "skipping it here")
    assert "SKIPPED" in second.stdout
    assert_ok(finish(first))
    finished = finished_once(uri)
    assert len(runs_of(uri)) == 1 and final_metrics(finished) == baseline.test
    assert_nothing_left(tmp_path)


# ------------------------------------------------------------------------------------------ 8: the MLflow server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` on a sqlite store in its own folder, on one port across restarts.

    It runs in its own session and is killed as a process group: its uvicorn worker outlives a killed parent.
    """

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
        with (self.folder / "server.log").open("a") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(healthy, f"answer from mlflow server on port {self.port}", self.proc, timeout)

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory):
    """A running MLflow server (killed, process group and all, at the end)."""
    server = MlflowServer(tmp_path_factory.mktemp("server"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


# MLflow's client retries a refused connection for seconds (MLFLOW_HTTP_REQUEST_*); none here, so the trainer
# notices the outage at its next metric.
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


@pytest.mark.service
def test_server_restarted_within_the_outage_limit_loses_no_metric(tmp_path, server, baseline):
    env = {**NO_RETRIES, "MLFLOW_TRACKING_URI": server.uri}
    proc = start(tmp_path, "run", str(experiment(tmp_path)), env=env)
    wait_for((tmp_path / TRIAL / "last.pt").exists, "a checkpoint", proc)
    server.kill()
    # Metrics of the next steps (training and validation at step 20) are kept while the store is away.
    wait_for(lambda: "not answering" in proc.err_path.read_text(), "the outage warning", proc)
    proc.send_signal(signal.SIGSTOP)  # a restart takes longer than this tiny trial: hold it meanwhile
    try:
        server.start()
    finally:
        proc.send_signal(signal.SIGCONT)
    result = finish(proc)
    assert_ok(result)
    assert "the tracking store is back" in text(result.stderr)
    finished = finished_once(server.uri)
    assert len(runs_of(server.uri)) == 1
    assert histories(server.uri, finished) == baseline.histories
    assert_nothing_left(tmp_path)


@pytest.mark.service
def test_server_gone_for_good_stops_the_trial_resumably(tmp_path, server, baseline):
    outage_s = 5
    exp, env = experiment(tmp_path), {**NO_RETRIES, "MLFLOW_TRACKING_URI": server.uri}
    args = ("run", str(exp), "-o", f"tracking.outage_s={outage_s}")
    proc = start(tmp_path, *args, env=env)
    wait_for((tmp_path / TRIAL / "last.pt").exists, "a checkpoint", proc)
    server.kill()
    wait_for(lambda: "not answering" in proc.err_path.read_text(), "the outage warning", proc)
    proc.send_signal(signal.SIGSTOP)  # the outage outlasts tracking.outage_s while training has steps left
    time.sleep(outage_s + 1)
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGCONT)
    assert_one_message(finish(proc), 2, f"has not answered for over {outage_s} s (tracking.outage_s)",
                       "rerun the same command to resume it")
    assert (tmp_path / TRIAL / "last.pt").exists() and not (tmp_path / TRIAL / "result.json").exists()
    assert_nothing_left(tmp_path, children)

    server.start()
    assert_ok(run(tmp_path, *args, env=env))
    finished = finished_once(server.uri)
    assert len(runs_of(server.uri)) == 1 and final_metrics(finished) == baseline.test
    assert_nothing_left(tmp_path)


@pytest.mark.service
def test_server_gone_while_the_trial_records_its_results(tmp_path, server, baseline):
    exp, env = experiment(tmp_path), {**NO_RETRIES, "MLFLOW_TRACKING_URI": server.uri}
    proc = start(tmp_path, "run", str(exp), env=env)
    # Training and the test are done once the test metrics reach the server: what is left is step 5 (prediction
    # figures, final metrics, result.json, closing the run), which talks to the store directly.
    wait_for(lambda: logged(server.folder / "server.db", "test/", STEPS), "the test metrics on the server", proc)
    proc.send_signal(signal.SIGSTOP)
    server.kill()
    proc.send_signal(signal.SIGCONT)
    assert_one_message(finish(proc), 2, "stopped answering", "rerun the same command")
    assert (tmp_path / TRIAL / "last.pt").exists()

    server.start()
    assert_ok(run(tmp_path, "run", str(exp), env=env))
    finished = finished_once(server.uri)
    assert len(runs_of(server.uri)) == 1 and final_metrics(finished) == baseline.test
    assert_nothing_left(tmp_path)


# ------------------------------------------------------------------------------------------ 9: disk full
@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs (a checkpoint of the tiny trial is about 15 MiB); skips where mounting is not allowed."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_full_disk_fails_the_trial_with_one_message(tmp_path, small_disk):
    uri = sqlite_uri(tmp_path)
    result = run(tmp_path, "run", str(experiment(tmp_path)), "-o", f"output_dir={small_disk}")
    assert_one_message(result, 2, "no space left on the device", str(small_disk), "rerun the same command")
    folder = small_disk / EXPERIMENT / "shared_encoder" / "seed0"
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".last.pt.")] == []
    [failed] = runs_of(uri)
    assert failed.info.status == "FAILED" and "no space left" in failed.data.tags[END_REASON]
    assert_nothing_left(tmp_path)


# ------------------------------------------------------------------------------------------ 10-11: the store
def test_corrupt_sqlite_store_is_named_and_left_untouched(tmp_path):
    db = tmp_path / "mlruns.db"
    garbage = b"not a database, whatever it once was\n" * 300
    db.write_bytes(garbage)
    result = run(tmp_path, "run", str(experiment(tmp_path)))
    assert_one_message(result, 2, "cannot be read", str(db), "It is left untouched")
    assert db.read_bytes() == garbage
    assert not (tmp_path / "runs").exists()
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("command", [("run", "--dry-run"), ("status",)], ids=["run-dry-run", "status"])
def test_reading_a_server_that_is_down_fails_clearly(tmp_path, command):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run(tmp_path, command[0], str(experiment(tmp_path)), *command[1:], env={"MLFLOW_TRACKING_URI": uri})
    assert_one_message(result, 2, f"MLflow server '{uri}' did not answer", "Start it")
    assert_nothing_left(tmp_path)
