"""File locks: one trainer per trial, one process creating a tracking store.

`fcntl.flock` on a lock file: the kernel releases it when the holder exits, however it exits (kill -9
included), so a lock is never stale. The file records who holds it (host, pid, since when) for the message
a second process gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mtbench.errors import MtbenchError


class Busy(MtbenchError):
    """Another live process holds the lock (e.g. trains this trial now)."""


@contextmanager
def exclusive(path: Path, *, wait: bool, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block; without `wait`, raise Busy naming the holder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise MtbenchError(f"cannot create the lock file {str(path)!r} for {what} ({err.strerror}). Make its "
                           "folder writable, or choose another one (output_dir).") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise busy(path, what) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def busy(path: Path, what: str) -> Busy:
    """The error for `what`, whose lock at `path` a live process holds: who holds it and what to do."""
    return Busy(f"{what} is in use by {holder(path)}; skipping it here. Wait for that process, or stop it (its run "
                "is then closed as KILLED) and rerun.")


def holder(path: Path) -> str:
    """Who holds the lock at `path`, as recorded in it."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"process {info.get('pid')} on {info.get('host')} (since {info.get('since')})"


def held(path: Path) -> bool:
    """Whether a live process holds the lock at `path` (probing takes and drops it at once)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False  # no lock file: nobody ever locked it here
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
