"""Per-task losses (the balancers that combine them are in mtbench.balancing).

Losses follow the ATRC lineage (brdav/atrc: src/model/criterion.py, src/model/builder.py::get_criterion),
reading labels in the Sample conventions of DESIGN.md (each task's ignore value and layout from its TaskSpec)
rather than ATRC's maps. Each task's loss is `LOSSES[TaskSpec.loss]` with `TaskSpec.loss_options`.
Every loss averages over the valid pixels of the batch and is 0 (still attached to the graph) when there
are none, so a batch whose human_parts map is fully ignored does not produce NaN.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.balanced_bce import balanced_bce_sum
from mtbench.errors import MtbenchError
from mtbench.registry import LOSSES, check_keywords
from mtbench.tasks import TaskSpec, get_task

# Fixed task weights of ATRC, also used by DeMT and InvPT (brdav/atrc: src/model/builder.py::get_criterion).
ATRC_LOSS_WEIGHTS: dict[str, float] = {
    "semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "depth": 1.0, "edge": 50.0}


class CrossEntropyLoss(nn.Module):
    """Cross-entropy of (B, C, H, W) logits against a (B, H, W) long map; the task's ignore value is ignored.

    Sum over valid pixels divided by their count (0 when none), as ATRC's
    `src/model/criterion.py::CrossEntropyLoss` with reduction 'mean'.
    """

    def __init__(self, spec: TaskSpec, num_classes: int) -> None:
        super().__init__()
        self.spec, self.num_classes = spec, num_classes

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        self.spec.check_tensors(pred, target, channels=self.num_classes)
        ignore = self.spec.fill
        loss = F.cross_entropy(pred, target.long(), ignore_index=ignore, reduction="sum")
        return loss / (target != ignore).sum().clamp(min=1)


class DepthL1Loss(nn.Module):
    """Mean absolute error of (B, 1, H, W) depth over pixels with ground truth > 0 (0 = invalid).

    ATRC's `src/model/criterion.py::L1Loss()` (there invalid depth is stored as 255 instead of 0).
    """

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        self.spec.check_tensors(pred, target, channels=1)
        valid = target > 0
        err = torch.where(valid, (pred - target).abs(), torch.zeros_like(pred))
        return err.sum() / valid.sum().clamp(min=1)


class NormalsL1Loss(nn.Module):
    """L1 between the L2-normalised (B, 3, H, W) prediction and the target, over valid pixels.

    The absolute differences of the three components are summed and divided by the number of valid
    `pixels` (ATRC's `brdav/atrc: src/model/criterion.py::L1Loss(normalize=True)`, the default) or of valid
    `elements`, 3 per valid pixel (`SimonVandenhende/Multi-Task-Learning-PyTorch:
    losses/loss_functions.py::NormalsLoss`, MTI-Net and PAD-Net): the same loss divided by 3. Valid = target
    norm > 0; the target is used as given (unit length in the datasets).
    """

    def __init__(self, spec: TaskSpec, normalize_by: str = "pixels") -> None:
        super().__init__()
        self.spec, self.normalize_by = spec, normalize_by

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        self.spec.check_tensors(pred, target, channels=3)
        valid = (target * target).sum(dim=1, keepdim=True) > 0  # norm > 0; a norm over NCHW channels is slow
        err = (F.normalize(pred, p=2, dim=1) - target).abs()
        err = torch.where(valid, err, torch.zeros_like(err))
        count = valid.sum() * (3 if self.normalize_by == "elements" else 1)
        return err.sum() / count.clamp(min=1)


class BalancedBCELoss(nn.Module):
    """Class-balanced BCE on (B, 1, H, W) logits. See `mtbench.balanced_bce.balanced_bce_sum` for the formula.

    Edge uses a fixed positive weight w (ATRC `BalancedBinaryCrossEntropyLoss(pos_weight=w)`); sal uses
    the automatic weight (w = fraction of negatives in the batch) and reads its (B, H, W) class map. A
    2-channel head (`TaskSpec.two_logit_head`, ATRC's sal layout) is scored on the logit difference z1 − z0,
    which makes this equal to ATRC's `CrossEntropyLoss(balanced=True)` with class weights (1 − w, w).
    """

    def __init__(self, spec: TaskSpec, pos_weight: float | None) -> None:
        super().__init__()
        self.spec, self.pos_weight = spec, pos_weight

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        self.spec.check_tensors(pred, target, channels=self.spec.accepted_channels(None))
        logits = pred[:, 1:] - pred[:, :1] if pred.shape[1] == 2 else pred
        if self.spec.is_class_map:
            target = target.unsqueeze(1)
        total, n_valid = balanced_bce_sum(logits, target, self.pos_weight, ignore_index=self.spec.fill)
        return total / n_valid.clamp(min=1)


@LOSSES.register("cross_entropy")
def cross_entropy(spec: TaskSpec, *, channels: int) -> CrossEntropyLoss:
    """Cross-entropy over the classes, ignored pixels left out."""
    return CrossEntropyLoss(spec, channels)


@LOSSES.register("l1_depth")
def l1_depth(spec: TaskSpec, *, channels: int) -> DepthL1Loss:
    """L1 over pixels with valid (> 0) depth."""
    return DepthL1Loss(spec)


NORMALIZE_BY = ("pixels", "elements")


@LOSSES.register("l1_normals")
def l1_normals(spec: TaskSpec, *, channels: int, normalize_by: str = "pixels") -> NormalsL1Loss:
    """L1 of the normalised prediction, divided by the valid pixels (ATRC) or valid elements (MTI-Net)."""
    if normalize_by not in NORMALIZE_BY:
        raise MtbenchError(f"{spec.name} loss: normalize_by must be one of {', '.join(NORMALIZE_BY)}; "
                           f"got {normalize_by!r}.")
    return NormalsL1Loss(spec, normalize_by)


@LOSSES.register("balanced_bce")
def balanced_bce(spec: TaskSpec, *, channels: int, pos_weight: float | None = None) -> BalancedBCELoss:
    """Class-balanced BCE: fixed positive weight in (0, 1), or None for the batch's fraction of negatives."""
    if pos_weight is not None and not (isinstance(pos_weight, int | float) and 0.0 < pos_weight < 1.0):
        raise MtbenchError(f"{spec.name} loss: pos_weight must lie strictly between 0 and 1; got {pos_weight!r}.")
    return BalancedBCELoss(spec, None if pos_weight is None else float(pos_weight))


def build_task_loss(task: str, *, dataset: str, **options: Any) -> nn.Module:
    """Return the loss module of `task` on `dataset`, mapping (raw prediction, Sample target) to a scalar.

    The loss is `TaskSpec.loss` with `TaskSpec.loss_options`, updated by `options` (the config's
    `LossConfig.task_loss_options()`: edge `pos_weight`, default 0.95; normals `normalize_by`); an option
    the loss does not take is an error.
    """
    spec = get_task(task)
    channels = spec.num_outputs(dataset)  # also checks that the task exists on the dataset
    builder = LOSSES.get(spec.loss)
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("spec", "channels")]
    check_keywords(options, accepted, f"the {task} loss ({spec.loss})")
    return builder(spec, channels=channels, **{**spec.loss_options, **options})
