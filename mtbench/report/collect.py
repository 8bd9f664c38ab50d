"""Turn MLflow runs into tidy frames (through `mtbench.tracking`, never mlflow itself).

`collect_runs` gives one row per run of the chosen experiments (trials and study parents, every
status); `seed_results` merges the FINISHED trials into one row per (table row, seed), the unit
that tables aggregate over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from mtbench.errors import MtbenchError
from mtbench.tasks import REPORT_ORDER
from mtbench.tracking import RUN_COLUMNS, load_runs

# Column order of tables: the order the field reports tasks in (PASCAL-Context, then NYUD-only ones).
TASK_ORDER = REPORT_ORDER
UNTAGGED = "(untagged)"
# Config params that never describe what a row is (bookkeeping, or the seed that rows aggregate over).
NOT_CONFIG_AXES = ("seed", "variant", "experiment", "description", "output_dir", "tracking.", "launcher.", "search.",
                   "grid.", "cost/", "train.device", "train.num_workers", "train.eval_batch_size",
                   "train.checkpoint_every", "dataset.root", "tasks", "select_metric", "reference_variant")
# Columns of runs.csv before the metrics (the `params` dict column is left out of the file).
RUN_FILE_COLUMNS = ("experiment", "label", *(c for c in RUN_COLUMNS if c not in ("experiment", "params", "tags")))


def tag_query(tags: Mapping[str, str], query: str | None = None) -> str | None:
    """Join `--tag key=value` filters and a free MLflow `--query` into one search filter."""
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if query:
        clauses.append(f"({query})" if clauses else query)
    return " and ".join(clauses) or None


def collect_runs(uri: str, experiments: Sequence[str], *, tags: Mapping[str, str] | None = None,
                 query: str | None = None) -> pd.DataFrame:
    """Return every run of `experiments` matching `tags` and `query`, one row each, every status.

    Adds `label`, the row a run belongs to in tables: its variant, prefixed with the experiment when
    several experiments are reported together. Raises MtbenchError when nothing matches.
    """
    runs = load_runs(uri, list(experiments), query=tag_query(tags or {}, query))
    if runs.empty:
        which = ", ".join(map(repr, experiments))
        filters = f" matching {tag_query(tags or {}, query)!r}" if tags or query else ""
        raise MtbenchError(f"no runs in experiment(s) {which}{filters} at {uri!r}. Check the filters, or run "
                           "trials with `mtbench run <experiment.yaml>` first.")
    variant = runs["variant"].fillna(UNTAGGED)
    runs.insert(1, "label", variant if len(experiments) == 1 else runs["experiment"] + "/" + variant)
    return runs


def finished_trials(runs: pd.DataFrame) -> pd.DataFrame:
    """The FINISHED trial runs (tables read these); raise when there are none, saying what there is."""
    finished = runs[(runs["kind"] == "trial") & (runs["status"] == "FINISHED")]
    if finished.empty:
        trials = runs[runs["kind"] == "trial"]
        found = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().sort_index().items())
        raise MtbenchError(
            f"no FINISHED runs among the {len(trials)} trial run(s) found ({found or 'none'}). Run trials to the "
            "end with `mtbench run <experiment.yaml>` (it resumes unfinished ones), then report again.")
    return finished.reset_index(drop=True)


def omitted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Trial runs that are not in the tables (FAILED, KILLED, pruned, still RUNNING): listed, never dropped silently."""
    return runs[(runs["kind"] == "trial") & (runs["status"] != "FINISHED")].reset_index(drop=True)


def config_keys(params: pd.Series) -> list[str]:
    """Config params (dotted keys) whose value differs between runs: the grid values and switches that
    tell rows apart. Bookkeeping keys and the seed are left out."""
    dicts = [p for p in params if isinstance(p, dict)]
    # An empty mapping (`model.options: {}`) is logged as "{}": it sets nothing, so it is not a value.
    keys = sorted({k for p in dicts for k, v in p.items() if not k.startswith(NOT_CONFIG_AXES) and v != "{}"})
    return [k for k in keys if len({p.get(k) for p in dicts}) > 1]


def runs_file(runs: pd.DataFrame) -> pd.DataFrame:
    """The tidy per-run frame written as runs.csv: run columns, the config values that differ between
    runs, then every test metric."""
    trials = runs["kind"] == "trial"
    keys = config_keys(runs.loc[trials, "params"])
    config = pd.DataFrame([[p.get(k) if trial else None for k in keys] for p, trial in zip(runs["params"], trials,
                                                                                          strict=True)],
                          columns=keys, index=runs.index)
    frame = pd.concat([runs[list(RUN_FILE_COLUMNS)], config, runs[metric_columns(runs)]], axis=1)
    return frame.sort_values(["experiment", "label", "seed", "start_time"])


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Return the `task/metric` columns of `frame` holding any value, in table order."""
    names = [c for c in frame.columns if c not in RUN_COLUMNS and "/" in c and frame[c].notna().any()]
    rank = {t: i for i, t in enumerate(TASK_ORDER)}
    return sorted(names, key=lambda c: (rank.get(c.split("/", 1)[0], len(rank)), c))


def seed_results(runs: pd.DataFrame) -> pd.DataFrame:
    """Merge FINISHED trial runs to one row per (label, seed): the unit tables aggregate over.

    Several runs of one seed are merged column by column, the later run winning (e.g. a single-task
    baseline run once per task, or a trial re-run from scratch). Columns: experiment, label, variant,
    seed, n_runs, run_ids, model, dataset, dataset_variant, protocol, checkpoint, params_m, gflops,
    input_size, then the metric columns.
    """
    metrics = metric_columns(runs)
    frame = runs.sort_values("start_time", kind="stable").copy()
    # A run without a seed tag counts as its own seed.
    frame["seed_key"] = [str(s) if pd.notna(s) else f"run:{r}" for s, r in zip(frame["seed"], frame["run_id"],
                                                                                  strict=True)]
    groups = frame.groupby(["label", "seed_key"], sort=False)
    kept = ["experiment", "variant", "seed", "model", "dataset", "dataset_variant", "protocol", "params_m", "gflops",
            "input_size"]
    merged = groups[[*kept, *metrics]].last()  # last non-null value per column
    merged["n_runs"] = groups.size()
    merged["run_ids"] = groups["run_id"].agg(";".join)
    merged["checkpoint"] = groups["checkpoint"].agg(lambda c: ",".join(sorted(set(c.dropna()))))
    merged = merged.reset_index().drop(columns="seed_key")
    return merged[["experiment", "label", "variant", "seed", "n_runs", "run_ids", "model", "dataset",
                   "dataset_variant", "protocol", "checkpoint", "params_m", "gflops", "input_size", *metrics]]
