"""Depth errors over the valid pixels (ground truth > 0) of the split.

Variants (PROTOCOLS.md "Metrics"):
- reference: pixel-pooled rmse, log_rmse, abs_rel, sq_rel (MTI-Net's current meter, InvPT, ATRC's RMSE).
- `astmt`: per image, then over images: mean of per-image rmse, median of per-image log_rmse
  (facebookresearch/astmt: fblib/evaluation/eval_depth.py::eval_depth, kept by MTI-Net's first release,
  SimonVandenhende/Multi-Task-Learning-PyTorch@d16e10be: evaluation/eval_depth.py::DepthMeter, and later
  replaced there by the pooled meter).
- `mtan`: per batch, then the plain mean over batches of the batch's mean absolute and relative error
  (lorenmt/mtan: im2im_pred/utils.py::depth_error, averaged with `avg_cost += cost / test_batch` in
  `multi_task_trainer`), so it depends on the batch size and on how valid pixels fall into batches.
  LibMTL's `examples/nyu/utils.py::DepthMetric` looks per-batch too, but weights each batch by its
  number of valid pixels (`bs` is appended after masking), which makes it pixel-pooled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtbench.metrics.meter import Meter, check_finite
from mtbench.metrics.normals import median
from mtbench.registry import register_meter
from mtbench.tasks import get_task

# Predictions are clamped to this before every error (natural log included), as the reference meters do:
# MTI-Net's `evaluation/eval_depth.py::DepthMeter` (torch.clamp(pred, min=1e-9)) and InvPT's
# `InvPT/evaluation/eval_depth.py::DepthMeter` (pred[pred <= 0] = 1e-9).
MIN_DEPTH = 1e-9


def _check(pred: Tensor, target: Tensor) -> None:
    get_task("depth").check_tensors(pred, target, channels=1)
    check_finite("depth", pred)
    check_finite("depth", target, name="target")


def _prepare(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check the inputs; return the invalid mask (gt <= 0) and gt with 1 there, so ratios stay finite.

    The meters below work on full-size maps with invalid pixels zeroed, not on `target[valid]`: boolean
    indexing costs a nonzero pass, the slowest step of a depth update on CPU (benchmarks/bench_meters.py).
    Each batch is summed in float32 (PyTorch's cascaded sums keep it within a few float32 roundings) and
    accumulated in float64: `sum(dtype=float64)` would first copy the whole map to float64.
    """
    _check(pred, target)
    invalid = target <= 0
    return invalid, target.float().masked_fill(invalid, 1.0)


class DepthMeter(Meter):
    """rmse, log_rmse, abs_rel, sq_rel over pixels with ground truth > 0, pooled over the split.

    With e = pred − gt on the n valid pixels of the whole split (pred clamped to >= 1e-9):
    rmse = sqrt(Σe² / n), log_rmse = sqrt(Σ(ln gt − ln pred)² / n), abs_rel = Σ|e|/gt / n,
    sq_rel = Σe²/gt / n (InvPT's definitions; MTI-Net has the first two). Example: pred [1, 3], gt [2, 2]
    → rmse = sqrt((1 + 1) / 2) = 1, abs_rel = (0.5 + 0.5) / 2 = 0.5, sq_rel = (0.5 + 0.5) / 2 = 0.5.
    """

    task = "depth"

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        zeros = {k: torch.zeros((), dtype=torch.float64, device=device)
                 for k in ("sq_err", "sq_log_err", "abs_rel", "sq_rel")}
        return {**zeros, "n": torch.zeros((), dtype=torch.long, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["n"])

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        invalid, gt = _prepare(pred, target)
        p = pred.float().clamp(min=MIN_DEPTH)
        err = (p - gt).masked_fill_(invalid, 0.0)
        sq = err.square()
        state = self._state_on(pred.device)
        state["sq_err"] += sq.sum().double()
        state["sq_rel"] += sq.div_(gt).sum().double()
        state["abs_rel"] += err.abs_().div_(gt).sum().double()
        # ln gt − ln pred as ln(gt / pred): one log instead of two (equal up to float32 rounding).
        state["sq_log_err"] += gt.div_(p).log_().masked_fill_(invalid, 0.0).square_().sum().double()
        state["n"] += invalid.numel() - invalid.sum()

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        n = float(state["n"])
        return {
            "depth/rmse": math.sqrt(float(state["sq_err"]) / n),
            "depth/log_rmse": math.sqrt(float(state["sq_log_err"]) / n),
            "depth/abs_rel": float(state["abs_rel"]) / n,
            "depth/sq_rel": float(state["sq_rel"]) / n,
        }


class PerImageDepthMeter(Meter):
    """ASTMT's depth errors: per image, then mean rmse and median log_rmse over the images.

    For image i with n_i valid pixels (pred clamped to >= 1e-9): rmse_i = sqrt(Σe² / n_i),
    log_rmse_i = sqrt(Σ(ln gt − ln pred)² / n_i); `depth/rmse-astmt` = mean_i rmse_i and
    `depth/log_rmse-astmt` = median_i log_rmse_i (numpy's median). An image without valid pixels is left
    out (ASTMT would divide by 0). The state keeps the sum of rmse_i and every log_rmse_i (concatenated
    across processes, one value per image). Example: image 1 has one pixel with error 3 → rmse 3, image 2
    two exact pixels → rmse 0; mean 1.5, where the pooled rmse is sqrt(9 / 3) = 1.732.
    """

    task = "depth"
    metric_variant = "astmt"
    concat_states = frozenset({"log_rmse"})

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        return {"rmse_sum": torch.zeros((), dtype=torch.float64, device=device),
                "images": torch.zeros((), dtype=torch.long, device=device),
                "log_rmse": torch.zeros(0, dtype=torch.float64, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["images"])

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        _check(pred, target)
        invalid = target <= 0
        p = pred.float().clamp(min=MIN_DEPTH)
        per_image = (1, 2, 3)
        n = invalid[0].numel() - invalid.sum(dim=per_image)
        # ||e|| over each image's valid pixels (one fused pass), then rmse_i = ||e|| / sqrt(n_i).
        norm = torch.linalg.vector_norm((p - target).masked_fill_(invalid, 0.0), dim=per_image)
        # ln gt − ln pred as ln(gt / pred), one log instead of two; ln 0 = −inf on invalid pixels is masked.
        log_norm = torch.linalg.vector_norm(target.div(p).log_().masked_fill_(invalid, 0.0), dim=per_image)
        seen = n > 0
        root_n = n[seen].double().sqrt()
        state = self._state_on(pred.device)
        state["rmse_sum"] += (norm[seen].double() / root_n).sum()
        state["images"] += seen.sum()
        state["log_rmse"] = torch.cat([state["log_rmse"], log_norm[seen].double() / root_n])

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        return {"depth/rmse": float(state["rmse_sum"]) / float(state["images"]),
                "depth/log_rmse": median(state["log_rmse"])}


class PerBatchDepthMeter(Meter):
    """MTAN's depth errors: per batch, then the plain mean over batches.

    For batch b with n_b valid pixels (no clamping, as MTAN): abs_err_b = Σ|e| / n_b,
    abs_rel_b = Σ|e|/gt / n_b; `depth/abs_err-mtan` and `depth/abs_rel-mtan` are their means over the
    batches (a batch without valid pixels is left out; MTAN would divide by 0). The state is the two sums
    and the batch count, so processes add up: the result is the mean over every process's batches.
    Example: batch 1 has one pixel with error 2, batch 2 three exact pixels → (2 + 0) / 2 = 1, where the
    pooled mean absolute error is 2 / 4 = 0.5.
    """

    task = "depth"
    metric_variant = "mtan"

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        return {"abs_err_sum": torch.zeros((), dtype=torch.float64, device=device),
                "abs_rel_sum": torch.zeros((), dtype=torch.float64, device=device),
                "batches": torch.zeros((), dtype=torch.long, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["batches"])

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        invalid, gt = _prepare(pred, target)
        n = invalid.numel() - int(invalid.sum())
        if n == 0:
            return
        err = (pred.float() - gt).abs_().masked_fill_(invalid, 0.0)
        state = self._state_on(pred.device)
        state["abs_err_sum"] += err.sum().double() / n
        state["abs_rel_sum"] += err.div_(gt).sum().double() / n
        state["batches"] += 1

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        b = float(state["batches"])
        return {"depth/abs_err": float(state["abs_err_sum"]) / b, "depth/abs_rel": float(state["abs_rel_sum"]) / b}


def _check_dataset(dataset: str | None) -> None:
    if dataset is not None:
        get_task("depth").num_outputs(dataset)


# Every depth error: lower is better.
_RMSE = {"depth/rmse": False, "depth/log_rmse": False}


@register_meter("depth", directions={**_RMSE, "depth/abs_rel": False, "depth/sq_rel": False})
def depth(*, dataset: str | None, variant: str) -> DepthMeter:
    """Reference depth meter: pooled rmse, log_rmse, abs_rel, sq_rel over gt > 0."""
    _check_dataset(dataset)
    return DepthMeter(variant=variant)


@register_meter("depth:astmt", directions=_RMSE)
def depth_astmt(*, dataset: str | None, variant: str) -> PerImageDepthMeter:
    """ASTMT / early MTI-Net depth meter: mean of per-image rmse, median of per-image log_rmse."""
    _check_dataset(dataset)
    return PerImageDepthMeter(variant=variant)


@register_meter("depth:mtan", directions={"depth/abs_err": False, "depth/abs_rel": False})
def depth_mtan(*, dataset: str | None, variant: str) -> PerBatchDepthMeter:
    """MTAN's depth meter: per-batch mean absolute and relative error, averaged over batches."""
    _check_dataset(dataset)
    return PerBatchDepthMeter(variant=variant)
