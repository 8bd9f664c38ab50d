"""`mtbench eval` and `mtbench.models.load_weights`: safe strict loading, and an eval that reproduces a trial's test."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch import nn

from mtbench.errors import MtbenchError
from mtbench.models import CONVERTERS, load_weights
from mtbench.models.weights import Conversion

TINY = """
name: tiny
dataset: {name: synthetic_nyud, options: {height: 32, width: 40, num_train: 32, num_val: 8, num_test: 8}}
model: {name: shared_encoder, backbone: tiny}
train: {steps: 12, batch_size: 4, eval_batch_size: 8, eval_every: 20, checkpoint_every: 5,
        optimizer: {lr: 0.002}, schedule: {warmup_steps: 2}}
seeds: [0]
"""
ALL_KINDS = ("trial", "study", "report", "eval")


@dataclass
class Opaque:
    """Saved with torch.save, this needs arbitrary unpickling: load_weights must refuse it."""

    value: int = 1


def small_model(classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, classes, 1))


def saved(tmp_path: Path, obj: object, name: str = "w.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def trial_config(model: str = "shared_encoder", dataset: str = "synthetic_nyud", tasks: list[str] | None = None,
                 ) -> str:
    """The "config" entry of an mtbench trial checkpoint (JSON of the resolved TrialConfig), reduced to what counts."""
    return json.dumps({"model": {"name": model, "backbone": "tiny"}, "dataset": {"name": dataset, "tasks": tasks}})


# --- load_weights on state dicts written by the test ---

def test_plain_state_dict_loads_strictly_and_reports_it(tmp_path):
    source, target = small_model(), small_model()
    path = saved(tmp_path, source.state_dict())
    report = load_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert report.source == "state dict" and report.loaded == len(source.state_dict())
    assert report.mapped == {} and report.dropped == {} and report.converter is None and report.trained_as is None
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"loaded {report.loaded} tensors strictly; 0 renamed, 0 dropped" in report.summary()
    assert json.loads(json.dumps(report.as_dict()))["path"] == str(path)


def test_trial_checkpoint_gives_its_step_and_what_it_was_trained_as(tmp_path):
    source, target = small_model(), small_model()
    path = saved(tmp_path, {"model": source.state_dict(), "step": 7, "optimizer": {}, "config": trial_config()})
    report = load_weights(target, path, expect={"model": "shared_encoder", "dataset": "synthetic_nyud",
                                                "tasks": ["edge", "normals", "depth", "semseg"]})
    assert report.source == "mtbench trial checkpoint" and report.step == 7
    # tasks: null in the config means every task of the dataset; task lists compare as sets.
    assert report.trained_as == {"model": "shared_encoder", "backbone": "tiny", "dataset": "synthetic_nyud",
                                 "tasks": ["semseg", "depth", "normals", "edge"]}
    assert "at step 7" in report.summary() and "trained as model shared_encoder" in report.summary()


def test_wrapper_prefixes_are_stripped_and_counted(tmp_path):
    source, target = small_model(), small_model()
    items = enumerate(source.state_dict().items())
    state = {("_orig_mod.module." if i % 2 else "module.") + k: v for i, (k, v) in items}
    report = load_weights(target, saved(tmp_path, {"state_dict": state}))
    assert report.source == "checkpoint['state_dict']"
    n = len(state)
    assert report.stripped_prefixes == {"module.": n, "_orig_mod.": n // 2}
    assert torch.equal(target[2].weight, source[2].weight)


def test_keys_of_another_architecture_are_named_and_nothing_is_loaded(tmp_path):
    target = small_model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Identity(), nn.Identity(), nn.Conv2d(4, 3, 1))
    with pytest.raises(MtbenchError, match=r"keys of another architecture, 7 missing \(e\.g\. 1\.bias, .*; "
                                           r"2 unexpected \(e\.g\. 3\.bias, 3\.weight\)"):
        load_weights(target, saved(tmp_path, other.state_dict()))
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())


def test_another_number_of_classes_names_the_key_and_both_shapes(tmp_path):
    with pytest.raises(MtbenchError, match=r"2 tensor\(s\) have other shapes \(2\.weight: checkpoint \(5, 4, 1, 1\), "
                                           r"model \(3, 4, 1, 1\); 2\.bias: checkpoint \(5,\), model \(3,\)\), "
                                           r"e\.g\. another number of classes"):
        load_weights(small_model(3), saved(tmp_path, small_model(5).state_dict()))


@pytest.mark.parametrize(("config", "expect", "named"), [
    (trial_config(model="demt"), {"model": "shared_encoder"}, "model: checkpoint 'demt', experiment 'shared_encoder'"),
    (trial_config(dataset="synthetic_pascal"), {"dataset": "synthetic_nyud"}, "dataset: checkpoint 'synthetic_pascal'"),
    (trial_config(tasks=["semseg", "depth"]), {"tasks": ["semseg", "depth", "edge"]}, "tasks: checkpoint"),
])
def test_checkpoint_of_another_experiment_is_refused_by_its_config(tmp_path, config, expect, named):
    source = small_model()
    path = saved(tmp_path, {"model": source.state_dict(), "step": 1, "config": config})
    with pytest.raises(MtbenchError, match="trained for another setting") as err:
        load_weights(small_model(), path, expect=expect)
    assert named in str(err.value)


@pytest.mark.parametrize(("content", "message"), [
    ([torch.ones(2)], "holds a list, not a state dict"),
    ({"step": 3, "lr": 0.1}, "2 of its 2 entries are not tensors ('step' (int), 'lr' (float))"),
    ({}, "it is empty"),
    (Opaque(), "refused: reading it needs arbitrary Python objects unpickled"),
])
def test_files_that_are_not_state_dicts_are_refused(tmp_path, content, message):
    target = small_model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(MtbenchError) as err:
        load_weights(target, saved(tmp_path, content))
    assert message in str(err.value)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())


def test_unsafe_pickle_names_the_global_and_how_to_fix(tmp_path):
    with pytest.raises(MtbenchError, match=r"Unsupported global: GLOBAL .*Opaque.*weights_only=True.*"
                                           r"torch\.save\(model\.state_dict\(\)"):
        load_weights(small_model(), saved(tmp_path, Opaque()))


def test_missing_folder_and_text_files_are_clear_errors(tmp_path):
    with pytest.raises(MtbenchError, match="does not exist"):
        load_weights(small_model(), tmp_path / "nope.pt")
    with pytest.raises(MtbenchError, match="is a folder"):
        load_weights(small_model(), tmp_path)
    for text in ("these are not weights\n", "\nname: tiny\n"):  # torch fails differently on each
        (tmp_path / "notes.txt").write_text(text)
        with pytest.raises(MtbenchError, match="cannot be read as a PyTorch checkpoint"):
            load_weights(small_model(), tmp_path / "notes.txt")


class RenamingConverter:
    """A stand-in for a released-checkpoint converter: keys `net.<k>` -> `<k>`, drops `aux.*`."""

    def matches(self, state, model):
        return all(k.startswith(("net.", "aux.")) for k in state)

    def convert(self, state, model):
        kept = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        return Conversion(kept, mapped={f"net.{k}": k for k in kept},
                          dropped={k: "auxiliary head, not in mtbench" for k in state if k.startswith("aux.")})


def test_a_registered_converter_slots_in_and_every_key_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(CONVERTERS._entries, "renaming", RenamingConverter())
    source, target = small_model(), small_model()
    state = {**{f"net.{k}": v for k, v in source.state_dict().items()}, "aux.weight": torch.ones(1)}
    report = load_weights(target, saved(tmp_path, state))
    assert report.converter == "renaming" and report.loaded == len(source.state_dict())
    assert report.mapped["net.0.weight"] == "0.weight" and report.dropped == {"aux.weight": "auxiliary head, not in "
                                                                                          "mtbench"}
    assert "renamed net.0.weight -> 0.weight" in report.summary() and "dropped aux.weight" in report.summary()
    assert torch.equal(target[0].weight, source[0].weight)
    with pytest.raises(MtbenchError, match="unknown weights converter 'nope'"):
        load_weights(target, saved(tmp_path, state), converter="nope")


# --- choosing the trial and the split ---

def test_pick_trial_needs_a_choice_among_several(write_yaml):
    from mtbench.config import expand_trials, load_experiment
    from mtbench.engine.eval import check_split, pick_trial

    exp = load_experiment(write_yaml("t.yaml", TINY + "variants: [{name: a}, {name: b}]\n"), ["seeds=[0, 1]"])
    trials = expand_trials(exp)
    assert (pick_trial(trials, variant="b", seed=1).variant, pick_trial(trials, variant="b", seed=1).seed) == ("b", 1)
    with pytest.raises(MtbenchError, match=r"4 trials that match: a seed 0, a seed 1, b seed 0, b seed 1\. Name one"):
        pick_trial(trials)
    with pytest.raises(MtbenchError, match="has no variant 'bb'. Did you mean 'b'"):
        pick_trial(trials, variant="bb", seed=0)
    with pytest.raises(MtbenchError, match="no trial with seed 5 in variant 'a'"):
        pick_trial(trials, variant="a", seed=5)
    one = expand_trials(load_experiment(write_yaml("one.yaml", TINY)))
    assert pick_trial(one) is one[0]
    with pytest.raises(MtbenchError, match="--split 'train': eval scores one of test, val"):
        check_split("train")


# --- the real CLI: train a tiny trial, evaluate its checkpoint ---

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder holding tiny.yaml, the store and the checkpoint of one trained tiny trial."""
    folder = tmp_path_factory.mktemp("eval")
    (folder / "tiny.yaml").write_text(TINY)
    result = run_cli("run", "tiny.yaml", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def runs_in(folder: Path, kinds: tuple[str, ...] = ALL_KINDS):
    from mtbench import tracking

    return tracking.load_runs(f"sqlite:///{folder}/mlruns.db", "tiny", kinds=kinds)


@pytest.mark.slow
def test_eval_of_a_trials_checkpoint_reproduces_its_test_metrics(trained):
    from mtbench import tracking

    last = trained / "runs" / "tiny" / "shared_encoder" / "seed0" / "last.pt"
    result = run_cli("eval", "tiny.yaml", "--weights", str(last), cwd=trained)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mtbench trial checkpoint at step 12" in result.stdout and "semseg/mIoU" in result.stdout
    trial, evals = runs_in(trained, ("trial",)), runs_in(trained, ("eval",))
    assert len(trial) == 1 and len(evals) == 1 and evals["status"].iloc[0] == "FINISHED"
    metrics = [c for c in trial.columns if c not in tracking.RUN_COLUMNS and trial[c].notna().any()]
    assert {"semseg/mIoU", "depth/rmse", "normals/mean", "edge/odsF"} <= set(metrics)
    assert {c: evals[c].iloc[0] for c in metrics} == {c: trial[c].iloc[0] for c in metrics}  # exactly, on CPU
    row = evals.iloc[0]
    assert row["kind"] == "eval" and row["tags"][tracking.TAG_EVAL] == "true" and row["gflops"] > 0
    assert row["tags"][tracking.TAG_EVAL_SHA256] == hashlib.sha256(last.read_bytes()).hexdigest()
    assert row["tags"][tracking.TAG_EVAL_WEIGHTS] == str(last.resolve())
    assert row["tags"][tracking.TAG_METRIC_VARIANTS] == trial.iloc[0]["tags"][tracking.TAG_METRIC_VARIANTS]
    client = tracking._client(f"sqlite:///{trained}/mlruns.db")
    artifacts = {f.path for f in client.list_artifacts(row["run_id"])}
    artifacts |= {f.path for f in client.list_artifacts(row["run_id"], "predictions")}
    assert {"weights_report.json", "weights_report.txt", "final_metrics.json", "config.yaml",
            "predictions/semseg.png", "predictions/edge.png"} <= artifacts
    # The eval run never stands in for the trial: reports and `mtbench run` still see the trial's run.
    assert list(runs_in(trained, ("trial", "study"))["run_id"]) == list(trial["run_id"])
    record = tracking.trial_records(f"sqlite:///{trained}/mlruns.db", "tiny")
    assert [r.run_id for r in record.values()] == list(trial["run_id"])
    # train.num_workers spreads the boundary matching (and the loading) over processes: the same numbers.
    result = run_cli("eval", "tiny.yaml", "--weights", str(last), "-o", "train.num_workers=2", cwd=trained)
    assert result.returncode == 0, result.stdout + result.stderr
    evals = runs_in(trained, ("eval",))
    assert len(evals) == 2
    assert all({c: evals[c].iloc[i] for c in metrics} == {c: trial[c].iloc[0] for c in metrics} for i in (0, 1))


def another_models_state_dict(folder: Path) -> Path:
    from mtbench.models import build_model

    model = build_model("single_task", tasks=("semseg", "depth", "normals", "edge"), dataset="synthetic_nyud",
                        backbone="tiny", img_size=(32, 40))
    return saved(folder, model.state_dict(), "single_task.pt")


def another_class_count(folder: Path) -> Path:
    from mtbench.models import build_model

    model = build_model("shared_encoder", tasks=("semseg", "depth", "normals", "edge"), dataset="nyud",
                        backbone="tiny", img_size=(32, 40))
    return saved(folder, model.state_dict(), "nyud40.pt")


LAST = "runs/tiny/shared_encoder/seed0/last.pt"
BAD_INPUTS = {
    "missing file": (lambda f: ["--weights", "nope.pt"], ["'nope.pt' does not exist"]),
    "text file": (lambda f: ["--weights", str(f / "tiny.yaml")], ["cannot be read as a PyTorch checkpoint"]),
    "arbitrary pickle": (lambda f: ["--weights", str(saved(f, Opaque(), "opaque.pt"))],
                         ["refused", "Unsupported global", "Opaque"]),
    "another model's checkpoint": (lambda f: ["--weights", LAST, "-o", "model.name=single_task"],
                                   ["trained for another setting", "model: checkpoint 'shared_encoder', "
                                                                   "experiment 'single_task'"]),
    "another model's state dict": (lambda f: ["--weights", str(another_models_state_dict(f))],
                                   ["keys of another architecture", "missing (e.g. backbone.", "unexpected (e.g. "
                                                                                              "networks."]),
    "another class count": (lambda f: ["--weights", str(another_class_count(f))],
                            ["heads.semseg.", "checkpoint (40,", "model (6,", "another number of classes"]),
    "unknown split": (lambda f: ["--weights", LAST, "--split", "train"], ["--split 'train'"]),
    "unknown variant": (lambda f: ["--weights", LAST, "--variant", "demt"], ["no variant 'demt'",
                                                                            "shared_encoder seed 0"]),
    "unknown seed": (lambda f: ["--weights", LAST, "--seed", "3"], ["no trial with seed 3"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_message_and_logs_nothing(trained, case):
    args, needles = BAD_INPUTS[case]
    before = set(runs_in(trained)["run_id"])
    result = run_cli("eval", "tiny.yaml", *args(trained), cwd=trained)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    message = " ".join(result.stderr.split())  # the console wraps long lines
    for needle in needles:
        assert needle in message, result.stderr
    assert set(runs_in(trained)["run_id"]) == before
