"""What MLflow's UI shows of mtbench's runs: model-training experiments with descriptions and a saved runs-table
view, dataset inputs, run descriptions, grids nested under a parent run, marked report runs; `mtbench ui` and
`mtbench report` choosing the experiment. (The pages themselves are checked in Chromium: test_ui_browser.py.)"""

from __future__ import annotations

import json
import socket

import pytest
from conftest import run_cli

from mtbench import tracking

GRID = """name: g
description: Two learning rates of the shared encoder.
dataset: {name: synthetic_nyud, options: {height: 32, width: 32, num_train: 8, num_val: 4, num_test: 4}}
model: {name: shared_encoder, backbone: tiny}
train: {steps: 2, batch_size: 4, eval_batch_size: 4, eval_every: 2, checkpoint_every: 2, device: cpu}
seeds: [0]
grid: {train.optimizer.lr: [0.001, 0.01]}
"""


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    """A finished two-point grid and a report of it, in one sqlite store."""
    folder = tmp_path_factory.mktemp("browsing")
    (folder / "g.yaml").write_text(GRID)
    ran = run_cli("run", "g.yaml", cwd=folder)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    reported = run_cli("report", "--reference", "none", cwd=folder)  # no --experiment: the store's only one
    assert reported.returncode == 0, reported.stdout + reported.stderr
    return folder, f"sqlite:///{folder}/mlruns.db"


def runs_by_kind(uri: str) -> dict[str, list]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("g")
    kinds: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id]):
        kinds.setdefault(run.data.tags.get(tracking.TAG_KIND), []).append(run)
    return kinds


def test_the_experiment_opens_in_the_training_view_with_its_description_and_columns(grid_store):
    from mlflow import MlflowClient

    _, uri = grid_store
    tags = MlflowClient(uri).get_experiment_by_name("g").tags
    assert tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    assert tags[tracking.TAG_NOTE] == "Two learning rates of the shared encoder."
    view = json.loads(tags["mlflow.sharedViewState.mtbench"])
    assert view["selectedColumns"] == ["attributes.`Dataset`", "attributes.`Description`",
                                       *(f"metrics.`test/{m}`" for m in ("semseg/mIoU", "depth/rmse",
                                                                         "normals/mean", "edge/odsF"))]


def test_trial_runs_carry_their_dataset_and_a_description_and_nest_under_the_grid(grid_store):
    _, uri = grid_store
    kinds = runs_by_kind(uri)
    [parent] = kinds["sweep"]
    trials = kinds["trial"]
    assert len(trials) == 2 and parent.info.run_name == "grid-g" and parent.info.status == "FINISHED"
    for run in trials:
        assert run.data.tags[tracking.TAG_PARENT] == parent.info.run_id
        lr = run.data.params["train.optimizer.lr"]
        assert run.data.tags[tracking.TAG_NOTE] == (
            f"shared_encoder@lr={lr}, seed 0: shared_encoder on tiny, synthetic_nyud, 2 steps. Differs from the "
            f"base config: train.optimizer.lr={lr}.")
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "val", "test"}
        assert {d.name for d in inputs.values()} == {"synthetic_nyud"}
        profiles = {split: json.loads(d.profile) for split, d in inputs.items()}
        assert profiles["test"]["samples"] == 4 and "test=4" in profiles["test"]["fingerprint"]
        assert len({d.digest for d in inputs.values()}) == 3  # one per split
    assert "changes.train.optimizer.lr" not in trials[0].data.params  # the description is not a param


def test_report_runs_are_marked_and_say_how_to_hide_them(grid_store):
    _, uri = grid_store
    [report] = runs_by_kind(uri)["report"]
    assert report.data.tags[tracking.TAG_REPORT] == "true"
    assert "not a trial" in report.data.tags[tracking.TAG_NOTE] and tracking.TRIALS_ONLY in report.data.tags[
        tracking.TAG_NOTE]
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("g").experiment_id
    assert {r.data.tags[tracking.TAG_KIND] for r in client.search_runs([exp_id], tracking.TRIALS_ONLY)} == {"trial"}


def test_the_ui_address_is_the_training_runs_page_of_the_latest_or_named_experiment(grid_store):
    _, uri = grid_store
    exp_id = runs_by_kind(uri)["trial"][0].info.experiment_id
    expected = f"http://h:1/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=mtbench"
    assert tracking.ui_address(uri, None, "http://h:1") == expected
    assert tracking.ui_address(uri, "g", "http://h:1/") == expected


@pytest.mark.parametrize(("args", "message"), [
    (("ui", "--experiment", "nosuch"), "no MLflow experiment named 'nosuch'"),
    (("ui", "--study", "g.yaml"), "has no `search:` section"),
    (("report", "--experiment", "nosuch"), "no MLflow experiment named 'nosuch'"),
])
def test_bad_ui_and_report_input_is_one_message(grid_store, args, message):
    folder, _ = grid_store
    result = run_cli(*args, cwd=folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message in " ".join(result.stderr.split()) and "'g'" in result.stderr + "'g'"


def test_ui_refuses_a_port_in_use_and_a_missing_store(grid_store, tmp_path):
    folder, _ = grid_store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("ui", "--port", str(port), cwd=folder)
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in " ".join(result.stderr.split())
    missing = run_cli("ui", cwd=tmp_path)
    assert missing.returncode == 2 and "no runs yet" in missing.stderr and "Traceback" not in missing.stderr


def test_report_without_experiment_lists_the_choices_when_there_are_several(grid_store, tmp_path):
    folder, _ = grid_store
    other = GRID.replace("name: g", "name: h").replace("grid: {train.optimizer.lr: [0.001, 0.01]}", "")
    (folder / "h.yaml").write_text(other)
    assert run_cli("run", "h.yaml", cwd=folder).returncode == 0
    result = run_cli("report", cwd=folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds 2 experiments with runs" in " ".join(result.stderr.split()) and "g, h" in result.stderr
