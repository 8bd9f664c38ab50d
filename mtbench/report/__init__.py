"""Turn MLflow runs into result tables with Δm: `build_report` is what `mtbench report` calls."""

from __future__ import annotations

import re
from pathlib import Path

from mtbench.report.collect import collect_runs, seed_results
from mtbench.report.published import published_row
from mtbench.report.tables import ResultTable, summarize, write_tables

PUBLISHED = "published:"

__all__ = ["ResultTable", "build_report", "experiment_folder"]


def experiment_folder(experiment: str) -> str:
    """Return a file-system-safe folder name for an experiment name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"


def build_report(uri: str, experiment: str | None = None, out_dir: Path = Path("reports"),
                 reference_variant: str = "single_task") -> list[Path]:
    """Write results.{tex,md,csv} and results_standalone.tex per experiment; return the paths.

    Reads the FINISHED runs of `experiment` (every experiment with some, when None) at tracking
    URI `uri`; Δm is taken against the runs whose variant is `reference_variant`, or against a
    published row when it reads `published:<row>` (e.g. `published:ATRC/nyud`, see
    mtbench.report.published). Files go to `out_dir/<experiment>/`.
    """
    published = published_row(reference_variant.removeprefix(PUBLISHED)) \
        if reference_variant.startswith(PUBLISHED) else None
    seeds = seed_results(collect_runs(uri, experiment))
    paths: list[Path] = []
    for name, rows in seeds.groupby("experiment", sort=True):
        table = summarize(rows.reset_index(drop=True), reference_variant, published)
        paths += write_tables(table, Path(out_dir) / experiment_folder(str(name)))
    return paths
