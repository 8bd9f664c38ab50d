"""What each dense-prediction task is: output channels per dataset, loss, primary metric.

Task keys are exactly `semseg depth normals edge sal human_parts` (DESIGN.md). Label conventions
follow the Sample contract: semseg/human_parts long (H, W) with 255 = ignore; depth float
(1, H, W) with 0 = invalid; normals float (3, H, W) with a zero vector = invalid; edge float
(1, H, W) in {0, 1} with 255 = ignore; sal long (H, W) in {0, 1} with 255 = ignore.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtbench.errors import MtbenchError

TASK_NAMES = ("semseg", "depth", "normals", "edge", "sal", "human_parts")

# Dataset family of every dataset name: the real archives and their synthetic stand-ins.
DATASET_FAMILY = {
    "nyud": "nyud",
    "synthetic_nyud": "nyud",
    "pascal_context": "pascal_context",
    "synthetic_pascal": "pascal_context",
}

# Semantic classes of the synthetic scenes (mtbench.data.synthetic renders exactly these).
SYNTHETIC_SEMSEG_CLASSES = ("floor", "wall", "box", "sphere", "cylinder", "figure")
# The 6 human parts + background, as in PASCAL-Part's person mapping used by ATRC/MTI-Net.
HUMAN_PART_CLASSES = ("background", "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")


@dataclass(frozen=True)
class TaskSpec:
    """One task: its output channels per dataset, loss name and primary metric."""

    name: str
    channels: dict[str, int]
    loss: str
    primary_metric: str
    higher_is_better: bool

    def num_outputs(self, dataset: str) -> int:
        """Return the number of prediction channels for this task on `dataset`."""
        if dataset not in self.channels:
            raise MtbenchError(
                f"task {self.name!r} is not defined on dataset {dataset!r}; "
                f"it exists on: {', '.join(sorted(self.channels))}.")
        return self.channels[dataset]


def _same(n: int, *datasets: str) -> dict[str, int]:
    return {d: n for d in datasets}


_ALL = tuple(DATASET_FAMILY)
_NYUD = ("nyud", "synthetic_nyud")
_PASCAL = ("pascal_context", "synthetic_pascal")
_NSYN = len(SYNTHETIC_SEMSEG_CLASSES)

TASKS: dict[str, TaskSpec] = {
    "semseg": TaskSpec("semseg", {"nyud": 40, "pascal_context": 21, "synthetic_nyud": _NSYN,
                                  "synthetic_pascal": _NSYN}, "cross_entropy", "semseg/mIoU", True),
    "human_parts": TaskSpec("human_parts", _same(len(HUMAN_PART_CLASSES), *_PASCAL), "cross_entropy",
                            "human_parts/mIoU", True),
    "sal": TaskSpec("sal", _same(1, *_PASCAL), "balanced_bce", "sal/maxF", True),
    "depth": TaskSpec("depth", _same(1, *_NYUD), "l1_depth", "depth/rmse", False),
    "normals": TaskSpec("normals", _same(3, *_ALL), "l1_normals", "normals/mean", False),
    # odsF needs the boundary evaluation (metrics/boundary.py); until a run logs it, Δm leaves edge out.
    "edge": TaskSpec("edge", _same(1, *_ALL), "balanced_bce", "edge/odsF", True),
}

# Tasks of each dataset, in the order the field reports them.
DATASET_TASKS = {
    "nyud": ("semseg", "depth", "normals", "edge"),
    "synthetic_nyud": ("semseg", "depth", "normals", "edge"),
    "pascal_context": ("semseg", "human_parts", "sal", "normals", "edge"),
    "synthetic_pascal": ("semseg", "human_parts", "sal", "normals", "edge"),
}


def get_task(name: str) -> TaskSpec:
    """Return the TaskSpec for `name`, or raise MtbenchError naming the valid tasks."""
    if name not in TASKS:
        raise MtbenchError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}.")
    return TASKS[name]


def resolve_tasks(dataset: str, tasks: list[str] | None) -> tuple[str, ...]:
    """Return the task tuple for `dataset` (all of its tasks when `tasks` is None), checked."""
    if dataset not in DATASET_TASKS:
        raise MtbenchError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASET_TASKS)}.")
    available = DATASET_TASKS[dataset]
    if tasks is None:
        return available
    for t in tasks:
        get_task(t)
        if t not in available:
            raise MtbenchError(f"task {t!r} is not available on dataset {dataset!r} "
                               f"(it has {', '.join(available)}).")
    return tuple(t for t in available if t in tasks)
