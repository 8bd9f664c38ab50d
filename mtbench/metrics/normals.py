"""Surface-normal angular errors over the valid pixels of the split.

Variants (PROTOCOLS.md "Metrics"):
- reference: float predictions, as ATRC's and InvPT's online meters and LibMTL score them.
- `mtinet_png`: predictions first quantised to the 8-bit PNG that MTI-Net saves and then scores offline
  (SimonVandenhende/Multi-Task-Learning-PyTorch: utils/utils.py::get_output, `(normalize(n) + 1) * 255 / 2`;
  evaluation/evaluate_utils.py::save_model_predictions, `astype(np.uint8)`, which truncates;
  evaluation/eval_normals.py::eval_normals, `2 * png / 255 - 1`, normalised again). Truncation, not
  rounding, is what the saved files hold.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtbench.metrics.meter import Meter, check_finite
from mtbench.registry import register_meter
from mtbench.tasks import get_task

ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


Planes = tuple[Tensor, Tensor, Tensor]


def _normalize(a: Tensor, b: Tensor, c: Tensor) -> tuple[Planes, Tensor]:
    """Return ((a, b, c) / max(n, 1e-12), n) for three (B, H, W) planes of norm n."""
    n = (a * a).add_(b * b).add_(c * c).sqrt_()
    d = n.clamp(min=1e-12)
    return (a / d, b / d, c / d), n


def unit_planes(x: Tensor) -> Planes:
    """Return the three (B, H, W) planes of (B, 3, H, W) `x` / max(|x|, 1e-12), as F.normalize(x, dim=1).

    Written plane by plane because reductions over dim 1 of an NCHW tensor are slow on CPU: this is
    20-40x faster there than `F.normalize` or `Tensor.norm(dim=1)` (benchmarks/bench_meters.py), and equal
    up to float32 rounding. A zero vector stays zero.
    """
    return _normalize(*x.float().unbind(1))[0]


def _angle_deg(p: Planes, g: Planes) -> Tensor:
    """Return 2·atan2(|p − g|, |p + g|) in degrees for unit planes p and g."""
    minus = (p[0] - g[0]).square_().add_((p[1] - g[1]).square_()).add_((p[2] - g[2]).square_()).sqrt_()
    plus = (p[0] + g[0]).square_().add_((p[1] + g[1]).square_()).add_((p[2] + g[2]).square_()).sqrt_()
    return torch.atan2(minus, plus).mul_(360.0 / math.pi)


def angular_error_deg(pred: Tensor, target: Tensor) -> Tensor:
    """Return the angle in degrees between (B, 3, H, W) vectors after L2-normalising both: (B, H, W).

    angle = 2·atan2(|p − g|, |p + g|), the numerically stable form of arccos(p·g) used by ATRC and InvPT
    (brdav/atrc: src/data/metrics.py::MeanErrorInAngle). A zero vector stays zero after normalising, so a
    zero prediction reads 90°. Example: p = (1, 0, 0), g = (0, 1, 0) → 2·atan2(√2, √2) = 90°.
    """
    return _angle_deg(unit_planes(pred), unit_planes(target))


def _png_planes(unit: Planes) -> Planes:
    """Return unit planes as read back from MTI-Net's 8-bit PNG: 2·trunc((u + 1)·255/2)/255 − 1.

    (u + 1)·255/2 lies in [0, 255] up to rounding, where trunc is numpy's `astype(np.uint8)`.
    """
    return tuple(u.add(1.0).mul_(255).div_(2.0).trunc_().mul_(2.0).div_(255.0).sub_(1.0) for u in unit)


def quantize_png(pred: Tensor) -> Tensor:
    """Return (B, 3, H, W) `pred` as MTI-Net's offline evaluation reads it back from its 8-bit PNG.

    q = uint8((normalize(pred) + 1) · 255 / 2) in float32, truncated as numpy's `astype(np.uint8)`, then
    2q / 255 − 1. Example: (1, 0, 0) → q = (255, 127, 127) → (1, −1/255, −1/255), 0.318° away from
    (1, 0, 0); a zero vector → q = 127 everywhere → (−1/255, −1/255, −1/255), which normalises to
    −(1, 1, 1)/√3 instead of staying zero.
    """
    return torch.stack(_png_planes(unit_planes(pred)), dim=1)


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
    val at 480x640 holds about 0.8 GB) and is concatenated, not summed, across processes. With
    `quantize_8bit` the prediction first goes through `quantize_png` (the `mtinet_png` variant); MTI-Net
    takes arccos of the clipped dot product there, which agrees with the atan2 form up to float32
    rounding (at most about 0.02° near 0°).
    """

    task = "normals"
    concat_states = frozenset({"angles"})

    def __init__(self, *, variant: str, quantize_8bit: bool = False, metric_variant: str | None = None) -> None:
        super().__init__(variant=variant)
        self.quantize_8bit = quantize_8bit
        self.metric_variant = metric_variant
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
        get_task(self.task).check_tensors(pred, target, channels=3)
        check_finite(self.task, pred)
        check_finite(self.task, target, name="target")
        g, g_norm = _normalize(*target.float().unbind(1))
        p = unit_planes(pred)
        if self.quantize_8bit:
            p = _normalize(*_png_planes(p))[0]
        self._state_on(pred.device)
        self._chunks.append(_angle_deg(p, g)[g_norm > 0])

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


# Angular errors: lower is better; % of pixels under a threshold: higher is better.
DIRECTIONS = {"normals/mean": False, "normals/median": False, "normals/rmse": False,
              **{f"normals/{t:g}": True for t in ANGLE_THRESHOLDS}}


def _check_dataset(dataset: str | None) -> None:
    if dataset is not None:
        get_task("normals").num_outputs(dataset)


@register_meter("normals", directions=DIRECTIONS)
def normals(*, dataset: str | None, variant: str) -> NormalsMeter:
    """Reference normals meter: angular mean, median, rmse and % under 11.25/22.5/30 degrees."""
    _check_dataset(dataset)
    return NormalsMeter(variant=variant)


@register_meter("normals:mtinet_png", directions=DIRECTIONS)
def normals_mtinet_png(*, dataset: str | None, variant: str) -> NormalsMeter:
    """MTI-Net's offline normals meter: the same metrics on predictions saved as 8-bit PNG."""
    _check_dataset(dataset)
    return NormalsMeter(variant=variant, quantize_8bit=True, metric_variant="mtinet_png")
