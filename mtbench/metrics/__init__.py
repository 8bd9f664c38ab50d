"""Meters (one module per task family), the metric directions and the multi-task score Δm.

Importing this package registers every meter in `mtbench.registry.METERS`, keyed by the task for its
reference definition and `task:variant` for a named variant (PROTOCOLS.md "Metrics"); each task module's
docstring lists its variants and the code each one reproduces.

Metric names: a reference meter logs `task/metric` (`sal/maxF`); a named variant logs
`task/metric-variant` (`sal/maxF-invpt`, `semseg/mIoU-libmtl`, `normals/mean-mtinet_png`), so numbers
computed under different definitions never share a column. An alias of the reference (sal's `atrc`)
logs the plain names. `variant_metric_name` builds a name, `split_metric_name` takes it apart, and
`METRIC_DIRECTIONS` gives a direction for every name a meter can log: each `task/metric` under each
registered variant of the task inherits the direction of `task/metric` (so it also lists a few names no
meter reports, such as `depth/rmse-mtan`). Variant names are snake_case and never hold the dash.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from mtbench.errors import MtbenchError
from mtbench.metrics import depth, edge, normals, saliency, segmentation  # noqa: F401  (registers meters)
from mtbench.metrics.delta_m import METRIC_DIRECTIONS, aggregate_seeds, delta_m
from mtbench.metrics.meter import Meter, split_metric_name, variant_metric_name
from mtbench.registry import METERS
from mtbench.tasks import get_task

__all__ = ["METRIC_DIRECTIONS", "Meter", "aggregate_seeds", "build_meter", "delta_m", "meter_variants",
           "split_metric_name", "variant_metric_name"]

REFERENCE = "reference"

# Metrics that only named variants report (delta_m.py lists those of the reference meters).
METRIC_DIRECTIONS.update({"sal/mIoU": True, "depth/abs_err": False, "edge/oisF": True, "edge/AP": True})


def _add_variant_directions() -> None:
    """Give every `task/metric-variant` name of a registered variant the direction of `task/metric`."""
    for key in METERS.names():
        task, _, variant = key.partition(":")
        if not variant or METERS.get(key) is METERS.get(task):  # the reference, or an alias of it
            continue
        for name, higher_is_better in list(METRIC_DIRECTIONS.items()):
            if name.startswith(f"{task}/") and split_metric_name(name)[1] is None:
                METRIC_DIRECTIONS[variant_metric_name(name, variant)] = higher_is_better


_add_variant_directions()


def meter_variants(task: str) -> list[str]:
    """Return the metric variants of `task`: 'reference' first, then the named ones."""
    named = sorted(k.split(":", 1)[1] for k in METERS.names() if k.startswith(f"{task}:"))
    return [REFERENCE, *named]


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
    builder = METERS.get(key)
    accepted = [p for p in inspect.signature(builder).parameters if p != "dataset"]
    for opt in options:
        if opt not in accepted:
            close = difflib.get_close_matches(opt, accepted, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            valid = ", ".join(accepted) or "none"
            raise MtbenchError(f"unknown option {opt!r} for the {task} meter ({name}).{hint} "
                               f"Its options: {valid}.")
    meter = builder(dataset=dataset, **options)
    meter.variant = name
    return meter
