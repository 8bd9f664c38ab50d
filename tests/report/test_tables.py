"""build_report end to end on a real sqlite MLflow store (runs logged through the library), checked
against hand-computed aggregates, Δm, bold/underline choices, published rows and refusals."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from mtbench import tracking
from mtbench.errors import MtbenchError
from mtbench.metrics import delta_m
from mtbench.report import build_report
from mtbench.report.collect import TASK_ORDER
from mtbench.report.published import published_row
from mtbench.report.tables import latex_escape, ranks
from mtbench.tasks import TASK_NAMES
from mtbench.tracking import Tracker

SQRT2 = math.sqrt(2)
# Test metrics per (variant, seed). single_task is the Δm reference: means mIoU 41, rmse 0.62, normals 21.
NYUD = {
    ("single_task", 0): {"semseg/mIoU": 40.0, "depth/rmse": 0.60, "normals/mean": 20.0},
    ("single_task", 1): {"semseg/mIoU": 42.0, "depth/rmse": 0.64, "normals/mean": 22.0},
    ("demt", 0): {"semseg/mIoU": 44.0, "depth/rmse": 0.58, "normals/mean": 20.0, "edge/odsF": 70.0},
    ("demt", 1): {"semseg/mIoU": 46.0, "depth/rmse": 0.60, "normals/mean": 21.0, "edge/odsF": 72.0},
    ("demt", 2): {"semseg/mIoU": 45.0, "depth/rmse": 0.59, "normals/mean": 19.0, "edge/odsF": 71.0},
    ("no_deformable", 0): {"semseg/mIoU": 41.0, "depth/rmse": 0.62, "normals/mean": 21.0, "depth/abs_rel": 0.2},
}
# Δm (%) of each seed run by hand: (100/3) [ (mIoU-41)/41 - (rmse-0.62)/0.62 - (normals-21)/21 ].
DELTA = {
    ("single_task", 0): 100 / 3 * (-1 / 41 + 0.02 / 0.62 + 1 / 21),
    ("single_task", 1): 100 / 3 * (1 / 41 - 0.02 / 0.62 - 1 / 21),
    ("demt", 0): 100 / 3 * (3 / 41 + 0.04 / 0.62 + 1 / 21),
    ("demt", 1): 100 / 3 * (5 / 41 + 0.02 / 0.62 + 0 / 21),
    ("demt", 2): 100 / 3 * (4 / 41 + 0.03 / 0.62 + 2 / 21),
    ("no_deformable", 0): 0.0,
}
MODEL = {"single_task": "single_task", "demt": "demt", "no_deformable": "demt"}
OPTIONS = {"no_deformable": {"model.options.deformable": "False"}}
COST = {"single_task": (110.0, 400.0), "demt": (32.07, 121.26), "no_deformable": (31.9, 118.0)}


def log_run(uri: str, experiment: str, variant: str, seed: int, metrics: dict[str, float], *,
            status: str = "FINISHED", model: str | None = None, dataset_variant: str = "NYUDv2",
            params: dict[str, str] | None = None, cost: tuple[float, float] | None = None) -> str:
    """Log one trial run the way the engine does: tags, params, val history and test metrics."""
    tags = {tracking.TAG_EXPERIMENT: experiment, tracking.TAG_VARIANT: variant, tracking.TAG_SEED: str(seed),
            tracking.TAG_MODEL: model or variant, tracking.TAG_DATASET: "nyud", tracking.TAG_CHECKPOINT: "final",
            tracking.TAG_DATASET_VARIANT: dataset_variant, tracking.TAG_PROTOCOL: "atrc",
            tracking.TAG_METRIC_VARIANTS: json.dumps({t: "reference" for t in ("semseg", "depth", "normals")})}
    tracker = Tracker.start(uri, experiment, f"{variant}-seed{seed}", tags)
    params_m, gflops = cost or (math.nan, math.nan)
    tracker.log_params({"model.name": model or variant, "model.backbone": "swin_tiny", "seed": seed,
                        "variant": variant, "train.steps": 2, **(params or {}),
                        **({"cost/params_M": params_m, "cost/gflops_fvcore": gflops, "cost/input_size": "448x576"}
                           if cost else {})})
    for step, scale in ((1, 0.5), (2, 1.0)):
        tracker.log_metrics({f"val/{k}": v * scale for k, v in metrics.items()}, step=step)
    tracker.log_metrics({f"test/{k}": v for k, v in metrics.items()}, step=2)
    tracker.end(status)
    return tracker.run_id


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store with the experiments the tests report on."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlruns.db"
    for (variant, seed), metrics in NYUD.items():
        log_run(uri, "nyud_abl", variant, seed, metrics, model=MODEL[variant], params=OPTIONS.get(variant),
                cost=COST[variant])
    log_run(uri, "nyud_abl", "demt", 3, {"semseg/mIoU": 99.0}, status="FAILED", model="demt")  # must not count
    log_run(uri, "no_ref", "a_b", 0, {"semseg/mIoU": 0.5})
    log_run(uri, "no_ref", "a_b", 1, {"semseg/mIoU": 0.7})
    # A single-task baseline run once per task: the runs of one seed merge into one row.
    log_run(uri, "split_st", "single_task", 0, {"semseg/mIoU": 40.0})
    log_run(uri, "split_st", "single_task", 0, {"depth/rmse": 0.5})
    log_run(uri, "split_st", "mtl", 0, {"semseg/mIoU": 44.0, "depth/rmse": 0.45})
    log_run(uri, "all_failed", "x", 0, {"semseg/mIoU": 1.0}, status="FAILED")
    # Saliency computed with two definitions, and runs on two NYUD archives: both must be refused.
    log_run(uri, "mixed_sal", "single_task", 0, {"semseg/mIoU": 40.0, "sal/maxF": 80.0})
    log_run(uri, "mixed_sal", "invpt", 0, {"semseg/mIoU": 41.0, "sal/maxF-invpt": 78.0})
    log_run(uri, "mixed_data", "single_task", 0, {"semseg/mIoU": 40.0}, dataset_variant="NYUD_MT")
    log_run(uri, "mixed_data", "demt", 0, {"semseg/mIoU": 41.0}, dataset_variant="NYUDv2")
    return uri


@pytest.fixture(scope="module")
def nyud(uri: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report folder of `nyud_abl`."""
    out = tmp_path_factory.mktemp("reports")
    report = build_report(uri, ["nyud_abl"], out_dir=out)
    assert report.folder == out / "nyud_abl"
    return report.folder


def test_task_order_covers_every_task() -> None:
    assert sorted(TASK_ORDER) == sorted(TASK_NAMES)


def test_every_file_is_written_and_nothing_else(nyud: Path) -> None:
    names = sorted(p.name for p in nyud.iterdir())
    figures = [f"{f}.{ext}" for f in ("delta_m_vs_gflops", "task_change", "val_curves") for ext in ("pdf", "png")]
    assert names == sorted(["results.tex", "results.md", "results.csv", "runs.csv", "ablation.tex", "ablation.csv",
                            "report_standalone.tex", *figures])
    for path in nyud.iterdir():
        assert path.stat().st_size > 0, path
    assert not [p for p in nyud.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_csv_has_hand_computed_values(nyud: Path) -> None:
    df = pd.read_csv(nyud / "results.csv").set_index("label")
    assert df.index.tolist() == ["single_task", "demt", "no_deformable"]
    assert df["n_seeds"].tolist() == [2, 3, 1]
    assert df.loc["single_task", "semseg/mIoU_mean"] == pytest.approx(41.0)
    assert df.loc["single_task", "semseg/mIoU_std"] == pytest.approx(SQRT2)
    assert df.loc["single_task", "depth/rmse_std"] == pytest.approx(0.02 * SQRT2)
    assert df.loc["demt", "semseg/mIoU_mean"] == pytest.approx(45.0)
    assert df.loc["demt", "depth/rmse_mean"] == pytest.approx(0.59)
    assert df.loc["demt", "depth/rmse_std"] == pytest.approx(0.01)
    assert df.loc["demt", "edge/odsF_mean"] == pytest.approx(71.0)
    assert math.isnan(df.loc["no_deformable", "semseg/mIoU_std"])
    assert df.loc["no_deformable", "depth/abs_rel_mean"] == pytest.approx(0.2)  # non-primary metrics too
    for variant, seeds in (("single_task", [0, 1]), ("demt", [0, 1, 2])):
        deltas = pd.Series([DELTA[(variant, s)] for s in seeds])
        assert df.loc[variant, "delta_m_mean"] == pytest.approx(deltas.mean(), abs=1e-9)
        assert df.loc[variant, "delta_m_std"] == pytest.approx(deltas.std(ddof=1))
    assert df.loc["demt", "delta_m_mean"] == pytest.approx(6.45224, abs=1e-5)
    assert df.loc["no_deformable", "delta_m_mean"] == pytest.approx(0.0, abs=1e-9)
    assert df.loc["demt", "seeds"] == "0;1;2" and df.loc["demt", "checkpoint"] == "final"
    assert df.loc["demt", "params_m"] == pytest.approx(32.07) and df.loc["demt", "gflops"] == pytest.approx(121.26)
    assert len(df.loc["demt", "run_ids"].split(";")) == 3


def test_csv_has_95_percent_t_intervals(nyud: Path) -> None:
    df = pd.read_csv(nyud / "results.csv").set_index("label")
    # demt semseg/mIoU seeds 44, 46, 45: mean 45, std 1, t_{0.975, 2} = 4.302653 → half width 4.302653 / sqrt 3
    half = 4.302653 / math.sqrt(3)
    assert df.loc["demt", "semseg/mIoU_ci95_low"] == pytest.approx(45 - half, rel=1e-6)
    assert df.loc["demt", "semseg/mIoU_ci95_high"] == pytest.approx(45 + half, rel=1e-6)
    deltas = pd.Series([DELTA[("demt", s)] for s in (0, 1, 2)])
    delta_half = 4.302653 * deltas.std(ddof=1) / math.sqrt(3)
    assert df.loc["demt", "delta_m_ci95_high"] == pytest.approx(deltas.mean() + delta_half, rel=1e-6)
    assert math.isnan(df.loc["no_deformable", "semseg/mIoU_ci95_low"])  # one seed: no interval


def test_runs_csv_lists_every_run_with_its_status(nyud: Path) -> None:
    runs = pd.read_csv(nyud / "runs.csv")
    assert len(runs) == 7 and sorted(runs["status"].unique()) == ["FAILED", "FINISHED"]
    failed = runs[runs["status"] == "FAILED"].iloc[0]
    assert failed["label"] == "demt" and failed["seed"] == 3 and failed["semseg/mIoU"] == 99.0
    assert set(runs["dataset_variant"]) == {"NYUDv2"} and set(runs["input_size"].dropna()) == {"448x576"}
    # The config values that tell runs apart (grid values, switches) are columns too.
    by_variant = runs.drop_duplicates("label").set_index("label")
    assert by_variant.loc["no_deformable", "model.options.deformable"] == False  # noqa: E712
    assert by_variant.loc["demt", "model.name"] == "demt" and "train.steps" not in runs.columns  # same for all
    md = (nyud / "results.md").read_text()
    assert "Not in the table (1 run(s) that did not finish): demt seed 3 FAILED (" in md


def test_markdown_bold_best_and_underlined_second(nyud: Path) -> None:
    md = (nyud / "results.md").read_text()
    assert ("| variant | #seeds | semseg mIoU ↑ | depth rmse ↓ | normals mean ↓ | edge odsF ↑ | Δm (%) ↑ "
            "| Params (M) | GFLOPs |") in md
    # mIoU 41, 45, 41 → demt best, the two 41s tie for second; edge: only demt has it → nothing ranked.
    assert ("| single_task | 2 | <u>41.00 ± 1.41</u> | <u>0.6200 ± 0.0283</u> | <u>21.00 ± 1.41</u> | – "
            "| <u>0.00 ± 2.62</u> | 110.00 | 400.00 |") in md
    assert ("| demt | 3 | **45.00 ± 1.00** | **0.5900 ± 0.0100** | **20.00 ± 1.00** | 71.00 ± 1.00 "
            "| **+6.45 ± 1.47** | 32.07 | 121.26 |") in md
    assert ("| no_deformable | 1 | <u>41.00</u> | <u>0.6200</u> | <u>21.00</u> | – | <u>0.00</u> | 31.90 "
            "| 118.00 |") in md
    assert ("Δm (%): each seed run against the mean of single_task (2 seeds) over semseg, depth, normals; "
            "positive is better. 95% t-intervals over seeds of every number are in results.csv. "
            "Left out of Δm: edge (edge/odsF is not in the reference single_task).") in md
    assert "GFLOPs: fvcore, one image of 448x576" in md


def test_mean_only_option(uri: str, tmp_path: Path) -> None:
    build_report(uri, ["nyud_abl"], out_dir=tmp_path, show_std=False)
    md = (tmp_path / "nyud_abl" / "results.md").read_text()
    assert "| demt | 3 | **45.00** | **0.5900** | **20.00** | 71.00 | **+6.45** | 32.07 | 121.26 |" in md
    assert "mean over seeds;" in md and "±" not in md.split("\n\n")[1]


def test_ranks_ties_and_small_tables() -> None:
    s = pd.Series([1.0, 3.0, 3.0, 2.0, math.nan])
    assert ranks(s, True, 2).tolist() == [0, 1, 1, 2, 0]
    assert ranks(s, False, 2).tolist() == [1, 0, 0, 2, 0]
    assert ranks(pd.Series([1.0, 2.0]), True, 2).tolist() == [0, 1]  # two rows: no second place
    assert ranks(pd.Series([1.0, 1.004]), True, 2).tolist() == [0, 0]  # equal as displayed: nothing stands out
    assert ranks(pd.Series([5.0]), True, 2).tolist() == [0]


def test_ablation_layout_marks_switched_components(nyud: Path) -> None:
    md = (nyud / "results.md").read_text()
    ablation = md.split("### nyud_abl: ablation")[1]
    # deformable: demt's default (true) for demt, false for no_deformable, no such option for single_task.
    assert "| variant | model | deformable | semseg mIoU ↑ |" in ablation
    assert "| single_task | single_task | – |" in ablation
    assert "| demt | demt | ✓ | **45.00 ± 1.00** |" in ablation
    assert "| no_deformable | demt | ✗ |" in ablation
    tex = (nyud / "ablation.tex").read_text()
    assert r"no\_deformable & demt & $\times$ &" in tex and r"demt & demt & \checkmark &" in tex
    csv = pd.read_csv(nyud / "ablation.csv").set_index("label")
    assert csv.loc["no_deformable", "model.options.deformable"] == False  # noqa: E712 - read back as a bool
    assert csv.loc["demt", "model.options.deformable"] == True  # noqa: E712 - the model's default, filled in


def test_latex_is_booktabs_and_escaped(nyud: Path) -> None:
    tex = (nyud / "results.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{table}", r"\end{tabular}"):
        assert rule in tex
    assert (r"Method & \#seeds & semseg mIoU $\uparrow$ & depth rmse $\downarrow$ & normals mean $\downarrow$ "
            r"& edge odsF $\uparrow$ & $\Delta_m$ (\%) $\uparrow$ & Params (M) & GFLOPs \\") in tex
    assert (r"no\_deformable & 1 & $\underline{41.00}$ & $\underline{0.6200}$ & $\underline{21.00}$ & -- "
            r"& $\underline{0.00}$") in tex
    assert r"demt & 3 & $\mathbf{45.00 \pm 1.00}$" in tex and r"$\mathbf{+6.45 \pm 1.47}$" in tex
    assert r"$\Delta_m$ (\%): each seed run against the mean of single\_task (2 seeds)" in tex
    standalone = (nyud / "report_standalone.tex").read_text()
    assert standalone.startswith("\\documentclass{article}\n\\usepackage{booktabs}\n")
    assert tex in standalone and (nyud / "ablation.tex").read_text() in standalone
    assert standalone.endswith("\\end{document}\n")
    assert latex_escape("a_b&c%d$e#f{g}~^\\") == (r"a\_b\&c\%d\$e\#f\{g\}\textasciitilde{}\textasciicircum{}"
                                                   r"\textbackslash{}")


def _pdflatex(folder: Path, tmp_path: Path, name: str) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    shutil.copy(folder / name, tmp_path)
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Overfull" not in proc.stdout
    assert (tmp_path / name.replace(".tex", ".pdf")).stat().st_size > 0


@pytest.mark.service
def test_standalone_latex_compiles(nyud: Path, tmp_path: Path) -> None:
    _pdflatex(nyud, tmp_path, "report_standalone.tex")


def test_report_run_in_mlflow_holds_every_file(uri: str, nyud: Path) -> None:
    reports = tracking.load_runs(uri, "nyud_abl", kinds=("report",))
    assert len(reports) >= 1 and set(reports["status"]) == {"FINISHED"}
    run_id = reports.sort_values("start_time")["run_id"].iloc[-1]
    from mlflow.tracking import MlflowClient

    logged = sorted(a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id))
    assert logged == sorted(p.name for p in nyud.iterdir())
    # The report run is not a trial: it never enters a table.
    assert "report" not in set(tracking.load_runs(uri, "nyud_abl")["kind"])


def test_missing_reference_is_refused_and_none_leaves_delta_m_out(uri: str, tmp_path: Path) -> None:
    with pytest.raises(MtbenchError, match=r"Δm reference 'single_task' has no FINISHED runs here \(rows: a_b\)"
                                           r".*--reference none"):
        build_report(uri, ["no_ref"], out_dir=tmp_path)
    assert not (tmp_path / "no_ref").exists()
    build_report(uri, ["no_ref"], out_dir=tmp_path, reference="none")
    md = (tmp_path / "no_ref" / "results.md").read_text()
    assert "| a_b | 2 | 0.6000 ± 0.1414 | – |" in md and "No Δm: no reference was chosen" in md
    build_report(uri, ["no_ref"], out_dir=tmp_path, reference="a_b")
    df = pd.read_csv(tmp_path / "no_ref" / "results.csv")
    # Seeds 0.5 and 0.7 against their mean 0.6: Δm = ±100 * 0.1 / 0.6.
    assert df.loc[0, "delta_m_std"] == pytest.approx(SQRT2 * 100 * 0.1 / 0.6)


def test_runs_of_one_seed_merge(uri: str, tmp_path: Path) -> None:
    build_report(uri, ["split_st"], out_dir=tmp_path)
    df = pd.read_csv(tmp_path / "split_st" / "results.csv").set_index("label")
    assert df.loc["single_task", "n_seeds"] == 1
    assert df.loc["mtl", "delta_m_mean"] == pytest.approx(100 / 2 * (4 / 40 + 0.05 / 0.5))
    assert "merged, the later run winning per metric: single_task (seed 0)" in (
        tmp_path / "split_st" / "results.md").read_text()


def test_several_experiments_make_one_table(uri: str, tmp_path: Path) -> None:
    report = build_report(uri, ["nyud_abl", "split_st"], out_dir=tmp_path, reference="nyud_abl/single_task")
    assert report.folder.name == "nyud_abl+split_st"
    labels = pd.read_csv(report.folder / "results.csv")["label"].tolist()
    assert labels == ["nyud_abl/single_task", "nyud_abl/demt", "nyud_abl/no_deformable", "split_st/single_task",
                      "split_st/mtl"]
    with pytest.raises(MtbenchError, match="'single_task' is ambiguous"):
        build_report(uri, ["nyud_abl", "split_st"], out_dir=tmp_path)


def test_no_finished_runs_and_unknown_experiment_are_clear_errors(uri: str, tmp_path: Path) -> None:
    with pytest.raises(MtbenchError, match=r"no FINISHED runs among the 1 trial run\(s\) found \(1 FAILED\)"):
        build_report(uri, ["all_failed"], out_dir=tmp_path)
    with pytest.raises(MtbenchError, match=r"no MLflow experiment named 'nope'.*existing experiments: Default, "
                                           r"all_failed, "):
        build_report(uri, ["nope"], out_dir=tmp_path)
    with pytest.raises(MtbenchError, match="no runs in experiment.*matching"):
        build_report(uri, ["nyud_abl"], out_dir=tmp_path, tags={tracking.TAG_MODEL: "mtinet"})
    with pytest.raises(MtbenchError, match="invalid run query"):
        build_report(uri, ["nyud_abl"], out_dir=tmp_path, query="tags.x ~~ 3")
    assert list(tmp_path.iterdir()) == []


def test_tag_filter_selects_runs(uri: str, tmp_path: Path) -> None:
    report = build_report(uri, ["nyud_abl"], out_dir=tmp_path, tags={tracking.TAG_MODEL: "demt"}, reference="demt")
    assert report.table.summary.index.tolist() == ["demt", "no_deformable"]


def test_mixed_metric_variants_are_refused(uri: str, tmp_path: Path) -> None:
    with pytest.raises(MtbenchError, match=r"sal: the runs computed sal/maxF with different metric variants "
                                           r"\(sal/maxF: single_task \(seed 0\); sal/maxF-invpt: invpt \(seed 0\)\)"):
        build_report(uri, ["mixed_sal"], out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_mixed_dataset_variants_are_refused(uri: str, tmp_path: Path) -> None:
    with pytest.raises(MtbenchError, match=r"different dataset variants \(NYUD_MT: single_task \(seed 0\); "
                                           r"NYUDv2: demt \(seed 0\)\).*--tag mtbench.dataset_variant=NYUD_MT"):
        build_report(uri, ["mixed_data"], out_dir=tmp_path)
    report = build_report(uri, ["mixed_data"], out_dir=tmp_path, tags={tracking.TAG_DATASET_VARIANT: "NYUDv2"},
                          reference="none")
    assert report.table.summary.index.tolist() == ["demt"]


def test_unwritable_out_dir(uri: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MtbenchError, match="cannot write the report to .*Choose another output folder"):
        build_report(uri, ["no_ref"], out_dir=blocker, reference="none")


def test_delta_m_against_a_published_row(uri: str, tmp_path: Path) -> None:
    # DeMT/nyud/Swin-T published: mIoU 46.36, rmse 0.5871, normals 20.6, odsF 76.9. demt seed 0 (44, 0.58, 20, 70):
    # (100/4) [ -2.36/46.36 + 0.0071/0.5871 + 0.6/20.6 - 6.9/76.9 ]
    #   = 25 [ -0.0509060 + 0.0120933 + 0.0291262 - 0.0897269 ] = 25 (-0.0994134) = -2.48534
    row = published_row("DeMT/nyud/Swin-T")
    assert delta_m(NYUD[("demt", 0)], row.metrics, tasks=["semseg", "depth", "normals", "edge"]) == \
        pytest.approx(-2.48534, abs=1e-5)
    build_report(uri, ["nyud_abl"], out_dir=tmp_path, reference="published:DeMT/nyud/Swin-T")
    df = pd.read_csv(tmp_path / "nyud_abl" / "results.csv").set_index("label")
    # edge/odsF is missing for single_task and no_deformable, so Δm covers semseg, depth, normals only:
    seeds = [(44, 0.58, 20), (46, 0.60, 21), (45, 0.59, 19)]
    by_hand = [100 / 3 * ((m - 46.36) / 46.36 - (r - 0.5871) / 0.5871 - (n - 20.6) / 20.6) for m, r, n in seeds]
    assert df.loc["demt", "delta_m_mean"] == pytest.approx(sum(by_hand) / 3, rel=1e-9)
    md = (tmp_path / "nyud_abl" / "results.md").read_text()
    assert "against DeMT/nyud/Swin-T (published, xu2023demt) over semseg, depth, normals" in md
    with pytest.raises(MtbenchError, match="no published row 'DeMT/nyud/Swin'. Did you mean"):
        build_report(uri, ["nyud_abl"], out_dir=tmp_path, reference="published:DeMT/nyud/Swin")


def test_published_reference_on_other_data_is_refused(uri: str, tmp_path: Path) -> None:
    with pytest.raises(MtbenchError, match="cannot be the Δm reference of these runs: .*NYUD_MT"):
        build_report(uri, ["mixed_data"], out_dir=tmp_path, tags={tracking.TAG_DATASET_VARIANT: "NYUD_MT"},
                     reference="published:DeMT/nyud/Swin-T")


def test_with_published_adds_comparable_rows_with_citations(uri: str, tmp_path: Path) -> None:
    report = build_report(uri, ["nyud_abl"], out_dir=tmp_path, with_published="nyud")
    summary = report.table.summary
    published = summary[summary["kind"] == "published"]
    assert "DeMT (Swin-T)" in published.index and published.loc["DeMT (Swin-T)", "cite"] == "xu2023demt"
    assert published.loc["DeMT (Swin-T)", "semseg/mIoU_mean"] == pytest.approx(46.36)
    # Its Δm against the single_task mean (41, 0.62, 21) over semseg, depth, normals:
    expected = 100 / 3 * ((46.36 - 41) / 41 - (0.5871 - 0.62) / 0.62 - (20.6 - 21) / 21)
    assert published.loc["DeMT (Swin-T)", "delta_m_mean"] == pytest.approx(expected, rel=1e-9)
    folder = tmp_path / "nyud_abl"
    tex = (folder / "results.tex").read_text()
    assert r"DeMT (Swin-T)~\cite{xu2023demt}" in tex and r"$^\dagger$" not in tex.split("\\end{tabular}")[0] \
        or r"^{\dagger}" in tex
    assert (folder / "references.bib").read_text().count("xu2023demt") == 1
    md = (folder / "results.md").read_text()
    assert "| DeMT (Swin-T) [xu2023demt] |" in md
    # The best mIoU is now a published row (e.g. Swin-B's): bold goes to whichever row is best.
    best = summary["semseg/mIoU_mean"].idxmax()
    assert f"**{summary.loc[best, 'semseg/mIoU_mean']:.2f}" in md
    # Rows on another archive or metric definition are listed, not added.
    for name, why in report.table.not_comparable.items():
        assert name not in published.index and why
        assert f"Published rows not comparable, left out ({why}): " in md and name in md


@pytest.mark.service
def test_latex_with_published_rows_compiles(uri: str, tmp_path: Path) -> None:
    report = build_report(uri, ["nyud_abl"], out_dir=tmp_path / "out", with_published="nyud")
    _pdflatex(report.folder, tmp_path, "report_standalone.tex")


def test_a_new_report_replaces_the_old_files_and_keeps_foreign_ones(uri: str, tmp_path: Path) -> None:
    folder = tmp_path / "no_ref"
    folder.mkdir()
    (folder / "best_config.yaml").write_text("kept: true\n")  # written by a study, not by a report
    (folder / "optuna_history.png").write_text("stale")  # a figure this report does not make
    build_report(uri, ["no_ref"], out_dir=tmp_path, reference="none")
    assert (folder / "best_config.yaml").read_text() == "kept: true\n"
    assert not (folder / "optuna_history.png").exists() and (folder / "results.md").is_file()


def test_optuna_view_from_the_study_its_parent_run_names(tmp_path: Path) -> None:
    import optuna

    from mtbench.sweep import search

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="st", storage=storage, direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    width = optuna.distributions.CategoricalDistribution([8, 16])
    for number, (x, w) in enumerate([(1e-3, 8), (1e-2, 16), (3e-2, 8), (5e-4, 16), (2e-3, 8)]):
        value = 40.0 + 10 * math.log10(x / 1e-4)  # the objective follows lr only
        study.add_trial(optuna.trial.create_trial(params={"train.optimizer.lr": x, "model.options.head_channels": w},
                                                  distributions={"train.optimizer.lr": lr,
                                                                 "model.options.head_channels": width}, value=value))
        log_run(uri, "st", f"trial{number}", 0, {"semseg/mIoU": value})
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"train.optimizer.lr": 0.05},
                                              distributions={"train.optimizer.lr": lr}))
    Tracker.start(uri, "st", "study-st", {tracking.TAG_STUDY: "st", tracking.TAG_STUDY_PARENT: "true",
                                          search.TAG_STORAGE: storage, search.TAG_OBJECTIVE: "semseg/mIoU",
                                          search.TAG_DIRECTION: "maximize"}).end()
    trials, importances = search.study_trials(storage, "st")
    assert trials["state"].tolist() == ["COMPLETE"] * 5 + ["PRUNED"]
    assert trials["value"].iloc[1] == pytest.approx(60.0)
    assert set(importances) == {"train.optimizer.lr", "model.options.head_channels"}
    assert importances["train.optimizer.lr"] > importances["model.options.head_channels"]
    report = build_report(uri, ["st"], out_dir=tmp_path / "reports", reference="none")
    for name in ("optuna_history", "optuna_importance"):
        assert (report.folder / f"{name}.pdf").stat().st_size > 0 and (report.folder / f"{name}.png").is_file()
    runs = pd.read_csv(report.folder / "runs.csv").set_index("run_name")
    assert runs.loc["study-st", "kind"] == "study" and len(runs) == 6  # listed, but never a table row
    assert "study-st" not in report.table.summary.index


def test_published_rows_on_other_metric_definitions_are_listed_not_added(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    metrics = {"semseg/mIoU": 70.0, "human_parts/mIoU": 60.0, "sal/maxF": 80.0, "normals/mean": 14.5}
    for seed in (0, 1):
        log_run(uri, "pascal", "single_task", seed, metrics, dataset_variant="PASCAL_MT")
    report = build_report(uri, ["pascal"], out_dir=tmp_path, with_published="pascal")
    published = report.table.summary[report.table.summary["kind"] == "published"].index.tolist()
    assert "DeMT (Swin-T)" in published and not any(p.startswith(("InvPT", "TaskPrompter")) for p in published)
    # InvPT's code passes saliency through a second sigmoid: its maxF is another definition.
    why = report.table.not_comparable["InvPT/pascal/ViT-L"]
    assert "sal/maxF-invpt" in why and "sal/maxF" in why
    md = (report.folder / "results.md").read_text()
    assert f"Published rows not comparable, left out ({why}): InvPT/pascal/ViT-L" in md


def test_a_column_in_a_published_variant_brings_that_papers_rows_in(tmp_path: Path) -> None:
    """PASCAL runs log saliency in the reference and in InvPT's definition (the published variants of their
    dataset); `--metric-variant sal=invpt` shows InvPT's, so InvPT's rows fit and DeMT's (reference) do not."""
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    metrics = {"semseg/mIoU": 70.0, "human_parts/mIoU": 60.0, "sal/maxF": 80.0, "sal/maxF-invpt": 79.0,
               "normals/mean": 14.5}
    for seed in (0, 1):
        log_run(uri, "pascal", "single_task", seed, metrics, dataset_variant="PASCAL_MT")
    plain = build_report(uri, ["pascal"], out_dir=tmp_path / "a", with_published="pascal")
    assert plain.table.columns["sal"] == "sal/maxF" and "InvPT/pascal/ViT-L" in plain.table.not_comparable
    report = build_report(uri, ["pascal"], out_dir=tmp_path / "b", with_published="pascal", variants={"sal": "invpt"})
    assert report.table.columns["sal"] == "sal/maxF-invpt"
    assert report.table.summary.loc["single_task", "sal/maxF-invpt_mean"] == pytest.approx(79.0)
    published = report.table.summary[report.table.summary["kind"] == "published"].index.tolist()
    assert any(p.startswith("InvPT") for p in published) and "DeMT (Swin-T)" not in published
    with pytest.raises(MtbenchError, match=r"--metric-variant sal=mtinet: sal/maxF-mtinet is not logged by"):
        build_report(uri, ["pascal"], out_dir=tmp_path / "c", variants={"sal": "mtinet"})
    with pytest.raises(MtbenchError, match=r"--metric-variant sal=nope: unknown sal metric variant; valid: "):
        build_report(uri, ["pascal"], out_dir=tmp_path / "c", variants={"sal": "nope"})


def test_a_lost_study_storage_skips_only_the_optuna_figures(tmp_path: Path) -> None:
    from mtbench.sweep import search

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    log_run(uri, "gone", "trial0", 0, {"semseg/mIoU": 40.0})
    Tracker.start(uri, "gone", "study-gone", {tracking.TAG_STUDY: "gone", tracking.TAG_STUDY_PARENT: "true",
                                              search.TAG_STORAGE: f"sqlite:///{tmp_path}/moved.db"}).end()
    report = build_report(uri, ["gone"], out_dir=tmp_path / "reports", reference="none")
    assert "no longer exists" in report.skipped_figures["optuna_history"]
    assert (report.folder / "results.md").is_file() and not (tmp_path / "moved.db").exists()
