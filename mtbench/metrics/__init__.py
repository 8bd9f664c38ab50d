"""Meters (one module per task family), the metric directions and the multi-task score Δm.

Importing this package registers every meter in `mtbench.registry.METERS`, keyed by the task for its
reference definition and `task:variant` for a named variant (PROTOCOLS.md "Metrics"); each task module's
docstring lists its variants and the code each one reproduces.

Metric names: a reference meter logs `task/metric` (`sal/maxF`); a named variant logs
`task/metric-variant` (`sal/maxF-invpt`, `semseg/mIoU-libmtl`, `normals/mean-mtinet_png`), so numbers
computed under different definitions never share a column. An alias of the reference (sal's `atrc`)
logs the plain names. `variant_metric_name` builds a name, `split_metric_name` takes it apart.

Directions: each meter declares whether higher is better for every `task/metric` it reports where it is
registered (`mtbench.registry.register_meter(..., directions=...)`). `metric_direction(name)` reads it for
any name a meter can log: each `task/metric` under each named variant of the task has the direction of
`task/metric` (so it also resolves a few names no meter reports, such as `depth/rmse-mtan`);
`metric_directions(tasks)` lists the declared keys. Variant names are snake_case and never hold the dash.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from mtbench.errors import MtbenchError
from mtbench.metrics import depth, edge, normals, saliency, segmentation  # noqa: F401  (registers meters)
from mtbench.metrics.delta_m import aggregate_seeds, delta_m
from mtbench.metrics.meter import (
    REFERENCE,
    Meter,
    metric_direction,
    metric_directions,
    split_metric_name,
    variant_metric_name,
)
from mtbench.registry import METERS, check_keywords
from mtbench.tasks import get_task

__all__ = ["REFERENCE", "Meter", "aggregate_seeds", "build_meter", "delta_m", "meter_variants", "metric_direction",
           "is_reference", "metric_directions", "split_metric_name", "variant_metric_name"]


def meter_variants(task: str) -> list[str]:
    """Return the metric variants of `task`: 'reference' first, then the named ones."""
    named = sorted(k.split(":", 1)[1] for k in METERS.names() if k.startswith(f"{task}:"))
    return [REFERENCE, *named]


def is_reference(task: str, variant: str) -> bool:
    """Whether meter `variant` of `task` is the reference definition itself or an alias of it (sal's `atrc`)."""
    key = f"{task}:{variant}"
    return variant == REFERENCE or (key in METERS and METERS.get(key) is METERS.get(task))


def build_meter(task: str, *, dataset: str | None = None, variant: str | None = None, **options: Any) -> Meter:
    """Return a fresh meter for `task`; `variant` None or 'reference' is the reference definition.

    `dataset` gives the number of classes (semseg, human_parts) and checks that the task exists there.
    `options` are the variant's own settings (edge: `pos_weight`), checked by name.
    """
    get_task(task)
    name = REFERENCE if variant is None else variant
    key = task if name == REFERENCE else f"{task}:{name}"
    if key not in METERS:
        valid = meter_variants(task)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MtbenchError(f"unknown {task} metric variant {name!r}{hint}; valid: {', '.join(valid)}.")
    build = METERS.get(key).build
    accepted = [p for p in inspect.signature(build).parameters if p not in ("dataset", "variant")]
    check_keywords(options, accepted, f"the {task} meter ({name})")
    return build(dataset=dataset, variant=name, **options)
