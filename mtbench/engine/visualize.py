"""Pictures of predictions next to ground truth, one figure per task, for the run's artifacts."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from mtbench.engine.batching import to_device
from mtbench.tasks import get_task

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _show_label(task: str, value: torch.Tensor, is_target: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Turn one (C, H, W) prediction or one target into an array and imshow options (`TaskSpec.display`)."""
    spec = get_task(task)
    if spec.display == "direction_rgb":  # unit vectors as RGB, (n + 1) / 2
        n = value.float()
        n = n / n.norm(dim=0, keepdim=True).clamp_min(1e-6)
        return ((n.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1), {}
    if spec.display == "scalar_map":
        return value.squeeze().float().clamp_min(0).numpy(), {"cmap": "viridis"}
    if spec.display == "labels":
        labels = (value if is_target else value.argmax(0)).squeeze().float().numpy()
        options = {"cmap": "tab20", "vmin": 0, "vmax": 19, "interpolation": "nearest"}
        return np.ma.masked_where(labels == spec.ignore, labels), options
    # "probability": of the positive class, from one logit or a 2-channel softmax head
    v = value.float()
    if not is_target:
        v = v.softmax(0)[1] if v.shape[0] == 2 else torch.sigmoid(v[0])
    v = v.squeeze().numpy()
    return np.ma.masked_where(v == spec.ignore, v), {"cmap": "gray", "vmin": 0, "vmax": 1}


@torch.no_grad()
def prediction_grids(model: nn.Module, loader: Any, tasks: tuple[str, ...], *, device: torch.device,
                     num_images: int = 4) -> dict[str, Figure]:
    """Return {task: figure} with rows = images and columns = image, ground truth, prediction."""
    was_training = model.training
    model.eval()
    batch = to_device(next(iter(loader)), device)
    preds = model(batch["image"])
    model.train(was_training)
    n = min(num_images, batch["image"].shape[0])
    figures = {}
    for task in tasks:
        # A bare Figure (no pyplot): no global figure registry to leak, no display backend needed.
        fig = Figure(figsize=(7.5, 2.0 * n))
        axes = fig.subplots(n, 3, squeeze=False)
        for i in range(n):
            image = batch["image"][i].cpu().permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN
            axes[i, 0].imshow(image.clip(0, 1))
            for col, (value, is_target) in enumerate(
                    [(batch[task][i].cpu(), True), (preds[task][i].cpu(), False)], start=1):
                array, options = _show_label(task, value, is_target)
                axes[i, col].imshow(array, **options)
        for ax, title in zip(axes[0], ("image", f"{task} ground truth", f"{task} prediction"), strict=True):
            ax.set_title(title, fontsize=9)
        for ax in axes.flat:
            ax.axis("off")
        fig.tight_layout()
        figures[task] = fig
    return figures
