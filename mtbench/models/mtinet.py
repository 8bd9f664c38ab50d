"""MTI-Net (Vandenhende et al., ECCV 2020) as released (SimonVandenhende/Multi-Task-Learning-PyTorch).

Follows `models/mti_net.py`, `models/seg_hrnet.py::HighResolutionHead` and
`losses/loss_schemes.py::MTINetLoss`; with the same backbone it builds the same network, parameter for
parameter (HRNet-18 there is HRNetV2-W18-small-v2, mtbench's `hrnet_w18_small`; tests pin the counts),
and with the released weights loaded and the same backbone its outputs and initial predictions match the
released forward to float rounding (checked against the released code on CPU, train and eval mode). That
needs the fuse layers of mtbench's HRNet, bilinear to the target branch's size as the release's segmentation
HRNet (`backbones.hrnet_fuse_as_released`); timm's own nearest fuse is off by ~3% of the output scale.

- Scales s = 3 (1/32) down to 0 (1/4) of the backbone's four maps (channels c_s). At each scale and for
  every auxiliary task, an initial prediction: two ResNet basic blocks to c_s channels on the backbone
  map, concatenated (scales 0..2) with that task's propagated features from the coarser scale, then a
  1x1 conv to the task's outputs.
- Feature propagation module (FPM) after scales 3, 2 and 1: the auxiliary tasks' features are
  concatenated (N*c channels), a bottleneck of two basic blocks (to N*c/4) and a 1x1 conv gives logits
  that are softmaxed in groups of N channels and multiply the concatenation; a basic block reduces it to
  c channels, and each task adds a squeeze-and-excitation (r = 16) of it to its own features. The
  result is upsampled to the next scale and concatenated there.
- Multi-modal distillation at every scale (PAD-Net's, see mtbench.models.padnet) on the initial
  features; per task a HighResolutionHead: the 4 distilled maps upsampled to 1/4 and concatenated,
  1x1 conv + BN + ReLU at the same width, 1x1 conv to the outputs; bilinear upsample to the input size.
- Deep supervision: in training mode `self.auxiliary = {"scale_0": {...}, ..., "scale_3": {...}}` holds
  the initial predictions of every auxiliary task; the trainer upsamples them to the label size and
  weights them like the final losses, exactly as MTINetLoss. In eval mode `self.auxiliary` is empty.

`fpm_attention` names what the FPM softmax groups: `released` views the (B, N*c, H, W) concatenation
as (B, c, N, H, W), so each softmax runs over N *consecutive channels* of the concatenation (mostly
channels of one task, not the N tasks at one channel); `tasks` is the paper's reading, a softmax over
the N tasks per channel. Same parameters in both.

Deviations: the released code upsamples the propagated features by a fixed factor 2; mtbench upsamples
to the finer map's size, which is the same when sides are multiples of 32 and lets CNN backbones take
other sizes (ceil-sized coarse maps). The released output dict carries `deep_supervision`; mtbench keeps
the dict to the final predictions (DESIGN.md) and exposes the initial ones on `self.auxiliary`.
Auxiliary-only tasks (NYUD `+edges_normals`) are built by `auxiliary_tasks`; the trial must load their
labels (dataset.tasks), else it stops at its first step with an error naming them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from mtbench.errors import MtbenchError
from mtbench.models.backbones import Backbone, build_backbone
from mtbench.models.blocks import fuse_scales
from mtbench.models.padnet import (
    Distillation,
    auxiliary_outputs,
    backbone_features,
    check_backbone,
    check_size,
    task_outputs,
    upsample,
)
from mtbench.registry import register_model

FPM_ATTENTION = ("released", "tasks")


def basic_blocks(cin: int, cout: int) -> nn.Sequential:
    """Two ResNet basic blocks from `cin` to `cout` channels; a 1x1 conv + BN shortcut when they differ."""
    shortcut = None if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
    return nn.Sequential(BasicBlock(cin, cout, downsample=shortcut), BasicBlock(cout, cout))


class SqueezeExcitation(nn.Module):
    """Channel gating by a two-layer MLP on the spatial mean (released `SEBlock`, reduction r)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.squeeze = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.squeeze(x.mean(dim=(2, 3)))[:, :, None, None]


class InitialPrediction(nn.Module):
    """Per auxiliary task: refine features at one scale (two basic blocks) and predict from them."""

    def __init__(self, outputs: dict[str, int], cin: int, channels: int) -> None:
        super().__init__()
        self.refine = nn.ModuleDict({t: basic_blocks(cin, channels) for t in outputs})
        self.predict = nn.ModuleDict({t: nn.Conv2d(channels, n, 1) for t, n in outputs.items()})

    def forward(self, x: torch.Tensor, propagated: dict[str, torch.Tensor] | None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Return (features, predictions) per task; `propagated` comes from the coarser scale's FPM."""
        feats = {}
        for task, refine in self.refine.items():
            inp = x if propagated is None else torch.cat([x, upsample(propagated[task], x.shape[-2:])], dim=1)
            feats[task] = refine(inp)
        return feats, {t: self.predict[t](f) for t, f in feats.items()}


class FeaturePropagation(nn.Module):
    """The FPM: cross-task attention on the concatenated task features, reduced, then per-task SE (docstring)."""

    def __init__(self, tasks: tuple[str, ...], channels: int, attention: str = "released") -> None:
        super().__init__()
        self.tasks = tasks
        self.attention = attention
        shared = len(tasks) * channels
        hidden = shared // 4
        self.non_linear = nn.Sequential(*basic_blocks(shared, hidden), nn.Conv2d(hidden, shared, 1))
        reduce = nn.Sequential(nn.Conv2d(shared, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.reduce = BasicBlock(shared, channels, downsample=reduce)
        self.se = nn.ModuleDict({t: SqueezeExcitation(channels) for t in tasks})

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        concat = torch.cat([feats[t] for t in self.tasks], dim=1)
        b, c, h, w = concat.shape
        n = len(self.tasks)
        # released: softmax over N consecutive channels; tasks: over the N task blocks of one channel.
        shape, dim = ((b, c // n, n, h, w), 2) if self.attention == "released" else ((b, n, c // n, h, w), 1)
        mask = self.non_linear(concat).view(shape).softmax(dim=dim)
        shared = self.reduce((mask * concat.view(shape)).view(b, c, h, w))
        return {t: self.se[t](shared) + feats[t] for t in self.tasks}


class HighResolutionHead(nn.Module):
    """Fuse the 4 scales at 1/4 (concatenate), 1x1 conv + BN + ReLU, 1x1 conv to the outputs (released)."""

    def __init__(self, channels: list[int], outputs: int) -> None:
        super().__init__()
        width = sum(channels)
        self.last_layer = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                        nn.Conv2d(width, outputs, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.last_layer(fuse_scales(feats))


class MTINet(nn.Module):
    """MTI-Net on a 4-scale backbone (module docstring); `forward` returns final predictions."""

    def __init__(self, backbone: Backbone, *, outputs: dict[str, int], auxiliary_outputs: dict[str, int],
                 fpm_attention: str = "released") -> None:
        super().__init__()
        self.tasks = tuple(outputs)
        self.auxiliary_tasks = tuple(auxiliary_outputs)
        self.backbone = backbone
        ch = list(backbone.channels)
        last = len(ch) - 1
        # initial[s] for scale s; scales below the coarsest also read the propagated features (c_{s+1}).
        self.initial = nn.ModuleList(
            InitialPrediction(auxiliary_outputs, ch[s] + (ch[s + 1] if s < last else 0), ch[s]) for s in range(len(ch)))
        # fpm[s - 1] propagates from scale s to s - 1 (s = 1..3).
        self.fpm = nn.ModuleList(FeaturePropagation(self.auxiliary_tasks, c, fpm_attention) for c in ch[1:])
        self.distillation = nn.ModuleList(Distillation(self.tasks, self.auxiliary_tasks, c) for c in ch)
        self.heads = nn.ModuleDict({t: HighResolutionHead(ch, n) for t, n in outputs.items()})
        self.auxiliary: dict[str, dict[str, torch.Tensor]] = {}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = backbone_features("MTI-Net", self.backbone, image)
        feats: dict[int, dict[str, torch.Tensor]] = {}
        preds: dict[str, dict[str, torch.Tensor]] = {}
        propagated = None
        for s in reversed(range(len(maps))):  # coarse to fine
            feats[s], preds[f"scale_{s}"] = self.initial[s](maps[s], propagated)
            if s > 0:
                propagated = self.fpm[s - 1](feats[s])
        self.auxiliary = dict(sorted(preds.items())) if self.training else {}
        distilled = [self.distillation[s](feats[s]) for s in range(len(maps))]
        return {t: upsample(head([d[t] for d in distilled]), image.shape[-2:]) for t, head in self.heads.items()}


@register_model("mtinet")
def mtinet(*, tasks: tuple[str, ...], dataset: str, backbone: str = "hrnet_w18_small",
           pretrained: bool | str = False, img_size: tuple[int, int] | None = None,
           auxiliary_tasks: tuple[str, ...] | None = None,
           fpm_attention: Literal["released", "tasks"] = "released",
           backbone_bn_momentum: float | None = None) -> MTINet:
    """MTI-Net as released (module docstring).

    `auxiliary_tasks`: tasks with initial predictions at every scale that take part in the FPM and the
    distillation (default: the tasks). It must include every task; tasks beyond them (NYUD
    `+edges_normals`: normals, edge) get initial heads only, and training them needs their labels and
    losses in the trial. `backbone_bn_momentum`: the BatchNorm momentum of the backbone (the survey code's
    HRNet: 0.01, SimonVandenhende/Multi-Task-Learning-PyTorch: models/seg_hrnet.py::BN_MOMENTUM; timm: 0.1).
    """
    outputs = task_outputs("MTI-Net", tasks, dataset)
    aux = auxiliary_outputs("MTI-Net", tasks, auxiliary_tasks, dataset)
    if fpm_attention not in FPM_ATTENTION:
        raise MtbenchError(f"MTI-Net option fpm_attention={fpm_attention!r}: use one of {', '.join(FPM_ATTENTION)}.")
    encoder = build_backbone(backbone, pretrained=pretrained, img_size=img_size, bn_momentum=backbone_bn_momentum)
    check_backbone("MTI-Net", encoder, backbone)
    if min(encoder.channels) < 16:
        raise MtbenchError(f"MTI-Net: backbone {backbone!r} has a map with {min(encoder.channels)} channels; the "
                           "FPM's squeeze-and-excitation (reduction 16) needs at least 16.")
    if img_size is not None:
        check_size("MTI-Net", img_size, encoder)
    return MTINet(encoder, outputs=outputs, auxiliary_outputs=aux, fpm_attention=fpm_attention)
