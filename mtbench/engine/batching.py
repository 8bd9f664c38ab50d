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


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a list of Samples; `meta` stays a list of dicts."""
    batch: dict[str, Any] = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "meta"}
    batch["meta"] = [s.get("meta", {}) for s in samples]
    return batch


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
