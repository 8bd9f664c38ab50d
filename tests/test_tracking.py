"""mtbench.tracking against a real sqlite MLflow store (one per module: creating one takes seconds)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from mtbench import tracking
from mtbench.errors import MtbenchError
from mtbench.tracking import Tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Return (uri, folder) of a sqlite store shared by this module's tests."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlruns.db"
    Tracker.start(uri, "warmup", "init", {}).end()  # pays the schema migration once
    return uri, folder


def _tags(variant: str, seed: int) -> dict[str, str]:
    return {tracking.TAG_VARIANT: variant, tracking.TAG_SEED: str(seed), tracking.TAG_MODEL: "demt",
            tracking.TAG_DATASET: "synthetic_nyud", tracking.TAG_CHECKPOINT: "final"}


def test_resolve_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlruns.db"
    assert tracking.resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path}/sub/x.db"
    assert tracking.resolve_tracking_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert tracking.resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"


def test_check_tracking_uri_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MtbenchError, match="does not exist. Create it"):
        tracking.check_tracking_uri(f"sqlite:///{tmp_path}/nope/mlruns.db")
    tracking.check_tracking_uri(f"sqlite:///{tmp_path}/mlruns.db")


def test_check_tracking_uri_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = (tmp_path / "new" / "mlruns").as_uri()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(MtbenchError, match="MLflow refuses the file store .*MLFLOW_ALLOW_FILE_STORE=true"):
        tracking.check_tracking_uri(uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking.check_tracking_uri(uri)  # MLflow creates a file store's missing folders
    (tmp_path / "blocker").write_text("")
    with pytest.raises(MtbenchError, match="blocker' for the file store is a file, not a folder"):
        tracking.check_tracking_uri((tmp_path / "blocker" / "mlruns").as_uri())


def test_check_tracking_uri_unreachable_server_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(MtbenchError, match=r"MLflow server 'http://127.0.0.1:9' did not answer"):
        tracking.check_tracking_uri("http://127.0.0.1:9")
    assert time.monotonic() - start < 5


def test_check_tracking_uri_unknown_scheme() -> None:
    with pytest.raises(MtbenchError, match="unsupported tracking URI 'ftp://x'"):
        tracking.check_tracking_uri("ftp://x")


def test_flatten_config() -> None:
    cfg = {"model": {"name": "demt", "options": {"depth": 2}, "tasks": ["semseg", "depth"]}, "seed": 0,
           "extra": {}}
    assert tracking.flatten_config(cfg) == {"model.name": "demt", "model.options.depth": 2,
                                            "model.tasks": '["semseg", "depth"]', "seed": 0, "extra": "{}"}


def test_tracker_logs_run_and_load_runs_reads_it(store: tuple[str, Path]) -> None:
    uri, folder = store
    tracker = Tracker.start(uri, "exp_log", "demt-seed3", _tags("demt", 3))
    tracker.log_params({"model.name": "demt", "train.lr": 1e-3, "path": Path("a/b")})
    tracker.log_metrics({"val/semseg/mIoU": 10.0, "train/loss.total-x y_z": 1.5}, step=1)
    tracker.log_metrics({"val/semseg/mIoU": 12.0}, step=2)
    tracker.log_metrics({"test/semseg/mIoU": 42.5, "test/depth/rmse": 0.61}, step=2)
    tracker.set_tags({"mtbench.extra": 7})
    tracker.end()

    runs = tracking.load_runs(uri, "exp_log")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert (row["run_id"], row["experiment"], row["status"], row["variant"], row["seed"]) == (
        tracker.run_id, "exp_log", "FINISHED", "demt", 3)
    assert (row["model"], row["dataset"], row["checkpoint"]) == ("demt", "synthetic_nyud", "final")
    assert (row["semseg/mIoU"], row["depth/rmse"]) == (42.5, 0.61)
    assert "val/semseg/mIoU" not in runs.columns and "train/loss.total-x y_z" not in runs.columns
    assert "exp_log" in tracking.list_experiments(uri)


def test_artifacts_live_beside_the_database(store: tuple[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uri, folder = store
    monkeypatch.chdir(tmp_path)  # MLflow's default would put them under ./mlruns of the cwd
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with Tracker.start(uri, "exp artifacts/1", "a", {}) as tracker:
        tracker.log_text("text", "logs/out.txt")
        tracker.log_dict({"a": 1}, "config.yaml")
        tracker.log_dict({"a": 1}, "metrics.json")
        tracker.log_artifact(note, "notes")
        fig, _ = plt.subplots()
        tracker.log_figure(fig, "predictions/semseg.png")
        plt.close(fig)
    root = folder / "mlartifacts" / "exp_artifacts_1" / tracker.run_id / "artifacts"
    assert (root / "logs/out.txt").read_text() == "text"
    assert (root / "config.yaml").read_text().strip() == "a: 1"
    assert json.loads((root / "metrics.json").read_text()) == {"a": 1}
    assert (root / "notes/note.txt").read_text() == "hello"
    assert (root / "predictions/semseg.png").stat().st_size > 0
    assert not (tmp_path / "mlruns").exists()


def test_log_params_truncates_batches_and_skips_equal_values(store: tuple[str, Path]) -> None:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    uri, _ = store
    tracker = Tracker.start(uri, "exp_params", "p", {})
    params: dict[str, object] = {f"p{i:03d}": i for i in range(250)}
    params["long"] = "x" * (MAX_PARAM_VAL_LENGTH + 10)
    tracker.log_params(params)
    tracker.log_params(params)  # same values again: nothing to do, no error
    logged = tracker._client.get_run(tracker.run_id).data.params
    assert len(logged) == 251 and logged["p249"] == "249"
    assert len(logged["long"]) == MAX_PARAM_VAL_LENGTH and logged["long"].endswith("...[truncated]")
    with pytest.raises(MtbenchError, match=r"different values for 1 param\(s\) \(p001: '1' -> '2'\)"):
        tracker.log_params({"p001": 2, "new": 1})
    tracker.end()


def test_resume_reopens_the_same_run(store: tuple[str, Path]) -> None:
    uri, _ = store
    first = Tracker.start(uri, "exp_resume", "demt-seed0", _tags("demt", 0))
    first.log_params({"train.steps": 10})
    first.log_metrics({"val/semseg/mIoU": 1.0}, step=5)
    first.end("KILLED")

    again = Tracker.start(uri, "exp_resume", "demt-seed0", _tags("demt", 0), run_id=first.run_id)
    assert again.run_id == first.run_id
    assert tracking.load_runs(uri, "exp_resume")["status"].tolist() == ["RUNNING"]
    again.log_params({"train.steps": 10})
    again.log_metrics({"val/semseg/mIoU": 2.0, "test/semseg/mIoU": 3.0}, step=10)
    again.end("FINISHED")
    runs = tracking.load_runs(uri, "exp_resume")
    assert runs[["status", "semseg/mIoU"]].values.tolist() == [["FINISHED", 3.0]]


def test_resume_unknown_run_id(store: tuple[str, Path]) -> None:
    uri, _ = store
    with pytest.raises(MtbenchError, match="cannot resume MLflow run 'abc123'"):
        Tracker.start(uri, "exp_resume", "x", {}, run_id="abc123")


def test_context_manager_marks_failed_and_end_checks_status(store: tuple[str, Path]) -> None:
    uri, _ = store
    with pytest.raises(RuntimeError), Tracker.start(uri, "exp_fail", "f", {}) as tracker:
        raise RuntimeError("boom")
    assert tracking.load_runs(uri, "exp_fail")["status"].tolist() == ["FAILED"]
    with pytest.raises(ValueError, match="status must be one of"):
        tracker.end("DONE")


def test_load_runs_unknown_experiment_lists_existing(store: tuple[str, Path]) -> None:
    uri, _ = store
    with pytest.raises(MtbenchError, match=r"no MLflow experiment named 'nope' .*existing experiments: .*warmup"):
        tracking.load_runs(uri, "nope")


def test_missing_store_is_reported_not_created(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    for call in (lambda: tracking.load_runs(uri), lambda: tracking.list_experiments(uri),
                 lambda: tracking.launch_ui(uri)):
        with pytest.raises(MtbenchError, match="no runs yet at .*run `mtbench run"):
            call()
    assert not (tmp_path / "mlruns.db").exists()


def _log_same_datasets(uri: str, rounds: int, barrier: Any, failures: Any) -> None:
    """Worker of the race test: each round, start a run and log the round's datasets at the barrier."""
    import json as json_

    from mlflow.entities import Dataset, DatasetInput, InputTag

    for r in range(rounds):
        dataset = Dataset(name="synthetic_nyud", digest=f"race{r:04d}", source_type="code",
                          source=json_.dumps({"uri": "generated"}), profile="{}")
        inputs = [DatasetInput(dataset, tags=[InputTag(key="mlflow.data.context", value="train")])]
        tracker = Tracker.start(uri, "exp_race", f"r{r}", {})
        barrier.wait()
        try:
            tracker.log_inputs(inputs)
        except Exception as exc:  # noqa: BLE001 (reported to the test)
            failures.put(f"round {r}: {type(exc).__name__}: {exc}"[:300])
        tracker.end()


def test_two_trials_logging_the_same_new_dataset_at_once_both_succeed(tmp_path: Path) -> None:
    """Two local workers start trials together on a new store: both insert the experiment's dataset, and the
    second insert hits the unique key; `log_inputs` retries and links the stored one."""
    import multiprocessing

    import mlflow

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    Tracker.start(uri, "exp_race", "init", {}).end()
    ctx = multiprocessing.get_context("spawn")
    barrier, failures, rounds = ctx.Barrier(2), ctx.Queue(), 12
    workers = [ctx.Process(target=_log_same_datasets, args=(uri, rounds, barrier, failures)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert not errors and all(w.exitcode == 0 for w in workers), errors
    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("exp_race")
                                                 .experiment_id], max_results=100)
    linked = [r for r in runs if r.inputs.dataset_inputs]
    assert len(linked) == 2 * rounds
    assert len({r.inputs.dataset_inputs[0].dataset.digest for r in linked}) == rounds


def test_log_inputs_gives_up_on_a_lasting_store_error(store: tuple[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    uri, _ = store
    tracker = Tracker.start(uri, "exp_inputs", "x", {})
    calls = []

    def failing(run_id: str, datasets: Any) -> None:
        calls.append(run_id)
        raise MlflowException("database is locked")

    monkeypatch.setattr(tracker._client, "log_inputs", failing)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    with pytest.raises(MlflowException, match="locked"):
        tracker.log_inputs([])
    assert len(calls) == 3
    tracker.end()
