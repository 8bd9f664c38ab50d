"""One small registry class and the registries of mtbench (fvcore-sized, no scopes)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from mtbench.errors import MtbenchError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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


def check_keywords(given: Iterable[str], accepted: Sequence[str], what: str) -> None:
    """Raise MtbenchError for the first of `given` that `accepted` lacks: a builder option typo named with a
    did-you-mean and the valid options, instead of a TypeError from inside the builder."""
    for name in given:
        if name not in accepted:
            close = difflib.get_close_matches(name, list(accepted), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise MtbenchError(f"unknown option {name!r} for {what}.{hint} "
                               f"Its options: {', '.join(accepted) or 'none'}.")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and the smallest setting it runs in (for --smoke and tests).

    `build(*, tasks, dataset, backbone, pretrained, img_size, **options)` returns a module satisfying
    `mtbench.protocols.MultiTaskModel`. `smoke_backbone` is the tiny backbone of the kind the model
    needs (InvPT reads ViT tokens); `test_size` an input size every part of the model accepts;
    `shared_encoder` whether its tasks share a `backbone` (what gradient balancers aggregate over).
    """

    build: Callable[..., Any]
    smoke_backbone: str = "tiny"
    test_size: tuple[int, int] = (40, 56)
    shared_encoder: bool = True


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: `build(*, pretrained, img_size, drop_path_rate, tag) -> FeatureBackbone`.

    `timm_name` is the timm model it wraps; `kind` is "pyramid" (maps at strides 4, 8, 16, 32) or
    "tokens" (a ViT's token maps, all at its patch stride).
    """

    build: Callable[..., Any]
    timm_name: str
    kind: Literal["pyramid", "tokens"] = "pyramid"


@dataclass(frozen=True)
class MeterEntry:
    """A registered meter: `build(*, dataset, variant, **options) -> mtbench.protocols.Meter`.

    `directions` maps every `task/metric` key the meter reports (before any variant suffix) to whether
    higher is better; that is where a metric's direction is declared.
    """

    build: Callable[..., Any]
    directions: Mapping[str, bool]


MODELS: Registry[ModelEntry] = Registry(
    "model", "Models (ModelEntry): build(*, tasks, dataset, backbone, pretrained, img_size, **options) -> "
    "nn.Module whose forward(image) returns {task: (B, C, H, W) prediction at input resolution}.")
BACKBONES: Registry[BackboneEntry] = Registry(
    "backbone", "Backbones (BackboneEntry): build(*, pretrained, img_size) -> NCHW feature list.")
DATASETS: Registry[Callable] = Registry(
    "dataset", "Dataset builders: f(*, root, split, tasks, protocol, **options) -> torch Dataset of Samples.")
WEIGHTINGS: Registry[Any] = Registry(
    "balancer", "Loss balancers (loss.weighting; mtbench.balancing.BalancerEntry): build(tasks, scales, **options) "
    "-> mtbench.protocols.LossBalancer.")
LOSSES: Registry[Callable] = Registry(
    "loss", "Task losses keyed by TaskSpec.loss: f(spec, *, channels, **options) -> nn.Module mapping "
    "(raw prediction, Sample target) to a scalar.")
METERS: Registry[MeterEntry] = Registry(
    "meter", "Meters (MeterEntry) keyed 'task' or 'task:variant': build(*, dataset, variant, **options) -> Meter.")


def register_model(name: str, *, smoke_backbone: str = "tiny", test_size: tuple[int, int] = (40, 56),
                   shared_encoder: bool = True) -> Callable[[F], F]:
    """Register the decorated model builder under `name` with its smallest setting."""

    def deco(build: F) -> F:
        MODELS.register(name)(ModelEntry(build, smoke_backbone, test_size, shared_encoder))
        return build

    return deco


def register_meter(*keys: str, directions: Mapping[str, bool]) -> Callable[[F], F]:
    """Register the decorated meter builder under each of `keys` ('task' or 'task:variant')."""

    def deco(build: F) -> F:
        entry = MeterEntry(build, MappingProxyType(dict(directions)))
        for key in keys:
            METERS.register(key)(entry)
        return build

    return deco
