"""Through the real CLI: write each real layout, check it, train a smoke-sized trial on it, bad trees."""

from __future__ import annotations

import shutil

import pytest
from conftest import run_cli

TRIAL = """name: {name}
dataset: {{name: {dataset}, root: tree, options: {{crop_size: [32, 48], pad_to: [64, 64]}}}}
model: {{name: shared_encoder, backbone: tiny}}
train: {{steps: 2, batch_size: 2, eval_batch_size: 4, eval_every: 2, checkpoint_every: 2}}
seeds: [0]
"""


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "dataset", "variant"), [
    ("nyud_mt", "nyud", "NYUD_MT"), ("nyudv2", "nyud", "NYUDv2"), ("pascal_context", "pascal_context", "PASCAL_MT")])
def test_written_tree_checks_and_trains(tmp_path, layout, dataset, variant):
    made = run_cli("data", "synth", "--layout", layout, "--out", "tree", "-n", "8", "--height", "48", "--width", "64",
                   cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    checked = run_cli("data", "check", dataset, "--root", "tree", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert f"variant: {variant}" in checked.stdout and "fingerprint:" in checked.stdout and "ok" in checked.stdout
    (tmp_path / "e.yaml").write_text(TRIAL.format(name=f"real_{layout}", dataset=dataset))
    trained = run_cli("run", "e.yaml", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "FINISHED" in trained.stdout


def test_check_of_a_broken_tree_exits_2_naming_what_is_missing(tmp_path):
    assert run_cli("data", "synth", "--layout", "pascal_context", "--out", "tree", "-n", "6", "--height", "32",
                   "--width", "32", cwd=tmp_path).returncode == 0
    shutil.rmtree(tmp_path / "tree" / "normals_distill")
    checked = run_cli("data", "check", "pascal_context", "--root", "tree", cwd=tmp_path)
    assert checked.returncode == 2 and "Traceback" not in checked.stderr
    assert "ids have no normals file" in checked.stderr and "lacks the distilled normals" in checked.stderr
    wrong = run_cli("data", "check", "nyud", "--root", "tree", cwd=tmp_path)
    assert wrong.returncode == 2 and "PASCAL-Context tree" in wrong.stderr and "Traceback" not in wrong.stderr
    # A trial on the broken tree stops before training, naming the file and the id.
    (tmp_path / "e.yaml").write_text(TRIAL.format(name="broken", dataset="pascal_context"))
    run = run_cli("run", "e.yaml", cwd=tmp_path)
    assert run.returncode == 2 and "normals_distill" in run.stderr and "skip_missing" in run.stderr
    assert "Traceback" not in run.stderr
