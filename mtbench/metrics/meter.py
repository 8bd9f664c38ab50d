"""The Meter interface: reset / update / compute over a split, with a state that processes can merge.

Metric names are `task/metric` for a reference definition and `task/metric-variant` for a named variant
(`variant_metric_name`); see the package docstring of `mtbench.metrics`. A metric's direction is declared
where its meter is registered (`register_meter(..., directions=...)`); `metric_direction` reads it.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import ClassVar

import torch
from torch import Tensor

from mtbench.errors import MtbenchError
from mtbench.registry import METERS

# The name of every task's reference meter (registered under the bare task key).
REFERENCE = "reference"

# Joins a metric key and the variant that computed it: `sal/maxF-invpt`. No task, metric or variant name
# holds a dash, so the split is unambiguous, and MLflow accepts it in metric names on every OS (it refuses
# `@`, and `:` on Windows).
VARIANT_SEPARATOR = "-"


def variant_metric_name(key: str, variant: str | None) -> str:
    """Return the logged name of metric `key` ('task/metric') as computed by `variant` (None = reference)."""
    return key if variant is None else f"{key}{VARIANT_SEPARATOR}{variant}"


def split_metric_name(name: str) -> tuple[str, str | None]:
    """Return (key, variant) of a logged metric name: 'sal/maxF-invpt' → ('sal/maxF', 'invpt')."""
    key, sep, variant = name.partition(VARIANT_SEPARATOR)
    return (key, variant) if sep else (key, None)


def metric_directions(tasks: Iterable[str] | None = None) -> dict[str, bool]:
    """Return {'task/metric': higher is better} for every key a registered meter declares (of `tasks` only).

    Plain keys, without variant suffixes; a new dict on every call, built from `METERS`, so nothing
    module-level is ever changed. Two meters that declare one key with opposite directions are an error.
    """
    wanted = None if tasks is None else set(tasks)
    out: dict[str, bool] = {}
    owner: dict[str, str] = {}
    for key in METERS.names():
        if wanted is not None and key.partition(":")[0] not in wanted:
            continue
        for name, higher_is_better in METERS.get(key).directions.items():
            if out.setdefault(name, higher_is_better) is not higher_is_better:
                raise MtbenchError(f"meters {owner[name]!r} and {key!r} declare opposite directions for {name!r}.")
            owner.setdefault(name, key)
    return out


def named_variants(task: str) -> list[str]:
    """Return the variants of `task` whose metric names may carry their suffix: every registered
    `task:variant` except aliases of the reference (sal's `atrc` logs the plain names)."""
    reference = METERS.get(task) if task in METERS else None
    return [key.partition(":")[2] for key in METERS.names()
            if key.startswith(f"{task}:") and METERS.get(key) is not reference]


def metric_direction(name: str) -> bool:
    """Return whether higher is better for logged metric `name`: 'depth/rmse' or 'sal/maxF-invpt'.

    A plain key has the direction its meter declares; `task/metric-variant` has the direction of
    `task/metric` for every named variant of the task (`named_variants`), also for a metric that variant
    does not report itself (`depth/rmse-mtan`). Raises MtbenchError listing the known metrics otherwise.
    """
    key, variant = split_metric_name(name)
    task = key.partition("/")[0]
    directions = metric_directions([task])
    if key in directions and (variant is None or variant in named_variants(task)):
        return directions[key]
    known = sorted(metric_directions())
    if key not in directions:
        close = difflib.get_close_matches(key, known, n=1)
        why = f"no registered meter declares {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    else:
        valid = ", ".join(named_variants(task)) or "none"
        why = f"{variant!r} is not a named metric variant of {task} (those are: {valid})"
    raise MtbenchError(f"unknown metric {name!r}: {why}. Known metrics: {', '.join(known)}, each also "
                       f"as 'task/metric{VARIANT_SEPARATOR}<variant>' for its task's named variants.")


class Meter(ABC):
    """Accumulate one task's sufficient statistics over a split, then compute its metrics.

    `update(pred, target)` takes the model's raw (B, C, H, W) output for the task and the batch's label in
    the Sample conventions; it runs vectorised on the prediction's device, where the state lives.
    `compute()` returns floats keyed `task/metric`, suffixed `-<metric_variant>` when the meter computes
    a named variant rather than the reference definition (an alias of the reference, such as sal's
    `atrc`, keeps the plain names). The state is a dict of tensors
    (`state_tensors()`): across processes, every entry is summed (`all_reduce`), except those named in
    `concat_states`, which are concatenated along dim 0 (`all_gather`); `load_state_tensors()` puts the
    merged state back before `compute()`.
    """

    task: str
    variant: str  # the name the meter was built under ("reference", "invpt", ...), given to the constructor
    metric_variant: str | None = None  # the variant named in the metric keys; None for the reference
    concat_states: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, variant: str) -> None:
        self.variant = variant
        self._state: dict[str, Tensor] | None = None

    def reset(self) -> None:
        """Forget everything seen since the last reset."""
        self._state = None

    def close(self) -> None:
        """Stop at once whatever the meter runs beside the caller (worker processes); an evaluation that is
        interrupted calls it, so no process outlives the trial. Meters that run nothing only reset."""
        self.reset()

    def use_workers(self, num_workers: int) -> None:
        """Let `update` hand its work to `num_workers` processes, where the meter has CPU-heavy work to spread
        (the boundary matching); the others ignore it. Results do not depend on it."""
        return

    def pending(self) -> int:
        """Return how many updates still run beside the caller (worker processes); 0 for meters that run none."""
        return 0

    def wait(self, on_done: Callable[[], None] | None = None) -> None:
        """Block until the pending updates are done, calling `on_done` after each (a progress bar's advance)."""
        return  # a meter that runs nothing beside the caller has nothing to wait for

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
        """Return the metrics of everything seen since the last reset, keyed `task/metric[-variant]`."""
        state = self.state_tensors()
        if self._count(state) == 0:
            raise MtbenchError(f"{self.task} meter: no valid pixel was seen since the last reset, so its "
                               f"metrics are undefined; check that the split has {self.task} labels.")
        return {variant_metric_name(k, self.metric_variant): v for k, v in self._compute(state).items()}

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


def all_finite(x: Tensor) -> bool:
    """Return whether `x` holds no NaN or inf (one device sync).

    A sum is NaN or ±inf whenever an element is, and is much cheaper than `isfinite(x).all()`, which
    materialises a bool per element (on CPU it cost more than the argmax of a 40-class prediction).
    A float32 sum can overflow on huge finite values, so a non-finite sum is confirmed element-wise.
    """
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def check_finite(task: str, pred: Tensor, name: str = "prediction") -> None:
    """Raise MtbenchError naming the task and the tensor if `pred` holds NaN or inf."""
    if not all_finite(pred):
        hint = ("the model diverged or its output is broken" if name == "prediction"
                else "invalid pixels must use the task's ignore value, not NaN")
        raise MtbenchError(f"{task}: the {name} contains NaN or inf values; {hint}, so the metrics would be "
                           f"meaningless.")
