"""Per-task losses and the loss weightings that combine them into one scalar.

Losses follow the ATRC lineage (brdav/atrc: src/model/criterion.py, src/model/builder.py::get_criterion),
reading labels in the Sample conventions of DESIGN.md (each task's ignore value and layout from its TaskSpec)
rather than ATRC's maps. Each task's loss is `LOSSES[TaskSpec.loss]` with `TaskSpec.loss_options`.
Every loss averages over the valid pixels of the batch and is 0 (still attached to the graph) when there
are none, so a batch whose human_parts map is fully ignored does not produce NaN.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.balanced_bce import balanced_bce_sum
from mtbench.errors import MtbenchError
from mtbench.registry import LOSSES, WEIGHTINGS, check_keywords
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
        valid = target.norm(dim=1, keepdim=True) > 0
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


def _check_losses(tasks: tuple[str, ...], losses: dict[str, Tensor]) -> None:
    if set(losses) != set(tasks):
        raise ValueError(f"weighting expects losses for {sorted(tasks)}; got {sorted(losses)}")


def _check_weight_tasks(tasks: tuple[str, ...], weights: dict[str, float]) -> None:
    for t in tasks:
        get_task(t)
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise MtbenchError(f"loss weights name task(s) {', '.join(map(repr, unknown))} that this run does "
                           f"not train; its tasks are: {', '.join(tasks)}.")


class FixedWeighting(nn.Module):
    """Weighted sum Σ_t w_t · L_t with constant weights (kept as a buffer, so in the state_dict)."""

    def __init__(self, tasks: tuple[str, ...], weights: dict[str, float]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.register_buffer("weights", torch.tensor([float(weights[t]) for t in self.tasks]))

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        _check_losses(self.tasks, losses)
        return torch.stack([self.weights[i] * losses[t] for i, t in enumerate(self.tasks)]).sum()

    def task_weights(self) -> dict[str, float]:
        """Return the weight each task's loss is multiplied by (for logging)."""
        return {t: float(w) for t, w in zip(self.tasks, self.weights.tolist(), strict=True)}


class UncertaintyWeighting(nn.Module):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018), learnable log-variances.

    total = Σ_t exp(−s_t) · L_t + s_t, with s_t = log σ_t² initialised to 0 (all weights 1). This is the
    form of the authors' example code (yaringal/multi-task-learning-example:
    multi-task-learning-example.ipynb::CustomMultiLossLayer.multi_loss), without the paper's 1/2 factors
    for regression tasks; LibMTL's `LibMTL/weighting/UW.py::UW` uses L/(2 exp s) + s/2, which is half of
    this: the optimal s_t = log L_t is the same and the network's gradients are scaled by 1/2 there.
    The optimiser must include this module's parameters.
    """

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        _check_losses(self.tasks, losses)
        s = self.log_vars
        return torch.stack([torch.exp(-s[i]) * losses[t] + s[i] for i, t in enumerate(self.tasks)]).sum()

    def task_weights(self) -> dict[str, float]:
        """Return the current weights exp(−s_t) (for logging)."""
        weights = torch.exp(-self.log_vars.detach()).tolist()
        return dict(zip(self.tasks, weights, strict=True))


@WEIGHTINGS.register("fixed")
def fixed(*, tasks: tuple[str, ...], weights: dict[str, float] | None) -> FixedWeighting:
    """Constant task weights from the config; a task it does not name gets 1 (ATRC's: ATRC_LOSS_WEIGHTS)."""
    weights = dict(weights or {})
    _check_weight_tasks(tasks, weights)
    for t, w in weights.items():
        if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
            raise MtbenchError(f"loss weight of {t!r} must be a finite number >= 0; got {w!r}.")
    return FixedWeighting(tasks, {t: weights.get(t, 1.0) for t in tasks})


@WEIGHTINGS.register("uncertainty")
def uncertainty(*, tasks: tuple[str, ...], weights: dict[str, float] | None) -> UncertaintyWeighting:
    """Learned uncertainty weights (Kendall et al. 2018); it takes no fixed weights."""
    if weights:
        _check_weight_tasks(tasks, weights)
        raise MtbenchError("the 'uncertainty' weighting learns its task weights; remove `loss.weights` "
                           "from the config or use the 'fixed' weighting.")
    for t in tasks:
        get_task(t)
    return UncertaintyWeighting(tasks)
