"""One small registry class and the registries of mtbench (fvcore-sized, no scopes)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mtbench.errors import MtbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Map lowercase names to builders; duplicates are refused at import time."""

    def __init__(self, kind: str, doc: str = "") -> None:
        self.kind = kind
        self.__doc__ = doc or f"Registry of {kind}s."
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Register the decorated object under `name`."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the entry for `name`, or raise MtbenchError with the closest names."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise MtbenchError(f"unknown {self.kind} {name!r}.{hint} See `mtbench list`.")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        rows = "\n".join(f"  {name}" for name in self.names())
        return f"Registry[{self.kind}] ({len(self)} entries)\n{rows}"


MODELS: Registry[Callable] = Registry(
    "model", "Model builders: f(*, tasks, dataset, backbone, pretrained, **options) -> nn.Module "
    "whose forward(image) returns {task: (B, C, H, W) prediction at input resolution}.")
BACKBONES: Registry[Callable] = Registry(
    "backbone", "Backbone builders: f(*, pretrained, img_size) -> Backbone (NCHW feature list).")
DATASETS: Registry[Callable] = Registry(
    "dataset", "Dataset builders: f(*, root, split, tasks, protocol, **options) -> torch Dataset of Samples.")
WEIGHTINGS: Registry[Callable] = Registry(
    "weighting", "Loss weightings: f(*, tasks, weights) -> nn.Module mapping {task: loss} to a scalar.")
METERS: Registry[Callable] = Registry(
    "meter", "Meter builders keyed 'task' or 'task:variant': f(*, dataset, **options) -> Meter.")
