"""Depth errors pooled over the valid pixels of the split."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtbench.losses import check_task_tensors
from mtbench.metrics.meter import Meter, check_finite
from mtbench.registry import METERS
from mtbench.tasks import get_task

# Predictions are clamped to this before every error (natural log included), as the reference meters do:
# MTI-Net's `evaluation/eval_depth.py::DepthMeter` (torch.clamp(pred, min=1e-9)) and InvPT's
# `InvPT/evaluation/eval_depth.py::DepthMeter` (pred[pred <= 0] = 1e-9).
MIN_DEPTH = 1e-9


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
        check_task_tensors(self.task, pred, target, channels=1)
        check_finite(self.task, pred)
        valid = target > 0
        gt = torch.where(valid, target.float(), torch.ones_like(target, dtype=torch.float32))
        p = pred.float().clamp(min=MIN_DEPTH)
        zero = torch.zeros_like(p)
        err = torch.where(valid, p - gt, zero)
        log_err = torch.where(valid, torch.log(gt) - torch.log(p), zero)
        f64 = torch.float64
        state = self._state_on(pred.device)
        state["sq_err"] += err.square().sum(dtype=f64)
        state["sq_log_err"] += log_err.square().sum(dtype=f64)
        state["abs_rel"] += (err.abs() / gt).sum(dtype=f64)
        state["sq_rel"] += (err.square() / gt).sum(dtype=f64)
        state["n"] += valid.sum()

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        n = float(state["n"])
        return {
            "depth/rmse": math.sqrt(float(state["sq_err"]) / n),
            "depth/log_rmse": math.sqrt(float(state["sq_log_err"]) / n),
            "depth/abs_rel": float(state["abs_rel"]) / n,
            "depth/sq_rel": float(state["sq_rel"]) / n,
        }


@METERS.register("depth")
def depth(*, dataset: str | None) -> DepthMeter:
    """Reference depth meter: pooled rmse, log_rmse, abs_rel, sq_rel over gt > 0."""
    if dataset is not None:
        get_task("depth").num_outputs(dataset)
    return DepthMeter()
