"""build_report end to end on a real sqlite MLflow store, checked against hand-computed values."""

from __future__ import annotations

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
from mtbench.report.tables import latex_escape
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
    ("mtl_base", 0): {"semseg/mIoU": 41.0, "depth/rmse": 0.62, "normals/mean": 21.0, "depth/abs_rel": 0.2},
}
# Δm (%) of each seed run by hand: (100/3) [ (mIoU-41)/41 - (rmse-0.62)/0.62 - (normals-21)/21 ].
DELTA = {
    ("single_task", 0): 100 / 3 * (-1 / 41 + 0.02 / 0.62 + 1 / 21),
    ("single_task", 1): 100 / 3 * (1 / 41 - 0.02 / 0.62 - 1 / 21),
    ("demt", 0): 100 / 3 * (3 / 41 + 0.04 / 0.62 + 1 / 21),
    ("demt", 1): 100 / 3 * (5 / 41 + 0.02 / 0.62 + 0 / 21),
    ("demt", 2): 100 / 3 * (4 / 41 + 0.03 / 0.62 + 2 / 21),
    ("mtl_base", 0): 0.0,
}


def _log(uri: str, experiment: str, variant: str, seed: int, metrics: dict[str, float],
         status: str = "FINISHED") -> str:
    tags = {tracking.TAG_EXPERIMENT: experiment, tracking.TAG_VARIANT: variant, tracking.TAG_SEED: str(seed),
            tracking.TAG_MODEL: variant, tracking.TAG_DATASET: "synthetic_nyud", tracking.TAG_CHECKPOINT: "final"}
    tracker = Tracker.start(uri, experiment, f"{variant}-seed{seed}", tags)
    tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=1)
    tracker.log_metrics({f"test/{k}": v for k, v in metrics.items()}, step=2)
    tracker.end(status)
    return tracker.run_id


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store with experiments `nyud_abl` (with reference), `no_ref`, `split_st` and `all_failed`."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlruns.db"
    for (variant, seed), metrics in NYUD.items():
        _log(uri, "nyud_abl", variant, seed, metrics)
    _log(uri, "nyud_abl", "demt", 3, {"semseg/mIoU": 99.0}, status="FAILED")  # must not count
    _log(uri, "no_ref", "a_b", 0, {"semseg/mIoU": 0.5})
    _log(uri, "no_ref", "a_b", 1, {"semseg/mIoU": 0.7})
    # A single-task baseline run once per task: the runs of one seed merge into one row.
    _log(uri, "split_st", "single_task", 0, {"semseg/mIoU": 40.0})
    _log(uri, "split_st", "single_task", 0, {"depth/rmse": 0.5})
    _log(uri, "split_st", "mtl", 0, {"semseg/mIoU": 44.0, "depth/rmse": 0.45})
    _log(uri, "all_failed", "x", 0, {"semseg/mIoU": 1.0}, status="FAILED")
    return uri


@pytest.fixture(scope="module")
def nyud(uri: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report folder of `nyud_abl`."""
    out = tmp_path_factory.mktemp("reports")
    paths = build_report(uri, "nyud_abl", out_dir=out)
    assert [p.name for p in paths] == ["results.tex", "results_standalone.tex", "results.md", "results.csv"]
    return out / "nyud_abl"


def test_task_order_covers_every_task() -> None:
    assert sorted(TASK_ORDER) == sorted(TASK_NAMES)


def test_csv_has_hand_computed_values(nyud: Path) -> None:
    df = pd.read_csv(nyud / "results.csv").set_index("variant")
    assert df.index.tolist() == ["single_task", "demt", "mtl_base"]
    assert df["n_seeds"].tolist() == [2, 3, 1]
    assert df.loc["single_task", "semseg/mIoU_mean"] == pytest.approx(41.0)
    assert df.loc["single_task", "semseg/mIoU_std"] == pytest.approx(SQRT2)
    assert df.loc["single_task", "depth/rmse_std"] == pytest.approx(0.02 * SQRT2)
    assert df.loc["demt", "semseg/mIoU_mean"] == pytest.approx(45.0)
    assert df.loc["demt", "depth/rmse_mean"] == pytest.approx(0.59)
    assert df.loc["demt", "depth/rmse_std"] == pytest.approx(0.01)
    assert df.loc["demt", "edge/odsF_mean"] == pytest.approx(71.0)
    assert math.isnan(df.loc["mtl_base", "semseg/mIoU_std"])
    assert df.loc["mtl_base", "depth/abs_rel_mean"] == pytest.approx(0.2)  # non-primary metrics too
    for variant, seeds in (("single_task", [0, 1]), ("demt", [0, 1, 2])):
        deltas = pd.Series([DELTA[(variant, s)] for s in seeds])
        assert df.loc[variant, "delta_m_mean"] == pytest.approx(deltas.mean(), abs=1e-9)
        assert df.loc[variant, "delta_m_std"] == pytest.approx(deltas.std(ddof=1))
    assert df.loc["demt", "delta_m_mean"] == pytest.approx(6.45224, abs=1e-5)
    assert df.loc["mtl_base", "delta_m_mean"] == pytest.approx(0.0, abs=1e-9)
    assert df.loc["demt", "seeds"] == "0;1;2" and df.loc["demt", "checkpoint"] == "final"
    assert len(df.loc["demt", "run_ids"].split(";")) == 3


def test_markdown_table_and_notes(nyud: Path) -> None:
    md = (nyud / "results.md").read_text()
    assert ("| variant | #seeds | semseg/mIoU ↑ | depth/rmse ↓ | normals/mean ↓ | edge/odsF ↑ | Δm (%) ↑ |"
            in md)
    assert "| single_task | 2 | 41.00 ± 1.41 | 0.6200 ± 0.0283 | 21.00 ± 1.41 | – | 0.00 ± 2.62 |" in md
    assert ("| demt | 3 | **45.00 ± 1.00** | **0.5900 ± 0.0100** | **20.00 ± 1.00** | 71.00 ± 1.00 "
            "| **+6.45 ± 1.47** |") in md
    assert "| mtl_base | 1 | 41.00 | 0.6200 | 21.00 | – | 0.00 |" in md
    assert ("Δm (%): each seed run against the mean of single_task (2 seeds) over semseg, depth, normals; "
            "positive is better. 95% t-intervals over seeds of every number are in results.csv. "
            "Left out of Δm: edge (edge/odsF not logged by every run; missing for mtl_base "
            "(seed 0); single_task (seeds 0, 1)).") in md


def test_latex_is_booktabs_and_escaped(nyud: Path) -> None:
    tex = (nyud / "results.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{table}", r"\end{tabular}"):
        assert rule in tex
    assert (r"Variant & \#seeds & semseg/mIoU $\uparrow$ & depth/rmse $\downarrow$ & normals/mean $\downarrow$ "
            r"& edge/odsF $\uparrow$ & $\Delta_m$ (\%) $\uparrow$ \\") in tex
    assert r"mtl\_base & 1 & $41.00$ & $0.6200$ & $21.00$ & -- & $0.00$ \\" in tex
    assert r"demt & 3 & $\mathbf{45.00 \pm 1.00}$" in tex
    assert r"$\Delta_m$ (\%): each seed run against the mean of single\_task (2 seeds)" in tex
    standalone = (nyud / "results_standalone.tex").read_text()
    assert standalone.startswith("\\documentclass{article}\n\\usepackage{booktabs}\n")
    assert tex in standalone and standalone.endswith("\\end{document}\n")
    assert latex_escape("a_b&c%d$e#f{g}~^\\") == (r"a\_b\&c\%d\$e\#f\{g\}\textasciitilde{}\textasciicircum{}"
                                                   r"\textbackslash{}")


def test_no_temp_files_left(nyud: Path) -> None:
    assert sorted(p.name for p in nyud.iterdir()) == sorted(
        ["results.tex", "results_standalone.tex", "results.md", "results.csv"])


def test_missing_reference_shows_dash_and_says_why(uri: str, tmp_path: Path) -> None:
    build_report(uri, "no_ref", out_dir=tmp_path)
    md = (tmp_path / "no_ref" / "results.md").read_text()
    assert "| a_b | 2 | 0.6000 ± 0.1414 | – |" in md
    assert ("No Δm: the experiment has no FINISHED runs of the reference variant 'single_task'; run it, or "
            "choose another reference variant.") in md
    build_report(uri, "no_ref", out_dir=tmp_path, reference_variant="a_b")
    df = pd.read_csv(tmp_path / "no_ref" / "results.csv")
    # Seeds 0.5 and 0.7 against their mean 0.6: Δm = ±100 * 0.1 / 0.6.
    assert df.loc[0, "delta_m_std"] == pytest.approx(SQRT2 * 100 * 0.1 / 0.6)


def test_runs_of_one_seed_merge(uri: str, tmp_path: Path) -> None:
    build_report(uri, "split_st", out_dir=tmp_path)
    df = pd.read_csv(tmp_path / "split_st" / "results.csv").set_index("variant")
    assert df.loc["single_task", "n_seeds"] == 1
    assert df.loc["mtl", "delta_m_mean"] == pytest.approx(100 / 2 * (4 / 40 + 0.05 / 0.5))
    assert "merged, the later run winning per metric: single_task seed 0" in (
        tmp_path / "split_st" / "results.md").read_text()


def test_all_experiments_when_none_named(uri: str, tmp_path: Path) -> None:
    paths = build_report(uri, None, out_dir=tmp_path)
    assert sorted({p.parent.name for p in paths}) == ["no_ref", "nyud_abl", "split_st"]


def test_no_finished_runs_is_a_clear_error(uri: str, tmp_path: Path) -> None:
    with pytest.raises(MtbenchError, match=r"no FINISHED runs in experiment 'all_failed' .*found: 1 FAILED.*"
                                           r"mtbench run"):
        build_report(uri, "all_failed", out_dir=tmp_path)


def test_unwritable_out_dir(uri: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MtbenchError, match="cannot write the report to .*Choose another output folder"):
        build_report(uri, "no_ref", out_dir=blocker)


@pytest.mark.service
def test_standalone_latex_compiles(nyud: Path, tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    shutil.copy(nyud / "results_standalone.tex", tmp_path)
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "results_standalone.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Overfull" not in proc.stdout
    assert (tmp_path / "results_standalone.pdf").stat().st_size > 0


def test_csv_has_95_percent_t_intervals(nyud: Path) -> None:
    df = pd.read_csv(nyud / "results.csv").set_index("variant")
    # demt semseg/mIoU seeds 44, 46, 45: mean 45, std 1, t_{0.975, 2} = 4.302653 → half width 4.302653 / sqrt 3
    half = 4.302653 / math.sqrt(3)
    assert df.loc["demt", "semseg/mIoU_ci95_low"] == pytest.approx(45 - half, rel=1e-6)
    assert df.loc["demt", "semseg/mIoU_ci95_high"] == pytest.approx(45 + half, rel=1e-6)
    deltas = pd.Series([DELTA[("demt", s)] for s in (0, 1, 2)])
    delta_half = 4.302653 * deltas.std(ddof=1) / math.sqrt(3)
    assert df.loc["demt", "delta_m_ci95_high"] == pytest.approx(deltas.mean() + delta_half, rel=1e-6)
    assert math.isnan(df.loc["mtl_base", "semseg/mIoU_ci95_low"])  # one seed: no interval


def test_delta_m_against_a_published_row(uri: str, tmp_path: Path) -> None:
    # ATRC/nyud published: mIoU 46.33, rmse 0.5363, normals 20.18, odsF 77.94. demt seed 0 (44, 0.58, 20, 70):
    # (100/4) [ -2.33/46.33 - 0.0437/0.5363 + 0.18/20.18 - 7.94/77.94 ]
    #   = 25 [ -0.0502914 - 0.0814843 + 0.0089197 - 0.1018732 ] = 25 (-0.2247292) = -5.61823
    atrc = published_row("ATRC/nyud")
    assert delta_m(NYUD[("demt", 0)], atrc.metrics, tasks=["semseg", "depth", "normals", "edge"]) == \
        pytest.approx(-5.61823, abs=1e-5)
    build_report(uri, "nyud_abl", out_dir=tmp_path, reference_variant="published:ATRC/nyud")
    df = pd.read_csv(tmp_path / "nyud_abl" / "results.csv").set_index("variant")
    # edge/odsF is missing for single_task and mtl_base, so Δm covers semseg, depth, normals only:
    seeds = [(44, 0.58, 20), (46, 0.60, 21), (45, 0.59, 19)]
    by_hand = [100 / 3 * ((m - 46.33) / 46.33 - (r - 0.5363) / 0.5363 - (n - 20.18) / 20.18) for m, r, n in seeds]
    assert df.loc["demt", "delta_m_mean"] == pytest.approx(sum(by_hand) / 3, rel=1e-9)
    md = (tmp_path / "nyud_abl" / "results.md").read_text()
    assert "against ATRC/nyud (published) over semseg, depth, normals" in md
    with pytest.raises(MtbenchError, match="no published row 'ATRC/nyudv2'. Did you mean 'ATRC/nyud'"):
        build_report(uri, "nyud_abl", out_dir=tmp_path, reference_variant="published:ATRC/nyudv2")
