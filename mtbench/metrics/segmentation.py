"""mIoU and pixel accuracy for semseg and human_parts, from a confusion matrix pooled over the split."""

from __future__ import annotations

import torch
from torch import Tensor

from mtbench.errors import MtbenchError
from mtbench.losses import IGNORE_INDEX, check_task_tensors
from mtbench.metrics.meter import Meter, check_finite
from mtbench.registry import METERS
from mtbench.tasks import get_task


def iou_from_confusion(confusion: Tensor) -> Tensor:
    """Return per-class IoU = TP / (TP + FP + FN) of a (C, C) matrix [target, prediction].

    A class absent from both target and prediction (TP + FP + FN = 0) gets IoU 0, as in ATRC
    (brdav/atrc: src/data/metrics.py::MeanIoU, NaN set to 0 before the mean) and MTI-Net
    (SimonVandenhende/Multi-Task-Learning-PyTorch: evaluation/eval_semseg.py::SemsegMeter, denominator
    floored at 1e-8). Example: [[2, 1], [0, 0]] → class 0: 2 / (2 + 0 + 1) = 2/3; class 1: 0 / (0 + 1 + 0) = 0.
    """
    conf = confusion.double()
    tp = conf.diagonal()
    denom = conf.sum(0) + conf.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.zeros_like(tp))


class SegmentationMeter(Meter):
    """Pooled confusion matrix over valid pixels (target != 255), prediction = argmax over channels.

    `<task>/mIoU` is the mean of per-class IoU over all C classes, absent ones counting 0
    (`iou_from_confusion`); `<task>/pixel_acc` is correct / valid pixels. Both in percent.
    """

    def __init__(self, task: str, num_classes: int) -> None:
        super().__init__()
        self.task = task
        self.num_classes = num_classes

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        c = self.num_classes
        return {"confusion": torch.zeros(c, c, dtype=torch.long, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["confusion"].sum())

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        c = self.num_classes
        check_task_tensors(self.task, pred, target, channels=c)
        check_finite(self.task, pred)
        valid = target != IGNORE_INDEX
        if bool((valid & ((target < 0) | (target >= c))).any()):
            raise MtbenchError(f"{self.task}: the target holds labels outside 0..{c - 1} that are not the "
                               f"ignore value {IGNORE_INDEX}; check the dataset's label conversion.")
        label = pred.argmax(dim=1)
        # One bincount: valid pixels land in cell target*C + pred, invalid ones in a spare bin C*C.
        index = torch.where(valid, target.long() * c + label, c * c)
        counts = torch.bincount(index.flatten(), minlength=c * c + 1)[: c * c]
        state = self._state_on(pred.device)
        state["confusion"] += counts.view(c, c)

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        conf = state["confusion"]
        iou = iou_from_confusion(conf)
        acc = conf.diagonal().sum().double() / conf.sum()
        return {f"{self.task}/mIoU": 100.0 * float(iou.mean()), f"{self.task}/pixel_acc": 100.0 * float(acc)}


def _num_classes(task: str, dataset: str | None) -> int:
    if dataset is None:
        raise MtbenchError(f"the {task} meter needs `dataset` to know the number of classes.")
    return get_task(task).num_outputs(dataset)


@METERS.register("semseg")
def semseg(*, dataset: str | None) -> SegmentationMeter:
    """Reference semseg meter: pooled mIoU (absent classes count 0) and pixel accuracy."""
    return SegmentationMeter("semseg", _num_classes("semseg", dataset))


@METERS.register("human_parts")
def human_parts(*, dataset: str | None) -> SegmentationMeter:
    """Reference human_parts meter: pooled mIoU (absent classes count 0) and pixel accuracy."""
    return SegmentationMeter("human_parts", _num_classes("human_parts", dataset))
