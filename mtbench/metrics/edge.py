"""The edge loss proxy logged during training: balanced BCE over the split. It is a loss, never odsF."""

from __future__ import annotations

import torch
from torch import Tensor

from mtbench.errors import MtbenchError
from mtbench.losses import DEFAULT_EDGE_POS_WEIGHT, balanced_bce_sum, check_task_tensors
from mtbench.metrics.meter import Meter, check_finite
from mtbench.registry import METERS
from mtbench.tasks import get_task


class EdgeLossMeter(Meter):
    """`edge/loss_bce`: Σ over valid pixels of w·y·ℓ⁺ + (1−w)·(1−y)·ℓ⁻, divided by the split's valid pixels.

    The same weighted BCE as the edge training loss (`mtbench.losses.balanced_bce_sum`, w = 0.95 unless
    given), pooled per pixel like MTI-Net's and InvPT's `evaluation/eval_edge.py::EdgeMeter` (their
    per-batch mean times its pixel count). Unlike those, it reads the raw logits: they pass the 8-bit
    saved prediction / 255, a probability, to a with-logits loss. Lower is better. The boundary F-measure
    (odsF) needs the SEISM-style matching evaluation, which this is not.
    """

    task = "edge"

    def __init__(self, pos_weight: float = DEFAULT_EDGE_POS_WEIGHT) -> None:
        super().__init__()
        if not 0.0 < pos_weight < 1.0:
            raise MtbenchError(f"edge meter: pos_weight must lie strictly between 0 and 1; got {pos_weight!r}.")
        self.pos_weight = float(pos_weight)

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        return {"loss_sum": torch.zeros((), dtype=torch.float64, device=device),
                "n": torch.zeros((), dtype=torch.long, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["n"])

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        check_task_tensors(self.task, pred, target, channels=1)
        check_finite(self.task, pred)
        total, n = balanced_bce_sum(pred.float(), target.float(), self.pos_weight)
        state = self._state_on(pred.device)
        state["loss_sum"] += total.double()
        state["n"] += n

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        return {"edge/loss_bce": float(state["loss_sum"]) / float(state["n"])}


@METERS.register("edge")
def edge(*, dataset: str | None, pos_weight: float = DEFAULT_EDGE_POS_WEIGHT) -> EdgeLossMeter:
    """Reference edge meter: the balanced-BCE loss proxy `edge/loss_bce` (not odsF)."""
    if dataset is not None:
        get_task("edge").num_outputs(dataset)
    return EdgeLossMeter(pos_weight)
