"""The multi-task score Δm against an explicit reference, and seed aggregation."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from mtbench.errors import MtbenchError
from mtbench.metrics.meter import metric_direction, split_metric_name
from mtbench.tasks import get_task

DELTA_M_VARIANTS = ("mtl", "libmtl")


def delta_m(results: Mapping[str, float], reference: Mapping[str, float], *, tasks: Sequence[str],
            metrics: Mapping[str, str | Sequence[str]] | None = None, variant: str = "mtl") -> float:
    """Return Δm in percent over the `tasks`, by the named definition `variant`.

    `mtl` (default; Maninis et al., CVPR 2019; Vandenhende et al., TPAMI 2021): one metric per task,
        Δm = (100 / T) · Σ_t s_t · (M_t − B_t) / B_t,
    with M_t the task's primary metric in `results`, B_t the same metric in `reference` (single-task
    runs of the same protocol, or a published row), s_t = +1 when higher is better and −1 otherwise
    (`metric_direction`). The metric is `mtbench.tasks.get_task(t).primary_metric` unless `metrics`
    maps the task to another key (e.g. {"sal": "sal/maxF-mtinet"}).

    `libmtl` (LibMTL `count_improvement`): each task first averages s · (M − B) / B over all of its
    metrics, then Δm = (100 / T) · Σ_t of those averages. A task's metrics are `metrics[t]` (a list of
    keys) or, by default, every `t/...` key that both dicts hold, losses excluded.

    Worked example (`mtl`), tasks (semseg, depth):
        semseg/mIoU  M = 40.0, B = 38.0, higher better: +(40.0 − 38.0) / 38.0 = +0.052632
        depth/rmse   M = 0.60, B = 0.62, lower better:  −(0.60 − 0.62) / 0.62 = +0.032258
        Δm = 100 / 2 · (0.052632 + 0.032258) = +4.2445 (%)
    Same numbers with `libmtl` and depth metrics (rmse, abs_rel) where abs_rel M = 0.20, B = 0.16:
        depth: (+0.032258 − 0.25) / 2 = −0.108871; Δm = 100 / 2 · (0.052632 − 0.108871) = −2.8120 (%)

    Raises MtbenchError when a metric is missing or non-finite in either dict, has no known
    direction, or its reference value is 0.
    """
    if variant not in DELTA_M_VARIANTS:
        raise MtbenchError(f"unknown Δm variant {variant!r}; valid: {', '.join(DELTA_M_VARIANTS)}.")
    if not tasks:
        raise MtbenchError("delta_m needs at least one task.")
    overrides = dict(metrics or {})
    stray = sorted(set(overrides) - set(tasks))
    if stray:
        raise MtbenchError(f"delta_m: `metrics` names task(s) {', '.join(map(repr, stray))} that are not in "
                           f"`tasks` ({', '.join(tasks)}).")
    total = 0.0
    for task in tasks:
        if variant == "mtl":
            keys = [overrides.get(task) or get_task(task).primary_metric]
        else:
            keys = list(overrides.get(task) or [k for k in results if k.startswith(f"{task}/") and k in reference
                                                and "loss" not in k])
            if not keys:
                raise MtbenchError(f"delta_m (libmtl): task {task!r} has no metric in both the results and "
                                   "the reference.")
        total += sum(_relative_change(task, str(k), results, reference) for k in keys) / len(keys)
    return 100.0 * total / len(tasks)


def _relative_change(task: str, key: str, results: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """s · (M − B) / B for one metric, with the checks that make a wrong Δm impossible to miss."""
    try:
        _direction(key)
    except MtbenchError as err:
        raise MtbenchError(f"delta_m: metric {key!r} of task {task!r} has no known direction: {err}") from None
    for name, values in (("results", results), ("reference", reference)):
        if key not in values:
            raise MtbenchError(f"delta_m: task {task!r} has no {key!r} in the {name}; log it, pick "
                               f"another metric with `metrics`, or leave the task out of `tasks`.")
        if not math.isfinite(values[key]):
            raise MtbenchError(f"delta_m: {key!r} of task {task!r} is {values[key]} in the {name}.")
    m, b = float(results[key]), float(reference[key])
    if b == 0:
        raise MtbenchError(f"delta_m: the reference {key!r} of task {task!r} is 0, so the relative "
                           f"change is undefined.")
    return signed_change(key, m, b)


def signed_change(key: str, value: float, base: float) -> float:
    """s · (M − B) / B for metric `key` (a fraction; > 0 = better than B): one task's term of Δm."""
    return (1.0 if _direction(key) else -1.0) * (float(value) - base) / base


def _direction(key: str) -> bool:
    """The direction of `key`'s definition: a named variant (`sal/maxF-invpt`) has that of `sal/maxF`."""
    return metric_direction(split_metric_name(key)[0])


def aggregate_seeds(values: Sequence[float]) -> dict[str, float]:
    """Return {'mean', 'std', 'n'} of per-seed values; std is the sample std (ddof = 1), NaN when n = 1."""
    if len(values) == 0:
        raise MtbenchError("aggregate_seeds needs at least one value.")
    vals = [float(v) for v in values]
    std = statistics.stdev(vals) if len(vals) > 1 else math.nan
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}
