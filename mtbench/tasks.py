"""What each dense-prediction task is: the one place that knows a task by its name.

A `TaskSpec` owns everything per task (DESIGN.md "Task"): the label's layout, dtype and ignore value,
the prediction channels (class counts) per dataset, the loss and its options, the primary metric and
its direction, the metric that validation logs, the meters that only the final test runs, how its
labels move under the data transforms, how a prediction is resized back to its label's size and how a
prediction becomes an image. Losses, meters, transforms, datasets, evaluation, visualisation and reports
read these fields; no other module branches on a task's name. Adding a task is one `TaskSpec` here plus
its loss (mtbench.losses) and meter (mtbench.metrics).

Task keys are exactly `semseg depth normals edge sal human_parts`. Sample conventions (DESIGN.md):
semseg/human_parts long (H, W) with IGNORE = ignore; depth float (1, H, W) with 0 = invalid; normals
float (3, H, W) with a zero vector = invalid; edge float (1, H, W) in {0, 1} with IGNORE = ignore; sal
long (H, W) in {0, 1} with IGNORE = ignore.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor

from mtbench.errors import MtbenchError

TASK_NAMES = ("semseg", "depth", "normals", "edge", "sal", "human_parts")
# The order of columns in reports (the field's tables list the PASCAL tasks first, then NYUD's).
REPORT_ORDER = ("semseg", "human_parts", "sal", "depth", "normals", "edge")

# Label value of an ignored pixel in every class map and in the edge map (the Sample contract).
IGNORE = 255

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

Target = Literal["class_map", "dense"]
Display = Literal["labels", "probability", "scalar_map", "direction_rgb"]
ResizeBack = Literal["nearest", "linear", "linear_unit", "linear_probability"]


@dataclass(frozen=True)
class TaskSpec:
    """One task. See the module docstring for what reads each field.

    Label (Sample) side:
      target: "class_map", an integer (H, W) map (B, H, W in a batch), or "dense", a float
        (target_channels, H, W) map of the prediction's shape.
      ignore: the label value of ignored pixels, or None when validity is read from the value
        (depth 0, normals the zero vector); `fill` is what padding writes (ignore, else 0).
      scales_with_zoom: the value is divided by the zoom factor when an image is rescaled (depth).
      unit_vectors: (x, y, z) directions: x changes sign on a horizontal flip, the in-plane part turns
        with a rotation, resampling is smooth and renormalised (normals).
      ignored_without_foreground: a map holding no foreground class is ignored whole (ATRC/MTI-Net
        AddIgnoreRegions for human parts).
      balances_crop: ATRC's random crop re-draws until this map's classes are balanced (semseg).
    Prediction side:
      channels: prediction channels per dataset (the class count for class maps).
      two_logit_head: a binary task that also accepts a 2-channel softmax head, scored on z1 - z0.
      loss, loss_options: the loss (mtbench.losses.LOSSES) and its default options.
      primary_metric, higher_is_better: the metric of Δm and of the report, and its direction.
      validation_metric: what validation logs for it (edge logs the balanced-BCE proxy, odsF is slow).
      test_meters: metric variants that only the final test runs (edge's SEISM odsF/oisF/AP).
      display: how a prediction becomes an image.
      resize_back: how a prediction is resized to its label's size when they differ (the mtinet eval scores
        at each image's original size; mtbench.engine.evaluate.resize_prediction): "nearest" the logits
        (= argmax, then OpenCV INTER_NEAREST), "linear" the raw value, "linear_unit" the L2-normalised
        vectors, "linear_probability" the probability, returned as logits; linear = INTER_LINEAR. As MTI-Net
        resizes its saved outputs (SimonVandenhende/Multi-Task-Learning-PyTorch: utils/utils.py::get_output,
        utils/config.py::parse_task_dictionary INFER_FLAGVALS).
    """

    name: str
    channels: Mapping[str, int]
    target: Target
    loss: str
    primary_metric: str
    higher_is_better: bool
    display: Display
    resize_back: ResizeBack
    target_channels: int = 1
    ignore: int | None = IGNORE
    scales_with_zoom: bool = False
    unit_vectors: bool = False
    ignored_without_foreground: bool = False
    balances_crop: bool = False
    two_logit_head: bool = False
    loss_options: Mapping[str, Any] = field(default_factory=dict)
    validation_metric: str = ""
    test_meters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))
        object.__setattr__(self, "loss_options", MappingProxyType(dict(self.loss_options)))
        if not self.validation_metric:
            object.__setattr__(self, "validation_metric", self.primary_metric)

    @property
    def fill(self) -> int:
        """The label value that padding writes: the ignore value, or 0 (invalid) for depth and normals."""
        return 0 if self.ignore is None else self.ignore

    @property
    def is_class_map(self) -> bool:
        return self.target == "class_map"

    def num_outputs(self, dataset: str) -> int:
        """Return the number of prediction channels for this task on `dataset`."""
        if dataset not in self.channels:
            raise MtbenchError(
                f"task {self.name!r} is not defined on dataset {dataset!r}; "
                f"it exists on: {', '.join(sorted(self.channels))}.")
        return self.channels[dataset]

    def head_channels(self, dataset: str, *, two_logits: bool = False) -> int:
        """Channels of this task's prediction head: `num_outputs`, or 2 for a binary task built with a 2-channel
        softmax head (`two_logits`, as ATRC, DeMT and InvPT release saliency); other tasks ignore the flag."""
        return 2 if two_logits and self.two_logit_head else self.num_outputs(dataset)

    def accepted_channels(self, dataset: str | None) -> tuple[int, ...]:
        """Prediction channel counts this task scores on `dataset` (None: any dataset it exists on)."""
        counts = sorted(set(self.channels.values())) if dataset is None else [self.num_outputs(dataset)]
        return tuple(counts + [2] if self.two_logit_head and 2 not in counts else counts)

    def check_tensors(self, pred: Tensor, target: Tensor, *, channels: int | tuple[int, ...]) -> None:
        """Raise MtbenchError unless `pred` and `target` have this task's layouts; never broadcast.

        `pred` must be a floating (B, C, H, W) tensor with C in `channels`. A class-map target must be an
        integer (B, H, W) map; a dense one a floating (B, C, H, W) map of the prediction's shape.
        """
        allowed = (channels,) if isinstance(channels, int) else channels
        if pred.dim() != 4 or not pred.is_floating_point():
            raise MtbenchError(f"{self.name}: the prediction must be a floating (B, C, H, W) tensor; "
                               f"got {pred.dtype} of shape {tuple(pred.shape)}.")
        if pred.shape[1] not in allowed:
            raise MtbenchError(f"{self.name}: the prediction has {pred.shape[1]} channels; expected "
                               f"{' or '.join(map(str, allowed))} (shape {tuple(pred.shape)}).")
        b, c, h, w = pred.shape
        if self.is_class_map:
            want, kind = (b, h, w), "an integer (B, H, W) class map"
            dtype_ok = not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool
        else:
            want, kind = (b, c, h, w), "a floating (B, C, H, W) map"
            dtype_ok = target.is_floating_point()
        if tuple(target.shape) != want or not dtype_ok:
            raise MtbenchError(f"{self.name}: the target must be {kind} of shape {want} to match the prediction "
                               f"{tuple(pred.shape)}; got {target.dtype} of shape {tuple(target.shape)}.")


def _same(n: int, *datasets: str) -> dict[str, int]:
    return {d: n for d in datasets}


_ALL = tuple(DATASET_FAMILY)
_NYUD = ("nyud", "synthetic_nyud")
_PASCAL = ("pascal_context", "synthetic_pascal")
_NSYN = len(SYNTHETIC_SEMSEG_CLASSES)

TASKS: Mapping[str, TaskSpec] = MappingProxyType({
    "semseg": TaskSpec(
        "semseg", {"nyud": 40, "pascal_context": 21, "synthetic_nyud": _NSYN, "synthetic_pascal": _NSYN},
        target="class_map", loss="cross_entropy", primary_metric="semseg/mIoU", higher_is_better=True,
        display="labels", resize_back="nearest", balances_crop=True),
    "human_parts": TaskSpec(
        "human_parts", _same(len(HUMAN_PART_CLASSES), *_PASCAL), target="class_map", loss="cross_entropy",
        primary_metric="human_parts/mIoU", higher_is_better=True, display="labels", resize_back="nearest",
        ignored_without_foreground=True),
    # Saliency: a {0, 1} class map trained with the automatic (HED) positive weight of the batch.
    "sal": TaskSpec(
        "sal", _same(1, *_PASCAL), target="class_map", loss="balanced_bce", primary_metric="sal/maxF",
        higher_is_better=True, display="probability", resize_back="linear_probability", two_logit_head=True,
        loss_options={"pos_weight": None}),
    "depth": TaskSpec(
        "depth", _same(1, *_NYUD), target="dense", loss="l1_depth", primary_metric="depth/rmse",
        higher_is_better=False, display="scalar_map", resize_back="linear", ignore=None, scales_with_zoom=True),
    "normals": TaskSpec(
        "normals", _same(3, *_ALL), target="dense", target_channels=3, loss="l1_normals",
        primary_metric="normals/mean", higher_is_better=False, display="direction_rgb", resize_back="linear_unit",
        ignore=None, unit_vectors=True),
    # odsF needs the boundary evaluation (metrics/boundary.py): too slow for validation, which logs the
    # balanced-BCE proxy; positive weight 0.95 as InvPT and MTI-Net (ATRC's NYUD 0.8 is passed explicitly).
    "edge": TaskSpec(
        "edge", _same(1, *_ALL), target="dense", loss="balanced_bce", primary_metric="edge/odsF",
        higher_is_better=True, display="probability", resize_back="linear_probability",
        loss_options={"pos_weight": 0.95}, validation_metric="edge/loss_bce", test_meters=("odsf_nms",)),
})

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


def check_task_tensors(task: str, pred: Tensor, target: Tensor, *, channels: int | tuple[int, ...]) -> None:
    """`TaskSpec.check_tensors` of task `task`."""
    get_task(task).check_tensors(pred, target, channels=channels)


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
