"""The Meter interface: reset / update / compute over a split, with a state that processes can merge."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from mtbench.errors import MtbenchError


class Meter(ABC):
    """Accumulate one task's sufficient statistics over a split, then compute its metrics.

    `update(pred, target)` takes the model's raw (B, C, H, W) output for the task and the batch's label in
    the Sample conventions; it runs vectorised on the prediction's device, where the state lives.
    `compute()` returns floats keyed `task/metric`. The state is a dict of tensors
    (`state_tensors()`): across processes, every entry is summed (`all_reduce`), except those named in
    `concat_states`, which are concatenated along dim 0 (`all_gather`); `load_state_tensors()` puts the
    merged state back before `compute()`.
    """

    task: str
    variant: str = "reference"
    concat_states: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self._state: dict[str, Tensor] | None = None

    def reset(self) -> None:
        """Forget everything seen since the last reset."""
        self._state = None

    @abstractmethod
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch."""

    @abstractmethod
    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        """Return the zero state on `device`."""

    @abstractmethod
    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        """Return the metrics of a non-empty state."""

    @abstractmethod
    def _count(self, state: dict[str, Tensor]) -> int:
        """Return how many valid pixels the state holds."""

    def compute(self) -> dict[str, float]:
        """Return the metrics of everything seen since the last reset, keyed `task/metric`."""
        state = self.state_tensors()
        if self._count(state) == 0:
            raise MtbenchError(f"{self.task} meter: no valid pixel was seen since the last reset, so its "
                               f"metrics are undefined; check that the split has {self.task} labels.")
        return self._compute(state)

    def state_tensors(self) -> dict[str, Tensor]:
        """Return the live state tensors (an in-place all_reduce on them updates the meter)."""
        if self._state is None:
            self._state = self._empty_state(torch.device("cpu"))
        return self._state

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        """Replace the state, e.g. by the one merged across processes."""
        expected = set(self._empty_state(torch.device("cpu")))
        if set(state) != expected:
            raise ValueError(f"{self.task} meter state needs keys {sorted(expected)}; got {sorted(state)}")
        self._state = dict(state)

    def _state_on(self, device: torch.device) -> dict[str, Tensor]:
        """Return the state on `device`, creating it on the first update."""
        if self._state is None:
            self._state = self._empty_state(device)
        elif any(t.device != device for t in self._state.values()):
            self._state = {k: t.to(device) for k, t in self._state.items()}
        return self._state


def check_finite(task: str, pred: Tensor) -> None:
    """Raise MtbenchError if the prediction holds NaN or inf (one device sync)."""
    if not bool(torch.isfinite(pred).all()):
        raise MtbenchError(f"{task}: the prediction contains NaN or inf values; the model diverged or its "
                           f"output is broken, so the metrics would be meaningless.")
