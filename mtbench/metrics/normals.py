"""Surface-normal angular errors over the valid pixels of the split."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtbench.losses import check_task_tensors
from mtbench.metrics.meter import Meter, check_finite
from mtbench.registry import METERS
from mtbench.tasks import get_task

ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


def angular_error_deg(pred: Tensor, target: Tensor) -> Tensor:
    """Return the angle in degrees between (B, 3, H, W) vectors after L2-normalising both: (B, H, W).

    angle = 2·atan2(|p − g|, |p + g|), the numerically stable form of arccos(p·g) used by ATRC and InvPT
    (brdav/atrc: src/data/metrics.py::MeanErrorInAngle). A zero vector stays zero after normalising, so a
    zero prediction reads 90°. Example: p = (1, 0, 0), g = (0, 1, 0) → 2·atan2(√2, √2) = 90°.
    """
    p = F.normalize(pred.float(), p=2, dim=1)
    g = F.normalize(target.float(), p=2, dim=1)
    return torch.rad2deg(2.0 * torch.atan2((p - g).norm(dim=1), (p + g).norm(dim=1)))


def median(values: Tensor) -> float:
    """Return the exact median, averaging the two middle values of an even count (as numpy.median)."""
    s = values.sort().values
    n = s.numel()
    return 0.5 * (float(s[(n - 1) // 2]) + float(s[n // 2]))


class NormalsMeter(Meter):
    """mean, median, rmse of the angular error and % of pixels under 11.25°, 22.5°, 30°, over the split.

    Valid pixels: target norm > 0 (DESIGN.md Sample). The metrics are those of MTI-Net's
    `evaluation/eval_normals.py::eval_normals` (strict `<` for the thresholds, percent), with the angle of
    `angular_error_deg`. The median is exact, so the state keeps every valid angle (4 bytes a pixel; NYUD
    val at 480x640 holds about 0.8 GB) and is concatenated, not summed, across processes.
    """

    task = "normals"
    concat_states = frozenset({"angles"})

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[Tensor] = []

    def reset(self) -> None:
        super().reset()
        self._chunks = []

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        return {"angles": torch.zeros(0, dtype=torch.float32, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return state["angles"].numel()

    def state_tensors(self) -> dict[str, Tensor]:
        state = super().state_tensors()
        if self._chunks:  # concatenate once, on demand, rather than on every update
            state["angles"] = torch.cat([state["angles"].to(self._chunks[0].device), *self._chunks])
            self._chunks = []
        return state

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        super().load_state_tensors(state)
        self._chunks = []

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        check_task_tensors(self.task, pred, target, channels=3)
        check_finite(self.task, pred)
        valid = target.norm(dim=1) > 0
        self._state_on(pred.device)
        self._chunks.append(angular_error_deg(pred, target)[valid])

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        a = state["angles"].double()
        out = {
            "normals/mean": float(a.mean()),
            "normals/median": median(a),
            "normals/rmse": math.sqrt(float(a.square().mean())),
        }
        for t in ANGLE_THRESHOLDS:
            out[f"normals/{t:g}"] = 100.0 * float((a < t).double().mean())
        return out


@METERS.register("normals")
def normals(*, dataset: str | None) -> NormalsMeter:
    """Reference normals meter: angular mean, median, rmse and % under 11.25/22.5/30 degrees."""
    if dataset is not None:
        get_task("normals").num_outputs(dataset)
    return NormalsMeter()
