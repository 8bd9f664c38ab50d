"""Aggregate per-seed results into one table: mean, std, n and 95% CI per row, Δm against a reference,
published rows beside them, and the checks that keep incomparable numbers out of one column.

Δm (Maninis et al.; PROTOCOLS.md) is computed for every seed run against the mean of the reference
row (or a published row), then aggregated over seeds like any other metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from mtbench.errors import MtbenchError
from mtbench.metrics import build_meter, delta_m, meter_variants
from mtbench.metrics.delta_m import signed_change
from mtbench.metrics.meter import split_metric_name, variant_metric_name
from mtbench.metrics.seed_stats import summarize_seeds
from mtbench.report.collect import TASK_ORDER, config_keys, metric_columns
from mtbench.report.published import PublishedRow, incomparability, published_rows
from mtbench.tasks import get_task

PUBLISHED = "published:"
NO_REFERENCE = "none"
CHANGE_COLUMNS = ["label", "model", "task", "seed", "change"]

@dataclass(frozen=True)
class Reference:
    """The Δm reference: a row of the table (mean over its seeds) or a published row."""

    label: str
    metrics: dict[str, float]
    description: str


@dataclass
class ResultTable:
    """Everything the table renderers and figures read.

    `summary`: one row per table row (index = label; runs first, the reference on top, published rows
    last) with kind ('run' | 'published'), model, cite, n_seeds, `<metric>_mean/_std/_ci95_low/_ci95_high`
    for every test metric and for `delta_m`, params_m, gflops, input_size, seeds, checkpoint, run_ids.
    """

    name: str
    summary: pd.DataFrame
    columns: dict[str, str]  # task -> the metric key its table column shows (primary metric, in its variant)
    metrics: list[str]  # every test metric of the runs, table order (CSV)
    per_seed: pd.DataFrame  # one row per (label, seed) with metrics and delta_m
    changes: pd.DataFrame  # tidy: label, model, task, seed, change (%; + = better than the reference)
    dataset_variant: str
    reference: Reference | None = None
    delta_tasks: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # task -> why Δm leaves it out
    delta_missing: str = ""  # why there is no Δm at all
    remarks: list[str] = field(default_factory=list)
    not_comparable: dict[str, str] = field(default_factory=dict)  # published row -> why it is not in the table
    axes: pd.DataFrame = field(default_factory=pd.DataFrame)  # label x switched config keys (ablation layout)

    @property
    def tasks(self) -> list[str]:
        return list(self.columns)


def _who(frame: pd.DataFrame) -> str:
    """Name rows of a per-seed frame compactly: "demt (seeds 0, 1); single_task (seed 0)"."""
    parts = []
    for label, seeds in frame.groupby("label", sort=True)["seed"]:
        shown = ", ".join(str(s) for s in seeds.dropna())
        parts.append(f"{label} (seed{'s' if len(seeds) > 1 else ''} {shown or '?'})")
    return "; ".join(parts)


def check_one_dataset(seeds: pd.DataFrame) -> str:
    """Return the one dataset variant of the runs; refuse runs on different datasets or archives."""
    variants = seeds["dataset_variant"].fillna(seeds["dataset"]).fillna("unknown")
    if variants.nunique() > 1:
        groups = "; ".join(f"{v}: {_who(seeds[variants == v])}" for v in sorted(variants.unique()))
        raise MtbenchError(
            f"the runs used different dataset variants ({groups}); numbers on different data cannot share a "
            "column. Report each separately, e.g. --tag mtbench.dataset_variant=" + str(sorted(variants.unique())[0])
            + ", or rerun on one archive.")
    return str(variants.iloc[0])


def task_columns(seeds: pd.DataFrame, variants: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map each task to the one key of its primary metric that every run computed it with.

    `variants` ({task: meter variant}) asks for a task's column in that variant (`sal: invpt` shows
    `sal/maxF-invpt`, which runs log beside the reference to meet InvPT's published row); every run must have
    logged it. Otherwise a task whose runs logged its primary metric under different metric variants only
    (some `sal/maxF`, others `sal/maxF-invpt`) is refused: those numbers are not comparable.
    """
    metrics = metric_columns(seeds)
    columns: dict[str, str] = {}
    for task in TASK_ORDER:
        base = get_task(task).primary_metric
        keys = [m for m in metrics if split_metric_name(m)[0] == base]
        if task in (variants or {}):
            columns[task] = chosen_variant_column(seeds, task, variants[task])
            continue
        if not keys:
            continue
        logged = seeds[keys].notna()
        full = [k for k in keys if logged[k].all()]
        if len(keys) == 1 or full:
            columns[task] = base if base in full else (full or keys)[0]
            continue
        groups = "; ".join(f"{k}: {_who(seeds[logged[k]])}" for k in keys)
        raise MtbenchError(
            f"{task}: the runs computed {base} with different metric variants ({groups}); numbers of "
            "different definitions cannot share a column. Report them separately (--tag / --query), or rerun "
            "with one variant (`mtbench list` shows what each variant reproduces).")
    return columns


def chosen_variant_column(seeds: pd.DataFrame, task: str, variant: str) -> str:
    """The logged name of `task`'s primary metric under meter `variant`; every run must have logged it."""
    if variant not in meter_variants(task):
        raise MtbenchError(f"--metric-variant {task}={variant}: unknown {task} metric variant; valid: "
                           f"{', '.join(meter_variants(task))}.")
    meter = build_meter(task, dataset=next(iter(get_task(task).channels)), variant=variant)  # names: any dataset
    key = variant_metric_name(get_task(task).primary_metric, meter.metric_variant)
    missing = seeds[seeds[key].isna()] if key in seeds.columns else seeds
    if not missing.empty:
        raise MtbenchError(f"--metric-variant {task}={variant}: {key} is not logged by {_who(missing)}; runs "
                           "log the variants of the published rows of their dataset since this version, so "
                           "older runs need `mtbench eval` of their checkpoint or a rerun.")
    return key


def _interval(values: pd.Series) -> tuple[float, float]:
    """95% t-interval of per-seed values (NaN with fewer than 2 seeds)."""
    values = values.dropna()
    if len(values) == 0:
        return math.nan, math.nan
    summary = summarize_seeds(values.tolist())
    return summary.ci_low, summary.ci_high


def _stats(values: pd.Series, groups: pd.Series, index: pd.Index, name: str) -> pd.DataFrame:
    """mean, sample std (ddof 1), 95% CI of `values` per group, as columns `<name>_mean` ..."""
    grouped = values.groupby(groups)
    intervals = grouped.agg(_interval).reindex(index)
    return pd.DataFrame({f"{name}_mean": grouped.mean().reindex(index),
                         f"{name}_std": grouped.std(ddof=1).reindex(index),
                         f"{name}_ci95_low": [lo for lo, _ in intervals],
                         f"{name}_ci95_high": [hi for _, hi in intervals]}, index=index)


def resolve_reference(seeds: pd.DataFrame, reference: str, columns: dict[str, str],
                      dataset_variant: str) -> Reference | None:
    """Turn `--reference` (a row label, `published:<row>` or `none`) into reference metric values."""
    if reference == NO_REFERENCE:
        return None
    if reference.startswith(PUBLISHED):
        from mtbench.report.published import published_row

        row = published_row(reference[len(PUBLISHED):])
        reason = incomparability(row, dataset_variant, list(columns.values()))
        if reason:
            raise MtbenchError(f"the published row {row.name!r} cannot be the Δm reference of these runs: {reason}.")
        return Reference(row.name, dict(row.metrics), f"{row.name} (published, {row.cite})")
    labels = list(dict.fromkeys(seeds["label"]))
    matches = [reference] if reference in labels else [x for x in labels if x.split("/")[-1] == reference]
    if len(matches) != 1:
        why = "is ambiguous" if matches else "has no FINISHED runs here"
        raise MtbenchError(
            f"Δm reference {reference!r} {why} (rows: {', '.join(labels)}). Name the reference row with "
            "--reference ROW, a published row with --reference published:PAPER/DATASET/BACKBONE, or "
            "--reference none for a table without Δm.")
    label = matches[0]
    rows = seeds[seeds["label"] == label]
    means = {key: float(rows[key].mean()) for key in columns.values() if rows[key].notna().any()}
    n = len(rows)
    return Reference(label, means, f"the mean of {label} ({n} seed{'s' if n > 1 else ''})")


def _delta_tasks(table: ResultTable, seeds: pd.DataFrame) -> None:
    """Choose the tasks Δm covers: every run and the reference must report the task's column."""
    ref = table.reference
    for task, key in table.columns.items():
        if key not in ref.metrics:
            table.excluded[task] = f"{key} is not in the reference {ref.label}"
        elif seeds[key].notna().all():
            table.delta_tasks.append(task)
        else:
            table.excluded[task] = f"{key} not logged by every run; missing for {_who(seeds[seeds[key].isna()])}"
    if not table.delta_tasks:
        table.delta_missing = f"no task's metric is reported by every run and by the reference {ref.label}"


def relative_change(key: str, value: float, base: float) -> float:
    """s · (M − B) / B in percent for metric `key` (+ = better than the reference value B)."""
    return 100.0 * signed_change(key, value, base)


def _relative_changes(seeds: pd.DataFrame, columns: dict[str, str], ref: Reference) -> pd.DataFrame:
    """Per seed and task: the relative change against the reference (tasks the reference reports)."""
    rows = [{"label": r["label"], "model": r["model"], "task": task, "seed": r["seed"],
             "change": relative_change(key, r[key], ref.metrics[key])}
            for task, key in columns.items() if ref.metrics.get(key)
            for _, r in seeds[seeds[key].notna()].iterrows()]
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def _published_label(row: PublishedRow, taken: set[str]) -> str:
    """"DeMT (Swin-T)", "InvPT (released ckpt, ViT-L)"; the row's full name when that is taken."""
    if not row.backbone:
        label = row.model
    elif row.model.endswith(")"):
        label = f"{row.model[:-1]}, {row.backbone})"
    else:
        label = f"{row.model} ({row.backbone})"
    return label if label not in taken else row.name


def _registered_model(paper: str) -> str:
    """The registry name of a paper's model (DeMT -> demt), so figures colour it like our runs of it."""
    from mtbench.registry import MODELS

    return paper.lower() if paper.lower() in MODELS else paper


def _add_published(table: ResultTable, rows: Sequence[PublishedRow]) -> pd.DataFrame:
    """Summary rows of the comparable published rows; the others go to `table.not_comparable`."""
    records, taken, changes = [], set(table.summary.index), []
    for row in rows:
        reason = incomparability(row, table.dataset_variant, list(table.columns.values()))
        if reason:
            table.not_comparable[row.name] = reason
            continue
        label = _published_label(row, taken)
        taken.add(label)
        model = _registered_model(row.paper)
        record: dict[str, object] = {"label": label, "kind": "published", "model": model, "cite": row.cite,
                                     "params_m": row.params_m, "gflops": row.gflops,
                                     "input_size": row.input_size or "not stated", "run_ids": row.source}
        for key in table.metrics:
            record[f"{key}_mean"] = row.metrics.get(key, math.nan)
        keys = {t: table.columns[t] for t in table.delta_tasks}
        base = table.reference.metrics if table.reference else {}
        if keys and all(k in row.metrics for k in keys.values()):
            record["delta_m_mean"] = delta_m(row.metrics, base, tasks=list(keys), metrics=keys)
        changes += [(label, model, t, math.nan, relative_change(k, row.metrics[k], base[k]))
                    for t, k in table.columns.items() if k in row.metrics and base.get(k)]
        if row.caveat:
            table.remarks.append(f"{label}: {row.caveat}")
        records.append(record)
    if changes:
        table.changes = pd.concat([table.changes, pd.DataFrame(changes, columns=CHANGE_COLUMNS)], ignore_index=True)
    return pd.DataFrame(records).set_index("label") if records else pd.DataFrame()


def _as_param(value: object) -> str:
    """A config value as MLflow holds it as a param (see tracking.flatten_config)."""
    return json.dumps(list(value)) if isinstance(value, list | tuple) else str(value)


def config_axes(runs: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """The config keys that differ between rows (the switched components of an ablation), one column each.

    Options a row's model has but did not set are filled with the model's default, so that the unchanged
    baseline reads as ✓ on every switch; options its model does not have stay empty.
    """
    from mtbench.models import model_options
    from mtbench.registry import MODELS

    first = runs.drop_duplicates("label").set_index("label").reindex(labels)
    params = {label: dict(p) if isinstance(p, dict) else {} for label, p in first["params"].items()}
    keys = config_keys(first["params"])
    values = pd.DataFrame({k: [params[label].get(k) for label in labels] for k in keys}, index=pd.Index(labels))
    for label, model in first["model"].items():
        defaults = model_options(model) if model in MODELS else {}  # runs may predate a model's removal
        for key in keys:
            option = key.removeprefix("model.options.")
            if key != option and pd.isna(values.at[label, key]) and option in defaults:
                values.at[label, key] = _as_param(defaults[option])
    varying = [k for k in keys if values[k].nunique(dropna=False) > 1]
    return values[varying]


def summarize(seeds: pd.DataFrame, runs: pd.DataFrame, *, name: str, reference: str = "single_task",
              with_published: str | None = None, variants: Mapping[str, str] | None = None) -> ResultTable:
    """Aggregate `collect.seed_results` rows (and their runs, for config axes) into a ResultTable.

    `reference` is a row label (default: the single-task runs), `published:<row>` or `none`;
    `with_published` ('nyud' or 'pascal') adds the comparable published rows of that dataset; `variants`
    ({task: meter variant}) picks the definition a task's column shows (`task_columns`).
    """
    dataset_variant = check_one_dataset(seeds)
    columns = task_columns(seeds, variants)
    metrics = metric_columns(seeds)
    ref = resolve_reference(seeds, reference, columns, dataset_variant)
    labels = list(dict.fromkeys(seeds["label"]))
    if ref is not None and ref.label in labels:
        labels.remove(ref.label)
        labels.insert(0, ref.label)
    index = pd.Index(labels, name="label")
    groups = seeds.groupby("label", sort=False)
    parts = [pd.DataFrame({"kind": "run", "model": groups["model"].first().reindex(index), "cite": "",
                           "n_seeds": groups.size().reindex(index)}, index=index)]
    parts += [_stats(seeds[m], seeds["label"], index, m) for m in metrics]
    table = ResultTable(name, pd.concat(parts, axis=1), columns, metrics, per_seed=seeds.copy(),
                        changes=pd.DataFrame(columns=CHANGE_COLUMNS),
                        dataset_variant=dataset_variant, reference=ref)
    per_seed_delta = pd.Series(math.nan, index=seeds.index)
    if ref is None:
        table.delta_missing = "no reference was chosen (--reference none)"
    else:
        _delta_tasks(table, seeds)
        table.changes = _relative_changes(seeds, columns, ref)
    if table.delta_tasks:
        keys = {t: columns[t] for t in table.delta_tasks}
        per_seed_delta = seeds.apply(lambda r: delta_m({k: float(r[k]) for k in keys.values()}, ref.metrics,
                                                       tasks=list(keys), metrics=keys), axis=1)
    table.per_seed["delta_m"] = per_seed_delta
    table.summary = table.summary.join(_stats(per_seed_delta, seeds["label"], index, "delta_m"))
    table.summary["params_m"] = groups["params_m"].mean().reindex(index)
    table.summary["gflops"] = groups["gflops"].mean().reindex(index)
    table.summary["input_size"] = groups["input_size"].agg(lambda s: ",".join(sorted(set(s.dropna())))).reindex(index)
    table.summary["seeds"] = groups["seed"].agg(lambda s: ";".join(str(v) for v in s.dropna())).reindex(index)
    table.summary["checkpoint"] = groups["checkpoint"].agg(
        lambda c: ",".join(sorted({x for joined in c for x in str(joined).split(",") if x}))).reindex(index)
    table.summary["run_ids"] = groups["run_ids"].agg(";".join).reindex(index)
    table.axes = config_axes(runs, labels)
    _remarks(table, seeds)
    if with_published:
        published = _add_published(table, published_rows(with_published))
        if not published.empty:
            table.summary = pd.concat([table.summary, published])
    return table


def _remarks(table: ResultTable, seeds: pd.DataFrame) -> None:
    merged = seeds[seeds["n_runs"] > 1]
    if not merged.empty:
        table.remarks.append(f"several runs share a row and seed and were merged, the later run winning per "
                             f"metric: {_who(merged)}")
    checkpoints = table.summary["checkpoint"].dropna()
    if checkpoints.str.contains(",").any() or checkpoints.nunique() > 1:
        table.remarks.append("runs were tested on different checkpoints (final vs best_val); see results.csv")
    protocols = seeds["protocol"].dropna().unique()
    if len(protocols) > 1:
        table.remarks.append(f"runs used different training protocols ({', '.join(sorted(protocols))}); Δm "
                             "assumes the reference was trained under the same protocol")
    sizes = seeds.groupby("label")["gflops"].nunique()
    if (sizes > 1).any():
        table.remarks.append(f"GFLOPs differ between seeds of {', '.join(sizes[sizes > 1].index)}; the mean is shown")
