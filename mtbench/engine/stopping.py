"""Stop signals that land mid-training finish the current step and checkpoint it, so a stop loses no step.

A handler made by `deferred(action)` runs `action` at once outside the training loop. Inside it (between
`training_steps()` and the loop's end), the signal only asks for a checkpoint: `at_step_end` writes one after
the step that was running (its validation included), then runs `action` there, outside the signal handler.
`action=None` asks for the checkpoint and trains on (SIGTERM under submitit: SLURM follows it with USR2 to
requeue, or with SIGKILL). A second stop signal while a stop is pending acts at once: the user insists.

Data-parallel trials do not defer (ranks would stop at different steps and wait on each other): they stop at
once and resume from their last regular checkpoint.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

Action = Callable[[int, "FrameType | None"], None]


@dataclass
class _Requests:
    deferring: bool = False
    checkpoint: bool = False
    stop: tuple[int, Action] | None = None


_requests = _Requests()


def deferred(action: Action | None) -> Callable[[int, FrameType | None], None]:
    """A signal handler that defers `action` (None: nothing but the checkpoint) to the end of a training step."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if not _requests.deferring or (_requests.stop is not None and action is not None):
            if action is not None:
                action(signum, frame)
            return
        _requests.checkpoint = True
        if action is not None:  # a stop joins a pending checkpoint-only request (SLURM: SIGTERM, then USR2)
            _requests.stop = (signum, action)

    return handler


@contextmanager
def training_steps(enabled: bool = True) -> Iterator[None]:
    """The span where a deferred signal waits for the end of the current step (not nested)."""
    _requests.deferring, _requests.checkpoint, _requests.stop = enabled, False, None
    try:
        yield
    finally:
        _requests.deferring, _requests.checkpoint, _requests.stop = False, False, None


def at_step_end(step: int, checkpoint: Callable[[int], None], *, saved: bool) -> None:
    """After step `step` (and its validation, and its regular checkpoint if `saved`): honour a pending signal."""
    if not _requests.checkpoint:
        return
    if not saved:
        checkpoint(step)
    pending, _requests.checkpoint, _requests.stop = _requests.stop, False, None
    if pending is not None:
        _requests.deferring = False
        signum, action = pending
        try:
            action(signum, None)
        except BaseException as err:  # the run's end reason names the step the checkpoint holds
            err.checkpoint_step = step  # type: ignore[attr-defined]
            raise


def signal_name(signum: int) -> str:
    """'SIGTERM' for 15, etc."""
    return signal.Signals(signum).name
