"""Evaluation: run a model over a loader and let the task meters score it.

Meters score each prediction at its label's size: where the two differ (the mtinet eval keeps labels at each
image's original size), `resize_prediction` first brings the prediction to the label, as MTI-Net's release does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.engine.batching import to_device
from mtbench.errors import MtbenchError
from mtbench.tasks import get_task

Size = tuple[int, int]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[dict[str, Any]], meters: dict[str, Any], *,
             device: torch.device, amp: bool = False, progress: Any = None,
             description: str = "eval") -> dict[str, float]:
    """Return the metrics of every meter on `loader`; restores the model's previous mode.

    Each meter scores the prediction of its own `task`, so a task may have several meters (variants). A
    prediction is resized to its label's size where they differ (`resize_prediction`), and a batch whose labels
    differ in size (lists, `collate_eval`) is scored sample by sample: pooled and per-image meters add up the
    same as for one batch (depth's per-batch `mtan` variant then sees one-image batches).
    """
    was_training = model.training
    model.eval()
    by_task: dict[str, list[Any]] = {}
    for meter in meters.values():
        meter.reset()
        by_task.setdefault(meter.task, []).append(meter)
    task_id = progress.add_task(description, total=len(loader)) if progress is not None else None
    try:
        for batch in loader:
            batch = to_device(batch, device)
            with autocast(device, amp):
                preds = model(batch["image"])
            for task, task_meters in by_task.items():
                pairs = label_sized(task, preds[task].float(), batch[task], input_size=_hw(batch["image"]))
                for pred, target in pairs:
                    for meter in task_meters:
                        meter.update(pred, target)
            if task_id is not None:
                progress.advance(task_id)
        if task_id is not None:
            finish_pending(meters, progress, task_id, description)
        metrics: dict[str, float] = {}
        for meter in meters.values():
            metrics.update(meter.compute())
    except BaseException:  # Ctrl-C, SIGTERM, an error: no meter's worker process outlives the evaluation
        for meter in meters.values():
            meter.close()
        raise
    finally:
        model.train(was_training)
        if task_id is not None:
            progress.remove_task(task_id)
    return metrics


def finish_pending(meters: dict[str, Any], progress: Any, task_id: Any, description: str) -> None:
    """Wait for the work meters still run beside the forward passes (edge odsF's image matching in worker
    processes), advancing the bar `task_id` per item, so that the end of an evaluation does not look stuck."""
    for meter in meters.values():
        pending = meter.pending()
        if pending:
            progress.update(task_id, description=f"{description}: scoring {meter.task}", total=pending, completed=0,
                            refresh=True)
            meter.wait(on_done=lambda: progress.advance(task_id))


def label_sized(task: str, pred: Tensor, target: Tensor | list[Tensor], *,
                input_size: Size) -> list[tuple[Tensor, Tensor]]:
    """Return (prediction, label) pairs with the prediction at its label's size: the batch as one pair when its
    labels are one tensor, one pair per sample when they are a list (labels of several sizes).

    Only predictions at the input's resolution (DESIGN.md "Model") are resized, so a model that breaks that
    contract is still refused rather than silently resampled.
    """
    if _hw(pred) != input_size:
        raise MtbenchError(f"{task}: the model predicts at {_hw(pred)} but its input is {input_size}; a model's "
                           f"predictions must have its input's resolution.")
    if torch.is_tensor(target):
        return [(resize_prediction(task, pred, _hw(target)), target)]
    return [(resize_prediction(task, p[None], _hw(t)), t[None]) for p, t in zip(pred, target, strict=True)]


def resize_prediction(task: str, pred: Tensor, size: Size) -> Tensor:
    """Return `task`'s (B, C, h, w) prediction at `size`, resized as MTI-Net's release resizes its outputs back
    to the original image, in a form the task's meters read (`TaskSpec.resize_back`); unchanged at `size`.

    The release (SimonVandenhende/Multi-Task-Learning-PyTorch: evaluation/evaluate_utils.py::save_model_predictions)
    cv2.resize's utils/utils.py::get_output with utils/config.py::parse_task_dictionary's INFER_FLAGVALS: class
    maps argmax then INTER_NEAREST ("nearest": the logits are resized from the same source pixels, so their argmax
    is that map), depth INTER_LINEAR ("linear"), normals L2-normalised then INTER_LINEAR ("linear_unit"), sal and
    edge sigmoid then INTER_LINEAR ("linear_probability": logits whose sigmoid is the resized probability, one
    channel also for a 2-logit head, whose probability is sigmoid(z1 - z0)).
    """
    if _hw(pred) == tuple(size):
        return pred
    mode = get_task(task).resize_back
    if mode == "nearest":
        rows = cv2_nearest_index(pred.shape[-2], size[0]).to(pred.device)
        cols = cv2_nearest_index(pred.shape[-1], size[1]).to(pred.device)
        return pred.index_select(-2, rows).index_select(-1, cols)
    z = pred.double()
    if mode == "linear_probability":
        z = z[:, 1:] - z[:, :1] if z.shape[1] == 2 else z
        # log p - log(1 - p) with both sides resized: exact logits also where the sigmoid saturates in float64.
        tiny = torch.finfo(z.dtype).tiny
        p, q = linear_resize(torch.sigmoid(z), size), linear_resize(torch.sigmoid(-z), size)
        return (p.clamp_min(tiny).log() - q.clamp_min(tiny).log()).to(pred.dtype)
    return linear_resize(F.normalize(z, dim=1) if mode == "linear_unit" else z, size).to(pred.dtype)


def cv2_nearest_index(n_in: int, n_out: int) -> Tensor:
    """Return the source index of each of `n_out` pixels resized from `n_in` by OpenCV's INTER_NEAREST:
    min(floor(x · s), n_in − 1) with s = 1 / (n_out / n_in) in double precision (imgproc resize.cpp, resizeNN).

    Not F.interpolate(mode="nearest"): torch rounds s to float32 and takes the neighbouring pixel for some sizes
    (512 -> 82, 94, ..., 374, 376, ...).
    """
    scale = 1.0 / (n_out / n_in)
    return torch.floor(torch.arange(n_out, dtype=torch.float64) * scale).long().clamp_(max=n_in - 1)


def linear_resize(x: Tensor, size: Size) -> Tensor:
    """Return (B, C, H, W) `x` at `size` as OpenCV's INTER_LINEAR (half-pixel centres, no antialiasing).

    torch's bilinear with align_corners=False samples the same points; in float64 its weights match OpenCV's to
    float32 rounding, whereas in float32 torch's rounded scale shifts them by up to about 1e-4 pixel.
    """
    return F.interpolate(x.double(), size=size, mode="bilinear", align_corners=False)


def _hw(x: Tensor) -> Size:
    return int(x.shape[-2]), int(x.shape[-1])


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA when enabled (no grad scaler needed); a no-op context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=enabled and device.type == "cuda")
