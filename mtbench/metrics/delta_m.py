"""The multi-task score Δm against an explicit reference, and seed aggregation."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from mtbench.errors import MtbenchError
from mtbench.tasks import get_task

# Direction of every metric key a meter (or the boundary evaluation) reports: True = higher is better.
METRIC_DIRECTIONS: dict[str, bool] = {
    "semseg/mIoU": True, "semseg/pixel_acc": True,
    "human_parts/mIoU": True, "human_parts/pixel_acc": True,
    "sal/maxF": True,
    "depth/rmse": False, "depth/log_rmse": False, "depth/abs_rel": False, "depth/sq_rel": False,
    "normals/mean": False, "normals/median": False, "normals/rmse": False,
    "normals/11.25": True, "normals/22.5": True, "normals/30": True,
    "edge/loss_bce": False, "edge/odsF": True,
}


def delta_m(results: Mapping[str, float], reference: Mapping[str, float], *, tasks: Sequence[str],
            metrics: Mapping[str, str] | None = None) -> float:
    """Return Δm in percent: (100 / T) · Σ_t s_t · (M_t − B_t) / B_t over the T `tasks`.

    Maninis et al. (CVPR 2019) and Vandenhende et al. (TPAMI 2021): M_t is the task's primary metric in
    `results`, B_t the same metric in `reference` (single-task runs of the same protocol), s_t = +1 when
    higher is better and −1 otherwise (METRIC_DIRECTIONS). The primary metric is
    `mtbench.tasks.get_task(t).primary_metric` unless `metrics` maps the task to another key (e.g.
    {"edge": "edge/loss_bce"}). One metric per task, unlike LibMTL's `count_improvement`, which first
    averages over all metrics of a task.

    Worked example, tasks (semseg, depth):
        semseg/mIoU  M = 40.0, B = 38.0, higher better: +(40.0 − 38.0) / 38.0 = +0.052632
        depth/rmse   M = 0.60, B = 0.62, lower better:  −(0.60 − 0.62) / 0.62 = +0.032258
        Δm = 100 / 2 · (0.052632 + 0.032258) = +4.2445 (%)

    Raises MtbenchError when a task's metric is missing or non-finite in either dict, has no known
    direction, or its reference value is 0.
    """
    if not tasks:
        raise MtbenchError("delta_m needs at least one task.")
    overrides = dict(metrics or {})
    stray = sorted(set(overrides) - set(tasks))
    if stray:
        raise MtbenchError(f"delta_m: `metrics` names task(s) {', '.join(map(repr, stray))} that are not in "
                           f"`tasks` ({', '.join(tasks)}).")
    total = 0.0
    for task in tasks:
        key = overrides.get(task) or get_task(task).primary_metric
        if key not in METRIC_DIRECTIONS:
            raise MtbenchError(f"delta_m: metric {key!r} of task {task!r} has no known direction; "
                               f"known metrics: {', '.join(sorted(METRIC_DIRECTIONS))}.")
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
        sign = 1.0 if METRIC_DIRECTIONS[key] else -1.0
        total += sign * (m - b) / b
    return 100.0 * total / len(tasks)


def aggregate_seeds(values: Sequence[float]) -> dict[str, float]:
    """Return {'mean', 'std', 'n'} of per-seed values; std is the sample std (ddof = 1), NaN when n = 1."""
    if len(values) == 0:
        raise MtbenchError("aggregate_seeds needs at least one value.")
    vals = [float(v) for v in values]
    std = statistics.stdev(vals) if len(vals) > 1 else math.nan
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}
