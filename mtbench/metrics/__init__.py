"""Meters (one module per task family), the metric directions and the multi-task score Δm.

Importing this package registers every meter in `mtbench.registry.METERS`, keyed by the task for its
reference definition and `task:variant` for a named variant (PROTOCOLS.md "Metrics").
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from mtbench.errors import MtbenchError
from mtbench.metrics import depth, edge, normals, saliency, segmentation  # noqa: F401  (registers meters)
from mtbench.metrics.delta_m import METRIC_DIRECTIONS, aggregate_seeds, delta_m
from mtbench.metrics.meter import Meter
from mtbench.registry import METERS
from mtbench.tasks import get_task

__all__ = ["METRIC_DIRECTIONS", "Meter", "aggregate_seeds", "build_meter", "delta_m", "meter_variants"]

REFERENCE = "reference"


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
        raise MtbenchError(f"unknown {task} metric variant {name!r}; valid: {', '.join(meter_variants(task))}.")
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
