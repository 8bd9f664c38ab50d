"""Model registry: importing this package registers every model and backbone."""

from __future__ import annotations

import inspect

from torch import nn

# Importing registers: models, backbones, and the converter of the authors' released checkpoints.
from mtbench.models import backbones, baselines, demt, invpt, mtinet, padnet, released  # noqa: F401
from mtbench.models.backbones import backbone_entry, build_backbone
from mtbench.models.weights import CONVERTERS, WeightsReport, load_weights
from mtbench.registry import BACKBONES, MODELS, check_keywords

# Arguments build_model fills in itself; the rest are the model's options.
_FIXED = ("tasks", "dataset", "backbone", "pretrained", "img_size")


def model_options(name: str) -> dict[str, object]:
    """Return the option names of model `name` with their defaults."""
    params = inspect.signature(MODELS.get(name).build).parameters
    return {k: p.default for k, p in params.items() if k not in _FIXED}


def check_model_options(name: str, options: dict[str, object]) -> None:
    """Raise MtbenchError, with a did-you-mean, for an option that model `name` does not take."""
    check_keywords(options, list(model_options(name)), f"model {name!r}")


def build_model(name: str, *, tasks: tuple[str, ...], dataset: str, backbone: str,
                pretrained: bool | str = False, img_size: tuple[int, int] | None = None,
                **options: object) -> nn.Module:
    """Build registered model `name`; unknown options are a user error with a did-you-mean."""
    entry = MODELS.get(name)
    backbone_entry(backbone)
    check_model_options(name, options)
    return entry.build(tasks=tasks, dataset=dataset, backbone=backbone, pretrained=pretrained,
                   img_size=img_size, **options)


__all__ = ["BACKBONES", "CONVERTERS", "MODELS", "WeightsReport", "backbone_entry", "build_backbone",
           "build_model", "check_model_options", "load_weights", "model_options"]
