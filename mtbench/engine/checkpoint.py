"""Atomic, durable, safely loadable checkpoints; the previous good one is kept beside the last."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from mtbench.errors import MtbenchError

_FRESH = " Rerun with --fresh to start the trial afresh."


def previous_path(path: Path) -> Path:
    """Where the checkpoint before `path` is kept: last.pt -> last.prev.pt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], *, keep_previous: bool = False) -> None:
    """Write `state` to `path` atomically and durably: temp file in the same folder, fsync, then rename.

    With `keep_previous`, the file it replaces becomes `previous_path(path)`, so a checkpoint that later
    proves unreadable has a good one to fall back on. A full disk is a user error naming the folder and
    about how much space the checkpoint needs; nothing half-written is left behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as err:
        if _is_disk_full(err, path.parent):
            raise MtbenchError(disk_full_message(path.parent, state_bytes(state), "the checkpoint")) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; a corrupt file is a clear user error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise MtbenchError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {err}).{_FRESH}") from None


def load_resume_checkpoint(path: Path) -> dict[str, Any] | None:
    """The newest readable of `path` and its previous one (None when neither exists).

    An unreadable `path` falls back to the previous checkpoint with a warning; when both are unreadable
    the error names both and `--fresh`.
    """
    candidates = [p for p in (path, previous_path(path)) if p.is_file()]
    problems = []
    for candidate in candidates:
        try:
            state = load_checkpoint(candidate)
        except MtbenchError as err:
            problems.append(str(err))
            continue
        if problems:  # the previous checkpoint serves: no advice to start afresh
            warnings.warn(f"{problems[0].removesuffix(_FRESH)} Resuming from the previous checkpoint "
                          f"{str(candidate)!r} instead (step {state.get('step')}).", stacklevel=2)
        return state
    if problems:
        names = " and ".join(repr(str(p)) for p in candidates)
        raise MtbenchError(f"no readable checkpoint to resume from: {names} cannot be read. Rerun with --fresh "
                           "to start the trial afresh (its MLflow run is marked KILLED).")
    return None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file atomically; a full disk is a user error and leaves no temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(err, path.parent):
            raise MtbenchError(disk_full_message(path.parent, len(text.encode()), str(path.name))) from None
        raise


def state_bytes(state: Any) -> int:
    """About how many bytes `state` takes when saved: the sum of its tensors' sizes."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_bytes(v) for v in state)
    return 0


def disk_full_message(folder: Path, needed: int, what: str) -> str:
    """One message for a full disk: which folder, how much it needed, how much is free, what to do."""
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return (f"no space left on the device of {str(folder)!r}: writing {what} needs about {needed / 2**20:.1f} MiB "
            f"and {free / 2**20:.1f} MiB are free. Free some space (or point output_dir elsewhere), then rerun "
            "the same command: training resumes from the last checkpoint.")


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    """ENOSPC, or torch's serializer failing mid-write ('unexpected pos') on a device with no space left."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "write" in str(err).lower()):
        try:
            return shutil.disk_usage(folder).free < 64 * 2**20
        except OSError:
            return False
    return False


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
