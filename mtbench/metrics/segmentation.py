"""mIoU and pixel accuracy for semseg and human_parts, from a confusion matrix pooled over the split.

Variants (PROTOCOLS.md "Metrics"):
- reference: a class absent from both target and prediction counts IoU 0 and is still averaged
  (ATRC, MTI-Net, InvPT).
- `libmtl`: such a class has IoU NaN and the plain mean propagates it, so mIoU is NaN whenever a class is
  absent (median-research-group/LibMTL: examples/nyu/utils.py::SegMetric.score_fun, `torch.mean(iu)`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtbench.errors import MtbenchError
from mtbench.metrics.meter import Meter, check_finite
from mtbench.registry import register_meter
from mtbench.tasks import IGNORE, get_task


def iou_from_confusion(confusion: Tensor, absent: float = 0.0) -> Tensor:
    """Return per-class IoU = TP / (TP + FP + FN) of a (C, C) matrix [target, prediction].

    A class absent from both target and prediction (TP + FP + FN = 0) gets `absent`: 0 as in ATRC
    (brdav/atrc: src/data/metrics.py::MeanIoU, NaN set to 0 before the mean) and MTI-Net
    (SimonVandenhende/Multi-Task-Learning-PyTorch: evaluation/eval_semseg.py::SemsegMeter, denominator
    floored at 1e-8), NaN as in LibMTL (0/0). Example: [[2, 1], [0, 0]] → class 0: 2 / (2 + 0 + 1) = 2/3;
    class 1: 0 / (0 + 1 + 0) = 0.
    """
    conf = confusion.double()
    tp = conf.diagonal()
    denom = conf.sum(0) + conf.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, absent))


# Elements per block of the CPU argmax: the block's temporaries (1 byte an element) stay in cache.
_ARGMAX_BLOCK = 1 << 20


def argmax_channels(pred: Tensor) -> Tensor:
    """Return the (B, H, W) index of the first maximal channel of a finite (B, C, H, W) `pred`, C <= 256.

    The same as `torch.max(pred, dim=1).indices` (first maximal index on ties, as InvPT's and MTI-Net's
    `get_output`), which it calls off the CPU. On CPU that kernel is a scalar loop over channels (about
    4 ns an element, more than anything else a meter does); this takes the vectorised amax over channels
    and then the first channel equal to it, as max over channels of (x == amax) · (C − 1 − k), in blocks
    of rows that stay in cache: 3-4x faster (benchmarks/bench_meters.py). uint8 on CPU, int64 elsewhere.
    """
    if pred.device.type != "cpu":
        return torch.max(pred, dim=1).indices
    b, c, h, w = pred.shape
    reverse = torch.arange(c - 1, -1, -1, dtype=torch.uint8).view(c, 1, 1)
    rows = max(1, _ARGMAX_BLOCK // (c * w))
    out = torch.empty(b, h, w, dtype=torch.uint8)
    for i in range(b):
        for r in range(0, h, rows):
            block = pred[i, :, r:r + rows]
            is_max = (block == block.amax(0, keepdim=True)).view(torch.uint8).mul_(reverse)
            torch.amax(is_max, 0, out=out[i, r:r + rows])
    return (c - 1) - out


class SegmentationMeter(Meter):
    """Pooled confusion matrix over valid pixels (target != IGNORE), prediction = argmax over channels.

    `<task>/mIoU` is the mean of per-class IoU over all C classes, absent ones counting `absent_iou`
    (0 for the reference, NaN for `libmtl`; `iou_from_confusion`); `<task>/pixel_acc` is correct / valid
    pixels. Both in percent. The state is the (C, C) int64 matrix [target, prediction], filled by one
    bincount per update.
    """

    def __init__(self, task: str, num_classes: int, *, variant: str, absent_iou: float = 0.0,
                 metric_variant: str | None = None) -> None:
        super().__init__(variant=variant)
        if num_classes > IGNORE:
            raise ValueError(f"{task}: at most {IGNORE} classes fit beside the ignore label.")
        self.task = task
        self.num_classes = num_classes
        self.absent_iou = absent_iou
        self.metric_variant = metric_variant

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        c = self.num_classes
        return {"confusion": torch.zeros(c, c, dtype=torch.long, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["confusion"].sum())

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        c = self.num_classes
        get_task(self.task).check_tensors(pred, target, channels=c)
        check_finite(self.task, pred)
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0 or high > IGNORE:
            raise MtbenchError(f"{self.task}: the target holds labels outside 0..{c - 1} that are not the "
                               f"ignore value {IGNORE} (min {low}, max {high}); check the dataset's "
                               f"label conversion.")
        # One bincount over target·C + label: rows 0..C-1 are the confusion matrix, row IGNORE the ignored
        # pixels, and anything in rows C..IGNORE-1 a label out of range. No mask is materialised.
        index = target.long() * c
        index += argmax_channels(pred)
        counts = torch.bincount(index.view(-1), minlength=(IGNORE + 1) * c)
        if high >= c and bool(counts[c * c: IGNORE * c].any()):
            raise MtbenchError(f"{self.task}: the target holds labels outside 0..{c - 1} that are not the "
                               f"ignore value {IGNORE}; check the dataset's label conversion.")
        state = self._state_on(pred.device)
        state["confusion"] += counts[: c * c].view(c, c)

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        conf = state["confusion"]
        iou = iou_from_confusion(conf, self.absent_iou)
        acc = conf.diagonal().sum().double() / conf.sum()
        return {f"{self.task}/mIoU": 100.0 * float(iou.mean()), f"{self.task}/pixel_acc": 100.0 * float(acc)}


def _num_classes(task: str, dataset: str | None) -> int:
    if dataset is None:
        raise MtbenchError(f"the {task} meter needs `dataset` to know the number of classes.")
    return get_task(task).num_outputs(dataset)


def _directions(task: str) -> dict[str, bool]:
    return {f"{task}/mIoU": True, f"{task}/pixel_acc": True}


@register_meter("semseg", directions=_directions("semseg"))
def semseg(*, dataset: str | None, variant: str) -> SegmentationMeter:
    """Reference semseg meter: pooled mIoU (absent classes count 0) and pixel accuracy."""
    return SegmentationMeter("semseg", _num_classes("semseg", dataset), variant=variant)


@register_meter("semseg:libmtl", directions=_directions("semseg"))
def semseg_libmtl(*, dataset: str | None, variant: str) -> SegmentationMeter:
    """LibMTL's semseg meter: pooled mIoU that is NaN when a class is absent from both maps."""
    return SegmentationMeter("semseg", _num_classes("semseg", dataset), variant=variant, absent_iou=math.nan,
                             metric_variant="libmtl")


@register_meter("human_parts", directions=_directions("human_parts"))
def human_parts(*, dataset: str | None, variant: str) -> SegmentationMeter:
    """Reference human_parts meter: pooled mIoU (absent classes count 0) and pixel accuracy."""
    return SegmentationMeter("human_parts", _num_classes("human_parts", dataset), variant=variant)


@register_meter("human_parts:libmtl", directions=_directions("human_parts"))
def human_parts_libmtl(*, dataset: str | None, variant: str) -> SegmentationMeter:
    """LibMTL's definition applied to human_parts: mIoU is NaN when a part is absent from both maps."""
    return SegmentationMeter("human_parts", _num_classes("human_parts", dataset), variant=variant,
                             absent_iou=math.nan, metric_variant="libmtl")
