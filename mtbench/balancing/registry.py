"""The balancer registry (`loss.weighting`) and the builder that checks a balancer's options."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mtbench.errors import MtbenchError
from mtbench.registry import WEIGHTINGS, check_keywords


@dataclass(frozen=True)
class BalancerEntry:
    """`build(tasks, scales, **options) -> Balancer`; `options` the names `loss.options` may give."""

    build: Callable[..., Any]
    options: tuple[str, ...]
    doc: str


def register_balancer(name: str, build: Callable[..., Any], *, options: tuple[str, ...] | None = None,
                      doc: str | None = None) -> None:
    """Register `build` (a Balancer class or factory); options default to its keyword-only parameters."""
    import inspect

    if options is None:
        options = tuple(p.name for p in inspect.signature(build).parameters.values()
                        if p.kind is inspect.Parameter.KEYWORD_ONLY)
    WEIGHTINGS.register(name)(BalancerEntry(build, options, (doc or build.__doc__ or "").strip()))


def build_balancer(name: str, *, tasks: tuple[str, ...], weights: Mapping[str, float] | None,
                   options: Mapping[str, Any] | None = None, steps_per_epoch: int = 1) -> Any:
    """Build balancer `name` for `tasks` with the fixed scales `weights` (`loss.weights`) and `loss.options`.

    Unknown option names get a did-you-mean; DWA's `period` defaults to the trial's steps per epoch.
    """
    import mtbench.balancing  # noqa: F401  (registers the balancers)
    from mtbench.balancing.base import check_scales

    entry: BalancerEntry = WEIGHTINGS.get(name)
    options = dict(options or {})
    check_keywords(options, entry.options, f"balancer {name!r} (loss.options)")
    if "period" in entry.options:
        options.setdefault("period", max(1, int(steps_per_epoch)))
    try:
        balancer = entry.build(tuple(tasks), check_scales(tasks, weights), **options)
    except (TypeError, ValueError) as e:
        raise MtbenchError(f"balancer {name!r}: bad loss.options {options}: {e}") from None
    except MtbenchError as e:
        raise MtbenchError(f"balancer {name!r} (loss.options): {e}") from None
    balancer._name = name
    return balancer
