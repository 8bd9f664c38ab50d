"""Saliency maxF pooled over the split (the reference is PROTOCOLS.md's `atrc` definition)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtbench.errors import MtbenchError
from mtbench.losses import IGNORE_INDEX, check_task_tensors
from mtbench.metrics.meter import Meter, check_finite
from mtbench.registry import METERS
from mtbench.tasks import get_task

BETA_SQUARED = 0.3
NUM_THRESHOLDS = 19  # 0.05, 0.10, ..., 0.95


def thresholds(device: torch.device | None = None) -> Tensor:
    """Return the 19 float32 thresholds k/20, k = 1..19 (ATRC: torch.arange(0.05, 1, 0.05))."""
    return (torch.arange(1, NUM_THRESHOLDS + 1, dtype=torch.float64) / 20).to(torch.float32).to(device)


def saliency_probability(pred: Tensor) -> Tensor:
    """Return the (B, H, W) foreground probability: sigmoid of 1 channel, softmax[:, 1] of 2."""
    pred = pred.float()
    return torch.sigmoid(pred[:, 0]) if pred.shape[1] == 1 else torch.softmax(pred, dim=1)[:, 1]


def max_f(tp: Tensor, pp: Tensor, ap: Tensor, beta_squared: float = BETA_SQUARED) -> float:
    """Return max over thresholds of F = (1 + β²)·P·R / (β²·P + R), with P = TP/PP, R = TP/AP.

    An undefined F (0/0, e.g. no predicted positives) counts 0, as in ATRC
    (brdav/atrc: src/data/metrics.py::MaxF.compute). Example: TP 2, PP 3, AP 4 → P = 2/3, R = 1/2,
    F = 1.3·(1/3) / (0.2 + 0.5) = 0.619.
    """
    tp, pp, ap = tp.double(), pp.double(), ap.double()
    precision, recall = tp / pp, tp / ap
    f = (1 + beta_squared) * precision * recall / (beta_squared * precision + recall)
    return float(torch.nan_to_num(f, nan=0.0).max())


class SaliencyMeter(Meter):
    """`sal/maxF` in percent: TP, predicted and actual positives per threshold, pooled over the split.

    p = sigmoid (1 channel) or softmax[:, 1] (2 channels); a valid pixel (target != 255) is predicted
    positive at threshold t when p >= t, for t = 0.05..0.95 step 0.05; β² = 0.3 (ATRC's `MaxF`). The
    state is one (2, 20) histogram of [target, number of thresholds <= p], filled with one bincount;
    TP/PP at each threshold are its tail sums.
    """

    task = "sal"

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        return {"histogram": torch.zeros(2, NUM_THRESHOLDS + 1, dtype=torch.long, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["histogram"].sum())

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        check_task_tensors(self.task, pred, target, channels=(1, 2))
        check_finite(self.task, pred)
        valid = target != IGNORE_INDEX
        if bool((valid & (target != 0) & (target != 1)).any()):
            raise MtbenchError(f"sal: the target must hold 0, 1 or {IGNORE_INDEX}; it holds other values.")
        prob = saliency_probability(pred)
        # level = number of thresholds t with t <= p, so p >= t_k  <=>  level >= k (k = 1..19).
        level = torch.bucketize(prob, thresholds(prob.device), right=True)
        bins = NUM_THRESHOLDS + 1
        index = torch.where(valid, target.long() * bins + level, 2 * bins)
        counts = torch.bincount(index.flatten(), minlength=2 * bins + 1)[: 2 * bins]
        self._state_on(pred.device)["histogram"] += counts.view(2, bins)

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        hist = state["histogram"]
        tail = hist.flip(-1).cumsum(-1).flip(-1)  # tail[y, k] = pixels of class y with level >= k
        tp = tail[1, 1:]
        pp = tail[0, 1:] + tail[1, 1:]
        ap = hist[1].sum().expand_as(tp)
        return {"sal/maxF": 100.0 * max_f(tp, pp, ap)}


@METERS.register("sal")
def sal(*, dataset: str | None) -> SaliencyMeter:
    """Reference saliency meter: PROTOCOLS.md's `atrc` maxF (pooled, 19 thresholds, β² = 0.3)."""
    if dataset is not None:
        get_task("sal").num_outputs(dataset)
    return SaliencyMeter()
