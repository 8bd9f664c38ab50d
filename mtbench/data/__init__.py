"""The data layer: `build_dataset` and the registered datasets (importing registers them)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mtbench.data import dataset as _synthetic_datasets  # noqa: F401  (registers synthetic_*)
from mtbench.data import nyud as _nyud  # noqa: F401  (registers nyud)
from mtbench.data import pascal_context as _pascal_context  # noqa: F401  (registers pascal_context)
from mtbench.registry import DATASETS, check_keywords
from mtbench.tasks import resolve_tasks

_COMMON = ("root", "split", "tasks", "protocol")
# The protocol a trial trains and evaluates with when the config names none.
DEFAULT_PROTOCOL = {"nyud": "atrc", "pascal_context": "atrc"}


def build_dataset(name: str, *, root: str | Path | None = None, split: str,
                  tasks: Sequence[str] | None = None, protocol: str | None = None,
                  **options: Any) -> Dataset:
    """Build dataset `name` for `split` with `tasks` (None = all of the dataset's tasks).

    With protocol=None a sample is the ground truth at its original size, unaugmented. Unknown
    names, tasks and options are user errors (MtbenchError) with the valid choices; `options` are
    checked against the builder's keywords, so a typo is named rather than raised as TypeError.
    Synthetic datasets ignore `root`.
    """
    builder = DATASETS.get(name)
    check_keywords(options, [p for p in inspect.signature(builder).parameters if p not in _COMMON],
                   f"dataset {name!r}")
    task_list = None if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    return builder(root=root, split=split, tasks=resolve_tasks(name, task_list), protocol=protocol,
                   **options)


__all__ = ["DEFAULT_PROTOCOL", "build_dataset"]
