"""Progress bars for long phases: drawn on a terminal, silent in logs and CI.

`progress_bars()` yields a transient rich `Progress` when a person watches the console, and a `NoProgress`
(the same `add_task` / `update` / `advance` / `remove_task`, doing nothing) otherwise, so a phase takes either
and never checks which. Library functions take such an object (`progress=`) or a callback; only the command
line opens the bars.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["NoProgress", "draws_bars", "progress_bars"]


class NoProgress:
    """The part of rich's `Progress` a phase uses, doing nothing: the bars of a run without a terminal."""

    def add_task(self, description: str, *, total: float | None = None, **fields: Any) -> int:
        return 0

    def update(self, task_id: int, **fields: Any) -> None:
        pass

    def advance(self, task_id: int, advance: float = 1) -> None:
        pass

    def remove_task(self, task_id: int) -> None:
        pass


def draws_bars(console: Console) -> bool:
    """Return whether bars on `console` reach a person: rich's interactive test (a terminal, not TERM=dumb;
    TTY_INTERACTIVE=0 or 1 decides outright) and a file that is a TTY.

    The TTY check is ours: FORCE_COLOR or TTY_COMPATIBLE=1 make rich treat a CI log as a terminal, which should
    get colours but not a bar redrawn ten times a second. TTY_INTERACTIVE=1 draws bars anyway.
    """
    if not console.is_interactive:
        return False
    if os.environ.get("TTY_INTERACTIVE") == "1":
        return True
    try:
        return bool(console.file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file (end of a pytest run)
        return False


@contextmanager
def progress_bars(console: Console | None = None) -> Iterator[Progress | NoProgress]:
    """Yield transient bars (description, bar, done/total, elapsed) on `console` (default: stderr) when it
    `draws_bars`, a `NoProgress` otherwise; the bars vanish when the block ends."""
    console = console if console is not None else Console(stderr=True)
    if not draws_bars(console):
        yield NoProgress()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield progress
