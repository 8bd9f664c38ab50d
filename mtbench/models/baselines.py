"""The baselines every multi-task model is compared with: single-task and shared-encoder networks."""

from __future__ import annotations

import torch
from torch import nn

from mtbench.models.backbones import Backbone, build_backbone
from mtbench.models.blocks import TaskHead, fuse_scales
from mtbench.registry import register_model
from mtbench.tasks import get_task


class SharedEncoder(nn.Module):
    """One backbone shared by all tasks; one light head per task on the fused multi-scale features."""

    def __init__(self, backbone: Backbone, *, tasks: tuple[str, ...], dataset: str, head_channels: int = 64,
                 two_logit_heads: bool = False):
        super().__init__()
        self.tasks = tuple(tasks)
        self.auxiliary: dict[str, dict[str, torch.Tensor]] = {}  # no deep supervision
        self.backbone = backbone
        self.heads = nn.ModuleDict({
            t: TaskHead(sum(backbone.channels), get_task(t).head_channels(dataset, two_logits=two_logit_heads),
                        head_channels) for t in tasks})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        fused = fuse_scales(self.backbone(image))
        return {t: head(fused, image.shape[-2:]) for t, head in self.heads.items()}


class SingleTask(nn.Module):
    """One independent network (backbone + head) per task: the Δm reference."""

    def __init__(self, networks: dict[str, SharedEncoder]) -> None:
        super().__init__()
        self.tasks = tuple(networks)
        self.auxiliary: dict[str, dict[str, torch.Tensor]] = {}  # no deep supervision
        self.networks = nn.ModuleDict(networks)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for net in self.networks.values():
            out.update(net(image))
        return out


@register_model("shared_encoder")
def shared_encoder(*, tasks: tuple[str, ...], dataset: str, backbone: str = "resnet18",
                   pretrained: bool | str = False, img_size: tuple[int, int] | None = None,
                   head_channels: int = 64, two_logit_heads: bool = False,
                   backbone_drop_path_rate: float = 0.0, backbone_bn_momentum: float | None = None) -> SharedEncoder:
    """Shared-encoder multi-task baseline: hard parameter sharing, one head per task.

    `two_logit_heads`: saliency gets a 2-channel softmax head (the layout of ATRC, DeMT and InvPT).
    `backbone_drop_path_rate`: the backbone's stochastic depth (Swin, ViT); `backbone_bn_momentum`: its
    BatchNorm momentum (timm's 0.1 by default)."""
    encoder = build_backbone(backbone, pretrained=pretrained, img_size=img_size,
                             drop_path_rate=backbone_drop_path_rate, bn_momentum=backbone_bn_momentum)
    return SharedEncoder(encoder, tasks=tasks, dataset=dataset, head_channels=head_channels,
                         two_logit_heads=two_logit_heads)


@register_model("single_task", shared_encoder=False)
def single_task(*, tasks: tuple[str, ...], dataset: str, backbone: str = "resnet18",
                pretrained: bool | str = False, img_size: tuple[int, int] | None = None,
                head_channels: int = 64, two_logit_heads: bool = False,
                backbone_drop_path_rate: float = 0.0, backbone_bn_momentum: float | None = None) -> SingleTask:
    """Single-task baselines: for each task its own backbone and head, trained in one trial."""
    return SingleTask({t: shared_encoder(tasks=(t,), dataset=dataset, backbone=backbone, pretrained=pretrained,
                                         img_size=img_size, head_channels=head_channels,
                                         two_logit_heads=two_logit_heads,
                                         backbone_drop_path_rate=backbone_drop_path_rate,
                                         backbone_bn_momentum=backbone_bn_momentum) for t in tasks})
