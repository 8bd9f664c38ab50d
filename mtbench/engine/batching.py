"""Deterministic batches: the indices of step s depend only on (seed, s), so resume is exact."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    """Yield the batches of steps `start..steps-1`: one seeded permutation per epoch, last partial batch dropped.

    Indices are draws: `epoch * num_samples + index`. Datasets read sample `draw % len` and may seed
    its random augmentation with the draw, so augmentations too depend only on (seed, step).
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, steps: int, start: int = 0) -> None:
        if num_samples < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training samples")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.steps, self.start = seed, steps, start
        self.per_epoch = num_samples // batch_size

    def batch_at(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return (epoch * self.num_samples + order[pos * self.batch_size:(pos + 1) * self.batch_size]).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield self.batch_at(step)

    def __len__(self) -> int:
        return self.steps - self.start


def collate(samples: list[dict[str, Any]], *, ragged_labels: bool = False) -> dict[str, Any]:
    """Stack the tensors of a list of Samples; `meta` stays a list of dicts.

    With `ragged_labels`, a label whose shape differs between the samples stays a list of per-sample tensors
    (the mtinet eval keeps labels at each image's original size); the image is always stacked.
    """
    batch: dict[str, Any] = {}
    for key in samples[0]:
        if key == "meta":
            continue
        values = [s[key] for s in samples]
        ragged = ragged_labels and key != "image" and any(v.shape != values[0].shape for v in values)
        batch[key] = values if ragged else torch.stack(values)
    batch["meta"] = [s.get("meta", {}) for s in samples]
    return batch


def collate_eval(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """`collate` for evaluation loaders: labels of different sizes stay lists (mtbench.engine.evaluate)."""
    return collate(samples, ragged_labels=True)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the batch's tensors to `device`, those of a ragged label's list too (`collate_eval`)."""
    def move(v: Any) -> Any:
        if torch.is_tensor(v):
            return v.to(device, non_blocking=True)
        if isinstance(v, list) and v and all(torch.is_tensor(x) for x in v):
            return [x.to(device, non_blocking=True) for x in v]
        return v
    return {k: move(v) for k, v in batch.items()}
