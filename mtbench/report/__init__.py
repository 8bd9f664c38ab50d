"""Turn MLflow runs into tables and figures with Δm: `build_report` is what `mtbench report` calls.

runs (collect) -> one row per (variant, seed) -> aggregate over seeds + Δm + published rows
(aggregate) -> LaTeX / Markdown / CSV (tables) + PDF / PNG (figures) -> `reports/<name>/`, and the
same files as artifacts of a `report` run in MLflow, beside the runs they summarise.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mtbench import tracking
from mtbench.errors import MtbenchError
from mtbench.progress import NoProgress
from mtbench.report import tables
from mtbench.report.aggregate import ResultTable, summarize
from mtbench.report.collect import collect_runs, finished_trials, omitted_runs, runs_file, seed_results
from mtbench.report.published import BIB_PATH as BIB
from mtbench.tasks import get_task

if TYPE_CHECKING:
    from mtbench.report.figures import StudyView

__all__ = ["Report", "ResultTable", "build_report", "report_folder"]

# The Δm reference when no run names one (experiments default `reference_variant` to it too).
DEFAULT_REFERENCE = "single_task"
REPORT_FILES = ("results.tex", "results.md", "results.csv", "runs.csv", "ablation.tex", "ablation.csv",
                "report_standalone.tex", "references.bib")


@dataclass(frozen=True)
class Report:
    """What `build_report` wrote: the folder, its files, the MLflow report run and what was skipped."""

    folder: Path
    files: list[Path]
    run_id: str
    table: ResultTable
    omitted: pd.DataFrame
    skipped_figures: dict[str, str]


def report_folder(name: str) -> str:
    """Return a file-system-safe folder name for a report (an experiment name, or joined names)."""
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", name).strip("._") or "report"


def _is_report_file(name: str) -> bool:
    """Whether `name` is a file that some report writes (so an older copy of it is stale)."""
    from mtbench.report.figures import FIGURES

    stem, _, suffix = name.rpartition(".")
    return name in REPORT_FILES or (stem in FIGURES and suffix in ("pdf", "png"))


def _texts(table: ResultTable, runs: pd.DataFrame, omitted: pd.DataFrame, show_std: bool) -> dict[str, str]:
    """Every table file of the report, by file name."""
    results = tables.to_latex(table, show_std)
    files = {"results.tex": results, "results.md": tables.to_markdown(table, show_std, omitted),
             "results.csv": tables.to_csv(table), "runs.csv": runs_file(runs).to_csv(index=False)}
    fragments = [results]
    if not table.axes.empty:
        files["ablation.tex"] = tables.to_latex_ablation(table, show_std)
        files["ablation.csv"] = tables.ablation_csv(table)
        fragments.append(files["ablation.tex"])
    files["report_standalone.tex"] = tables.standalone_latex(*fragments)
    if (table.summary["kind"] == "published").any() and BIB.is_file():
        files["references.bib"] = BIB.read_text()
    return files


def _figures(uri: str, table: ResultTable, trials: pd.DataFrame, runs: pd.DataFrame,
             folder: Path) -> tuple[list[Path], dict[str, str]]:
    from mtbench.metrics import metric_direction
    from mtbench.metrics.meter import split_metric_name
    from mtbench.registry import MODELS
    from mtbench.report import figures

    keys = [f"val/{validation_key(task, column)}" for task, column in table.columns.items()]
    history = tracking.metric_history(uri, list(trials["run_id"]), keys)
    curves = history.merge(trials[["run_id", "label", "model", "seed"]], on="run_id")
    curves = curves.sort_values("metric", key=lambda m: m.map(keys.index), kind="stable")  # table's task order
    names = {m.removeprefix("val/") for m in keys}
    summary = table.summary[["model", "kind", "gflops", "params_m", "delta_m_mean", "delta_m_std", "n_seeds"]]
    study, why_no_study = _study_view(runs)
    data = figures.FigureInput(
        summary=summary, changes=table.changes, curves=curves[["label", "model", "seed", "metric", "step", "value"]],
        reference=table.reference.label if table.reference else "", model_order=list(MODELS),
        higher_is_better={m: metric_direction(split_metric_name(m)[0]) for m in names}, study=study)
    paths, skipped = figures.write_figures(data, folder)
    if why_no_study:
        skipped.update({name: why_no_study for name in skipped if name.startswith("optuna_")})
    return paths, skipped


def validation_key(task: str, column: str) -> str:
    """The metric validation logged for a table column: the column's own, or the task's proxy (edge's BCE)."""
    spec = get_task(task)
    return column if spec.validation_metric == spec.primary_metric else spec.validation_metric


def _study_view(runs: pd.DataFrame) -> tuple[StudyView | None, str]:
    """The Optuna study behind the runs, reopened from the storage its parent run names; or why there is none
    when the runs came from a study (the tables do not need it, so a lost storage only skips its figures)."""
    parents = runs[runs["kind"] == "study"]
    if parents.empty:
        return None, ""
    from mtbench.report.figures import StudyView
    from mtbench.sweep import search  # imports optuna: only for a study

    tags = parents.iloc[-1]["tags"]
    if search.TAG_STORAGE not in tags:
        return None, "the study's parent run does not name its storage (a study started before mtbench recorded it)"
    try:
        trials, importances = search.study_trials(tags[search.TAG_STORAGE], tags[tracking.TAG_STUDY])
    except MtbenchError as err:
        return None, str(err)
    return StudyView(trials, importances, tags.get(search.TAG_OBJECTIVE, "objective"),
                     tags.get(search.TAG_DIRECTION, "maximize")), ""


def _publish(staging: Path, target: Path) -> None:
    """Replace `target` with the finished `staging` folder (a reader never sees a half-written report).

    Files of the old folder that no report writes (a study's best_config.yaml) move into the new one.
    """
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        for path in target.iterdir():
            if not _is_report_file(path.name) and not (staging / path.name).exists():
                path.rename(staging / path.name)
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


def _unwritable(target: Path, exc: OSError) -> MtbenchError:
    return MtbenchError(f"cannot write the report to {str(target)!r}: {exc.strerror or exc}. Choose another "
                        "output folder (--out) or fix its permissions.")


def default_reference(trials: pd.DataFrame) -> str:
    """The Δm reference the runs' experiments name (`reference_variant`, a run tag); single_task if none does."""
    named = sorted({tags[tracking.TAG_REFERENCE_VARIANT] for tags in trials.get("tags", [])
                    if tracking.TAG_REFERENCE_VARIANT in tags})
    if len(named) > 1:
        raise MtbenchError(f"the runs come from experiments with different Δm references ({', '.join(named)}); "
                           "choose one with --reference ROW (or --reference none).")
    return named[0] if named else DEFAULT_REFERENCE


def build_report(uri: str, experiments: Sequence[str], *, out_dir: Path = Path("reports"),
                 name: str | None = None,
                 reference: str | None = None, tags: Mapping[str, str] | None = None, query: str | None = None,
                 with_published: str | None = None, show_std: bool = True,
                 variants: Mapping[str, str] | None = None, progress: Any = None) -> Report:
    """Collect the runs of `experiments`, write tables (and figures) under `out_dir/<name>/`, log them to MLflow.

    `reference` is the Δm reference: a row (variant) label, `published:<row>` or `none`; None takes the
    `reference_variant` of the experiments, which each run records (`default_reference`). Nothing is
    written unless everything succeeds: files are built in a staging folder that replaces the old
    report at the end.
    """
    if not experiments:  # the store's only experiment with runs, or the choices
        with_runs = tracking.experiments_with_runs(uri)
        if len(with_runs) != 1:
            raise MtbenchError(f"the store {uri!r} holds {len(with_runs)} experiments with runs: name the one(s) to "
                               f"report with --experiment: {', '.join(with_runs) or 'none (run one first)'}.")
        experiments = with_runs
    name = name or "+".join(experiments)
    progress = progress if progress is not None else NoProgress()
    stage = progress.add_task("report: reading runs", total=4)
    runs = collect_runs(uri, experiments, tags=tags, query=query)
    progress.update(stage, advance=1, description="report: tables")
    trials = finished_trials(runs)
    omitted = omitted_runs(runs)
    reference = reference or default_reference(trials)
    table = summarize(seed_results(trials), trials, name=name, reference=reference, with_published=with_published,
                      variants=variants)
    target = Path(out_dir) / report_folder(name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise _unwritable(target, exc) from None
    try:
        for file_name, text in _texts(table, runs, omitted, show_std).items():
            (staging / file_name).write_text(text, encoding="utf-8")
        progress.update(stage, advance=1, description="report: figures")
        _, skipped = _figures(uri, table, trials, runs, staging)
        progress.update(stage, advance=1, description="report: logging the report run")
        run_id = tracking.log_report(uri, experiments[0], staging, {
            "mtbench.report_name": name, "mtbench.report_experiments": ",".join(experiments),
            "mtbench.report_reference": reference, "mtbench.report_runs": str(len(trials))})
        _publish(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _unwritable(target, exc) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Report(target, sorted(target.iterdir()), run_id, table, omitted, skipped)
