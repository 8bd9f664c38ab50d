"""Per-task losses and the loss weightings that combine them into one scalar.

Losses follow the ATRC lineage (brdav/atrc: src/model/criterion.py, src/model/builder.py::get_criterion),
reading labels in the Sample conventions of DESIGN.md rather than ATRC's 255-filled maps: semseg and
human_parts use 255 = ignore, depth 0 = invalid, normals a zero vector = invalid, edge and sal 255 = ignore.
Every loss averages over the valid pixels of the batch and is 0 (still attached to the graph) when there
are none, so a batch whose human_parts map is fully ignored does not produce NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.errors import MtbenchError
from mtbench.registry import WEIGHTINGS
from mtbench.tasks import get_task

IGNORE_INDEX = 255
# Edge positive weight when none is given: InvPT and MTI-Net use 0.95 on both datasets; ATRC uses 0.8 on NYUD
# (brdav/atrc: src/data/nyud.py::NYUD.edge_pos_weight), which a config passes explicitly.
DEFAULT_EDGE_POS_WEIGHT = 0.95
# Fixed task weights of ATRC, also used by DeMT and InvPT (brdav/atrc: src/model/builder.py::get_criterion).
ATRC_LOSS_WEIGHTS: dict[str, float] = {
    "semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "depth": 1.0, "edge": 50.0}

# Target layout per task (DESIGN.md Sample): a class-index map (B, H, W) or a dense map (B, C, H, W).
_INDEX_TARGETS = frozenset({"semseg", "human_parts", "sal"})


def check_task_tensors(task: str, pred: Tensor, target: Tensor, *, channels: int | tuple[int, ...]) -> None:
    """Raise MtbenchError unless `pred` and `target` have the layouts of `task`; never broadcast.

    `pred` must be a floating (B, C, H, W) tensor with C in `channels`. The target must be an integer
    (B, H, W) map for semseg, human_parts and sal, and a floating (B, C, H, W) map of the prediction's
    shape for depth, normals and edge.
    """
    allowed = (channels,) if isinstance(channels, int) else channels
    if pred.dim() != 4 or not pred.is_floating_point():
        raise MtbenchError(f"{task}: the prediction must be a floating (B, C, H, W) tensor; "
                           f"got {pred.dtype} of shape {tuple(pred.shape)}.")
    if pred.shape[1] not in allowed:
        raise MtbenchError(f"{task}: the prediction has {pred.shape[1]} channels; expected "
                           f"{' or '.join(map(str, allowed))} (shape {tuple(pred.shape)}).")
    b, c, h, w = pred.shape
    if task in _INDEX_TARGETS:
        want, kind = (b, h, w), "an integer (B, H, W) class map"
        dtype_ok = not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool
    else:
        want, kind = (b, c, h, w), "a floating (B, C, H, W) map"
        dtype_ok = target.is_floating_point()
    if tuple(target.shape) != want or not dtype_ok:
        raise MtbenchError(f"{task}: the target must be {kind} of shape {want} to match the prediction "
                           f"{tuple(pred.shape)}; got {target.dtype} of shape {tuple(target.shape)}.")


def balanced_bce_sum(logits: Tensor, target: Tensor, pos_weight: float | None,
                     ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Return (Σ over valid pixels of w·y·ℓ⁺ + (1−w)·(1−y)·ℓ⁻, number of valid pixels).

    ℓ⁺ = −log σ(x) and ℓ⁻ = −log(1 − σ(x)) are the binary cross-entropy terms of logit x; pixels whose
    target equals `ignore_index` count in neither sum. `pos_weight` w is fixed (edge) or, when None, the
    HED-style fraction of negatives among this call's valid pixels (sal). Dividing the sum by the count
    gives ATRC's loss exactly: BCEWithLogits with pos_weight w/(1−w), then divided by 1/(1−w)
    (brdav/atrc: src/model/criterion.py::BalancedBinaryCrossEntropyLoss); that class returns 0 when a batch
    has no positives under the automatic weight, which w = 1 gives here without a special case.
    `logits` and `target` have the same shape.
    """
    valid = target != ignore_index
    y = torch.where(valid, target, torch.zeros_like(target)).to(logits.dtype)
    n_valid = valid.sum()
    if pos_weight is None:
        w = 1.0 - y.sum() / n_valid.clamp(min=1)
    else:
        w = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    per_pixel = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    weight = torch.where(valid, w * y + (1.0 - w) * (1.0 - y), torch.zeros_like(y))
    return (per_pixel * weight).sum(), n_valid


class CrossEntropyLoss(nn.Module):
    """Cross-entropy of (B, C, H, W) logits against a (B, H, W) long map; 255 = ignore.

    Sum over valid pixels divided by their count (0 when none), as ATRC's
    `src/model/criterion.py::CrossEntropyLoss` with reduction 'mean'.
    """

    def __init__(self, task: str, num_classes: int) -> None:
        super().__init__()
        self.task, self.num_classes = task, num_classes

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        check_task_tensors(self.task, pred, target, channels=self.num_classes)
        loss = F.cross_entropy(pred, target.long(), ignore_index=IGNORE_INDEX, reduction="sum")
        return loss / (target != IGNORE_INDEX).sum().clamp(min=1)


class DepthL1Loss(nn.Module):
    """Mean absolute error of (B, 1, H, W) depth over pixels with ground truth > 0 (0 = invalid).

    ATRC's `src/model/criterion.py::L1Loss()` (there invalid depth is stored as 255 instead of 0).
    """

    task = "depth"

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        check_task_tensors(self.task, pred, target, channels=1)
        valid = target > 0
        err = torch.where(valid, (pred - target).abs(), torch.zeros_like(pred))
        return err.sum() / valid.sum().clamp(min=1)


class NormalsL1Loss(nn.Module):
    """L1 between the L2-normalised (B, 3, H, W) prediction and the target, per valid pixel.

    As ATRC's `src/model/criterion.py::L1Loss(normalize=True)`: the absolute differences of the three
    components are summed and divided by the number of valid *pixels* (not of elements, which is what
    MTI-Net's `losses/loss_functions.py::NormalsLoss` divides by, a factor 3 apart). Valid = target norm > 0;
    the target is used as given (unit length in the datasets).
    """

    task = "normals"

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        check_task_tensors(self.task, pred, target, channels=3)
        valid = target.norm(dim=1, keepdim=True) > 0
        err = (F.normalize(pred, p=2, dim=1) - target).abs()
        err = torch.where(valid, err, torch.zeros_like(err))
        return err.sum() / valid.sum().clamp(min=1)


class BalancedBCELoss(nn.Module):
    """Class-balanced BCE on (B, 1, H, W) logits; 255 = ignore. See `balanced_bce_sum` for the formula.

    Edge uses a fixed positive weight w (ATRC `BalancedBinaryCrossEntropyLoss(pos_weight=w)`); sal uses
    the automatic weight (w = fraction of negatives in the batch) and reads its (B, H, W) long target. A
    2-channel sal head (ATRC's layout) is scored on the logit difference z1 − z0, which makes this equal to
    ATRC's `CrossEntropyLoss(balanced=True)` with class weights (1 − w, w).
    """

    def __init__(self, task: str, pos_weight: float | None) -> None:
        super().__init__()
        self.task, self.pos_weight = task, pos_weight

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.task == "sal":
            check_task_tensors(self.task, pred, target, channels=(1, 2))
            logits = pred[:, 1:] - pred[:, :1] if pred.shape[1] == 2 else pred
            target = target.unsqueeze(1)
        else:
            check_task_tensors(self.task, pred, target, channels=1)
            logits = pred
        total, n_valid = balanced_bce_sum(logits, target, self.pos_weight)
        return total / n_valid.clamp(min=1)


def build_task_loss(task: str, *, dataset: str, edge_pos_weight: float | None = None) -> nn.Module:
    """Return the loss module of `task` on `dataset`, mapping (raw prediction, Sample target) to a scalar.

    `edge_pos_weight` is read only for edge (default 0.95); it must lie in (0, 1).
    """
    spec = get_task(task)
    channels = spec.num_outputs(dataset)  # also checks that the task exists on the dataset
    if spec.loss == "cross_entropy":
        return CrossEntropyLoss(task, channels)
    if task == "depth":
        return DepthL1Loss()
    if task == "normals":
        return NormalsL1Loss()
    if task == "sal":
        return BalancedBCELoss("sal", pos_weight=None)
    w = DEFAULT_EDGE_POS_WEIGHT if edge_pos_weight is None else float(edge_pos_weight)
    if not 0.0 < w < 1.0:
        raise MtbenchError(f"edge_pos_weight must lie strictly between 0 and 1; got {edge_pos_weight!r}.")
    return BalancedBCELoss("edge", pos_weight=w)


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
