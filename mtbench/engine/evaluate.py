"""Evaluation: run a model over a loader and let the task meters score it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mtbench.engine.batching import to_device


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[dict[str, Any]], meters: dict[str, Any], *,
             device: torch.device, amp: bool = False, progress: Any = None,
             description: str = "eval") -> dict[str, float]:
    """Return the metrics of every meter on `loader`; restores the model's previous mode.

    Each meter scores the prediction of its own `task`, so a task may have several meters (variants).
    """
    was_training = model.training
    model.eval()
    for meter in meters.values():
        meter.reset()
    task_id = progress.add_task(description, total=len(loader)) if progress is not None else None
    try:
        for batch in loader:
            batch = to_device(batch, device)
            with autocast(device, amp):
                preds = model(batch["image"])
            for meter in meters.values():
                meter.update(preds[meter.task].float(), batch[meter.task])
            if task_id is not None:
                progress.advance(task_id)
    finally:
        model.train(was_training)
        if task_id is not None:
            progress.remove_task(task_id)
    metrics: dict[str, float] = {}
    for meter in meters.values():
        metrics.update(meter.compute())
    return metrics


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA when enabled (no grad scaler needed); a no-op context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=enabled and device.type == "cuda")
