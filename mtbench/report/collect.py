"""Turn MLflow runs into tidy per-seed results (through `mtbench.tracking`, never mlflow itself)."""

from __future__ import annotations

import pandas as pd

from mtbench.errors import MtbenchError
from mtbench.tasks import TASK_NAMES
from mtbench.tracking import RUN_COLUMNS, load_runs

# Column order of tables: the order the field reports tasks in (PASCAL-Context, then NYUD-only ones).
TASK_ORDER = ("semseg", "human_parts", "sal", "depth", "normals", "edge")
TASK_ORDER += tuple(t for t in TASK_NAMES if t not in TASK_ORDER)
UNTAGGED = "(untagged)"


def collect_runs(uri: str, experiment: str | None = None) -> pd.DataFrame:
    """Return the FINISHED runs of `experiment` (all when None), as `tracking.load_runs` rows.

    Raises MtbenchError when there are none, saying what was found instead.
    """
    runs = load_runs(uri, experiment)
    finished = runs[runs["status"] == "FINISHED"]
    if finished.empty:
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        found = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().sort_index().items())
        raise MtbenchError(
            f"no FINISHED runs in {where} at {uri!r} (found: {found or 'no runs'}). Run trials to the end "
            "with `mtbench run <experiment.yaml>` (resume a FAILED or KILLED one with its run id), then "
            "report again.")
    return finished.reset_index(drop=True)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Return the `task/metric` columns of `frame` holding any value, in table order."""
    names = [c for c in frame.columns if c not in RUN_COLUMNS and "/" in c and frame[c].notna().any()]
    rank = {t: i for i, t in enumerate(TASK_ORDER)}
    return sorted(names, key=lambda c: (rank.get(c.split("/", 1)[0], len(rank)), c))


def seed_results(runs: pd.DataFrame) -> pd.DataFrame:
    """Merge runs to one row per (experiment, variant, seed): the unit tables aggregate over.

    Several runs of one seed are merged column by column, the later run winning (e.g. a
    single-task baseline run once per task, or a trial re-run from scratch). Columns:
    experiment, variant, seed, n_runs, run_ids, checkpoint, then the metric columns.
    """
    metrics = metric_columns(runs)
    frame = runs.sort_values("start_time", kind="stable").copy()
    frame["variant"] = frame["variant"].fillna(UNTAGGED)
    # A run without a seed tag counts as its own seed.
    frame["seed_key"] = [str(s) if pd.notna(s) else f"run:{r}" for s, r in zip(frame["seed"], frame["run_id"],
                                                                                  strict=True)]
    groups = frame.groupby(["experiment", "variant", "seed_key"], sort=False)
    merged = groups[["seed", *metrics]].last()  # last non-null value per column
    merged["n_runs"] = groups.size()
    merged["run_ids"] = groups["run_id"].agg(lambda ids: ";".join(ids))
    merged["checkpoint"] = groups["checkpoint"].agg(lambda c: ",".join(sorted(set(c.dropna()))))
    merged = merged.reset_index().drop(columns="seed_key")
    return merged[["experiment", "variant", "seed", "n_runs", "run_ids", "checkpoint", *metrics]]
