"""Report figures: files, sizes, skip reasons, Pareto front and greyscale-distinct model styles."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from matplotlib import pyplot as plt
from PIL import Image

from mtbench.report.figures import (
    COLUMN_IN,
    DPI,
    FIGURES,
    PAGE_IN,
    FigureInput,
    StudyView,
    metric_label,
    model_style,
    pareto_front,
    write_figures,
)

NAN = math.nan
MODELS = ["single_task", "mtl_base", "demt", "invpt", "mtinet", "atrc"]
# Expected figure width (inches) for the full input below.
WIDTH = {"delta_m_vs_gflops": COLUMN_IN, "task_change": PAGE_IN, "val_curves": PAGE_IN,
         "optuna_history": COLUMN_IN, "optuna_importance": COLUMN_IN}


def _summary() -> pd.DataFrame:
    rows = {
        "single_task": ("single_task", "run", 120.0, 80.0, 0.0, 0.4, 2),
        "mtl_base": ("mtl_base", "run", 40.0, 30.0, -2.1, 0.8, 2),
        "demt": ("demt", "run", 60.0, 40.0, 3.2, 0.5, 2),
        "demt (depth 3)": ("demt", "run", 75.0, 45.0, 3.9, 0.3, 2),
        "InvPT (paper)": ("invpt", "published", 660.0, 400.0, 4.5, NAN, 1),
        "mtinet": ("mtinet", "run", NAN, 50.0, 1.0, 0.2, 2),
    }
    cols = ["model", "kind", "gflops", "params_m", "delta_m_mean", "delta_m_std", "n_seeds"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols)


def _changes(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for k, (label, row) in enumerate(summary.iterrows()):
        seeds = [NAN] if row["kind"] == "published" else [0.0, 1.0]
        for s, seed in enumerate(seeds):
            for t, task in enumerate(["semseg", "depth", "normals"]):
                change = 0.0 if label == "single_task" else (k - 2) * (t + 1) * 0.7 + 0.3 * s
                rows.append((label, row["model"], task, seed, change))
    return pd.DataFrame(rows, columns=["label", "model", "task", "seed", "change"])


def _curves() -> pd.DataFrame:
    rows = []
    for label, model in [("single_task", "single_task"), ("demt", "demt"), ("demt (depth 3)", "demt")]:
        for seed in (0, 1):
            for step in range(0, 1000, 50):
                x = step / 1000
                rows.append((label, model, seed, "val/semseg/mIoU", step, 30 + 10 * x + seed))
                rows.append((label, model, seed, "val/depth/rmse", step, 0.8 - 0.2 * x + 0.01 * seed))
                rows.append((label, model, seed, "val/normals/mean", step, 25 - 4 * x))
                rows.append((label, model, seed, "val/loss", step, 2 - x))
    return pd.DataFrame(rows, columns=["label", "model", "seed", "metric", "step", "value"])


def _study() -> StudyView:
    states = ["COMPLETE", "PRUNED", "COMPLETE", "FAIL", "COMPLETE", "PRUNED", "COMPLETE", "RUNNING"]
    values = [1.0, NAN, 0.5, NAN, 2.5, NAN, 2.0, NAN]
    trials = pd.DataFrame({"number": range(len(states)), "value": values, "state": states})
    return StudyView(trials=trials, importances={"lr": 0.6, "weight_decay": 0.1, "mixer_depth": 0.3},
                     objective="delta_m", direction="maximize")


@pytest.fixture
def full() -> FigureInput:
    summary = _summary()
    return FigureInput(summary=summary, changes=_changes(summary), curves=_curves(), reference="single_task",
                       model_order=MODELS, study=_study(),
                       higher_is_better={"semseg/mIoU": True, "depth/rmse": False, "normals/mean": False,
                                         "loss": False})


def test_full_input_writes_every_figure(full: FigureInput, tmp_path: Path) -> None:
    paths, skipped = write_figures(full, tmp_path)
    assert skipped == {}
    assert sorted(p.name for p in paths) == sorted(f"{n}.{ext}" for n in FIGURES for ext in ("pdf", "png"))
    for path in paths:
        assert path.parent == tmp_path and path.stat().st_size > 1000
    for name in FIGURES:
        with Image.open(tmp_path / f"{name}.png") as image:
            width, height = image.size
        assert abs(width - WIDTH[name] * DPI) <= 2, name
        assert 200 < height < 8 * DPI, name
    assert plt.get_fignums() == []  # nothing left in pyplot's registry


def test_write_is_deterministic(full: FigureInput, tmp_path: Path) -> None:
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        write_figures(full, tmp_path / run)
    for name in FIGURES:
        assert (tmp_path / "a" / f"{name}.png").read_bytes() == (tmp_path / "b" / f"{name}.png").read_bytes()
        assert (tmp_path / "a" / f"{name}.pdf").read_bytes() == (tmp_path / "b" / f"{name}.pdf").read_bytes()


def test_skip_reasons_when_data_is_missing(full: FigureInput, tmp_path: Path) -> None:
    bare = replace(full, summary=full.summary.assign(gflops=NAN), curves=full.curves.iloc[:0],
                   changes=full.changes.iloc[:0], study=None)
    paths, skipped = write_figures(bare, tmp_path)
    assert paths == [] and sorted(skipped) == sorted(FIGURES)
    assert "GFLOPs" in skipped["delta_m_vs_gflops"]
    assert "no Optuna study" in skipped["optuna_history"] and "no Optuna study" in skipped["optuna_importance"]
    assert "curves" in skipped["val_curves"] and "changes" in skipped["task_change"]
    assert list(tmp_path.iterdir()) == []


def test_empty_importances_skip_only_importance(full: FigureInput, tmp_path: Path) -> None:
    assert full.study is not None
    study = replace(full.study, importances={})
    paths, skipped = write_figures(replace(full, study=study), tmp_path)
    assert list(skipped) == ["optuna_importance"] and "importances" in skipped["optuna_importance"]
    assert (tmp_path / "optuna_history.png").exists() and not (tmp_path / "optuna_importance.png").exists()


def test_single_gflops_row_and_reference_only_changes(full: FigureInput, tmp_path: Path) -> None:
    summary = full.summary.assign(gflops=[NAN, NAN, 60.0, NAN, NAN, NAN])
    changes = full.changes[full.changes["label"] == "single_task"]
    paths, skipped = write_figures(replace(full, summary=summary, changes=changes, study=None), tmp_path)
    assert "delta_m_vs_gflops" not in skipped and "task_change" not in skipped  # reference kept when alone
    assert (tmp_path / "task_change.pdf").stat().st_size > 1000
    with Image.open(tmp_path / "task_change.png") as image:
        assert abs(image.size[0] - COLUMN_IN * DPI) <= 2  # few bars: column width


def test_pareto_front_hand_computed() -> None:
    # a: cheapest; b dominated by a (more GFLOPs, lower Δm); c, c2 tie exactly (both kept);
    # d same GFLOPs as c but lower Δm (dominated); e same Δm as c but more GFLOPs (dominated);
    # f best Δm; g has NaN (ignored).
    gflops = pd.Series({"a": 10.0, "b": 20.0, "c": 30.0, "c2": 30.0, "d": 30.0, "e": 40.0, "f": 90.0, "g": NAN})
    delta = pd.Series({"a": 1.0, "b": 0.5, "c": 3.0, "c2": 3.0, "d": 2.0, "e": 3.0, "f": 5.0, "g": 9.0})
    assert pareto_front(gflops, delta) == ["a", "c", "c2", "f"]
    assert pareto_front(pd.Series({"x": 1.0}), pd.Series({"x": -2.0})) == ["x"]
    assert pareto_front(pd.Series(dtype=float), pd.Series(dtype=float)) == []


def test_model_style_is_stable_and_greyscale_distinct() -> None:
    assert model_style("demt", MODELS) == model_style("demt", list(MODELS))
    assert model_style("unknown_net", MODELS) == model_style("unknown_net", MODELS)  # hash, not id()
    styles = [model_style(m, MODELS) for m in MODELS]
    for field in ("color", "marker", "hatch"):
        assert len({getattr(s, field) for s in styles}) == len(MODELS), field
    assert len({str(s.linestyle) for s in styles}) == len(MODELS)
    ten = [model_style(f"m{i}", [f"m{i}" for i in range(10)]) for i in range(10)]
    assert len({s.color for s in ten}) == 10 and len({s.marker for s in ten}) == 10


def test_metric_label_arrows() -> None:
    assert metric_label("val/semseg/mIoU", True) == "semseg mIoU ↑"
    assert metric_label("depth/rmse", False) == "depth rmse ↓"
    assert metric_label("delta_m", True) == "Δm (%) ↑"
    assert metric_label("val/loss", None) == "loss"


def test_history_without_complete_trials(tmp_path: Path) -> None:
    trials = pd.DataFrame({"number": [0, 1], "value": [NAN, NAN], "state": ["PRUNED", "FAIL"]})
    study = StudyView(trials=trials, importances={}, objective="semseg/mIoU", direction="minimize")
    empty = pd.DataFrame(columns=["label", "model", "task", "seed", "change"])
    data = FigureInput(summary=_summary().iloc[:0], changes=empty, curves=pd.DataFrame(), reference="single_task",
                       model_order=MODELS, higher_is_better={}, study=study)
    paths, skipped = write_figures(data, tmp_path)
    assert [p.name for p in paths] == ["optuna_history.pdf", "optuna_history.png"]
    assert set(skipped) == set(FIGURES) - {"optuna_history"}
