"""PAD-Net (Xu et al., CVPR 2018) as released with MTI-Net (SimonVandenhende/Multi-Task-Learning-PyTorch).

Follows `models/padnet.py`, `utils/common_config.py::get_backbone` (`fuse_hrnet: True`) and
`losses/loss_schemes.py::PADNetLoss` of that codebase; with the same backbone it builds the same network,
parameter for parameter (HRNet-18 there is HRNetV2-W18-small-v2, mtbench's `hrnet_w18_small`), and with the
released weights loaded its outputs match the released forward to float rounding (checked on CPU), given the
fuse layers of mtbench's HRNet, bilinear to the target branch's size as the release's segmentation HRNet
(`backbones.hrnet_fuse_as_released`); timm's own nearest fuse is off by ~3% of the output scale.

- Backbone: the four maps (strides 4..32) upsampled to the finest, concatenated, then a 1x1 conv
  (with bias), BN and ReLU at the same width (the released `HighResolutionFuse`, counted as backbone).
- Initial predictions, per auxiliary task: two ResNet bottlenecks to `width` (256) channels (the first
  with a 1x1 conv + BN shortcut) and a 1x1 conv to the task's outputs.
- Multi-modal distillation (single scale): a task's features plus, for every other auxiliary task, a
  spatial-attention block on that task's features (3x3 conv gated by a sigmoid of another 3x3 conv).
- Final heads, per task: two bottlenecks at `width` and a 1x1 conv; bilinear upsample to the input size.
- Deep supervision: in training mode `self.auxiliary = {"initial": {task: logits at 1/4}}` for every
  auxiliary task; the trainer upsamples them to the label size and weights them like the final
  losses, as PADNetLoss does. In eval mode `self.auxiliary` is empty.

Deviations: the released PAD-Net names the initial outputs `initial_<task>` in its output dict; mtbench
keeps the output dict to the final predictions (DESIGN.md) and exposes the initial ones on
`self.auxiliary`. Auxiliary tasks beyond the trial's tasks (NYUD `+edges_normals` configs) are built by
the `auxiliary_tasks` option; the trainer supervises them with the trial's labels and losses, so the
trial must load them (dataset.tasks): otherwise it stops at its first step with an error naming them.

Relative to the CVPR 2018 paper this is the MTL-PyTorch re-implementation (the one its tables and the survey
use): HRNet features instead of the paper's encoder, and the auxiliary tasks are the dataset's own tasks.

This module also holds the pieces MTI-Net reuses (distillation, input and task checks), as released.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from mtbench.errors import MtbenchError
from mtbench.models.backbones import Backbone, build_backbone
from mtbench.models.blocks import fuse_scales
from mtbench.registry import register_model
from mtbench.tasks import TASKS

SCALES = (4, 8, 16, 32)


# ----------------------------------------------------------------------------------------- checks
def task_outputs(model: str, tasks: tuple[str, ...], dataset: str) -> dict[str, int]:
    """Output channels per task on `dataset`; MtbenchError for a task the model has no head for."""
    if not tasks:
        raise MtbenchError(f"{model} needs at least one task (dataset.tasks is empty).")
    out = {}
    for task in tasks:
        spec = TASKS.get(task)
        if spec is None or dataset not in spec.channels:
            where = f"on dataset {dataset!r}" if spec is not None else "at all"
            valid = sorted(t for t, s in TASKS.items() if dataset in s.channels)
            raise MtbenchError(f"{model} has no head for task {task!r} {where}; tasks it can predict on "
                               f"{dataset!r}: {', '.join(valid) or 'none (unknown dataset)'}.")
        out[task] = spec.channels[dataset]
    return out


def auxiliary_outputs(model: str, tasks: tuple[str, ...], auxiliary_tasks: tuple[str, ...] | None,
                      dataset: str) -> dict[str, int]:
    """Output channels of the auxiliary tasks (default: the tasks), which must include every task."""
    aux = tuple(tasks if auxiliary_tasks is None else auxiliary_tasks)
    missing = [t for t in tasks if t not in aux]
    if missing:
        raise MtbenchError(f"{model} option auxiliary_tasks={list(aux)} leaves out {', '.join(missing)}: every "
                           "task needs its initial prediction (the distillation refines its features). "
                           f"List all of {list(tasks)} plus any auxiliary-only tasks.")
    if len(set(aux)) != len(aux):
        raise MtbenchError(f"{model} option auxiliary_tasks={list(aux)} repeats a task.")
    return task_outputs(model, aux, dataset)


def check_backbone(model: str, backbone: Backbone, name: str) -> None:
    """Refuse a backbone whose maps are not the four at strides 4, 8, 16 and 32."""
    if list(backbone.reductions) != list(SCALES):
        raise MtbenchError(f"{model} needs a backbone with four maps at strides {', '.join(map(str, SCALES))}; "
                           f"backbone {name!r} gives strides {backbone.reductions}. Use a registered CNN or "
                           "HRNet backbone (see `mtbench list backbones`).")


def check_size(model: str, size: tuple[int, int], backbone: Backbone) -> None:
    """Refuse an input size not divisible by the finest stride, where the heads predict."""
    h, w = size
    stride = backbone.reductions[0]
    if h % stride or w % stride:
        ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
        raise MtbenchError(f"{model}: input {h}x{w} is not divisible by {stride}, the stride of the backbone's "
                           f"finest map, so the predictions would not cover the image exactly. Resize, crop or "
                           f"pad the input to a multiple of {stride} (e.g. {ph}x{pw}).")


def backbone_features(model: str, backbone: Backbone, image: torch.Tensor) -> list[torch.Tensor]:
    """Run the backbone after `check_size`; a size the backbone cannot take becomes a MtbenchError.

    HRNet (fused as released: each branch resized to the exact size it is added to) and CNN backbones take
    any size and give ceil-sized coarse maps, which the decoders upsample by size; a backbone that still
    cannot take a size is reported with the padded size to use.
    """
    size = (int(image.shape[-2]), int(image.shape[-1]))
    check_size(model, size, backbone)
    try:
        return backbone(image)
    except RuntimeError as err:
        coarse = backbone.reductions[-1]
        if isinstance(err, torch.cuda.OutOfMemoryError) or not (size[0] % coarse or size[1] % coarse):
            raise
        raise MtbenchError(f"{model}: the backbone cannot take input {size[0]}x{size[1]} ({err}). It needs sides "
                           f"divisible by {coarse}, its coarsest stride: resize, crop or pad to "
                           f"{-(-size[0] // coarse) * coarse}x{-(-size[1] // coarse) * coarse}.") from err


def upsample(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False, as the released F.interpolate calls)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------- blocks
class ScaleFusion(nn.Module):
    """Upsample the maps to the finest, concatenate, 1x1 conv + BN + ReLU (released `HighResolutionFuse`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(fuse_scales(feats))


def bottlenecks(cin: int, width: int) -> nn.Sequential:
    """Two ResNet bottlenecks from `cin` to `width` channels; a 1x1 conv + BN shortcut when they differ."""
    shortcut = None if cin == width else nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width))
    return nn.Sequential(Bottleneck(cin, width // 4, downsample=shortcut), Bottleneck(width, width // 4))


class SpatialAttention(nn.Module):
    """A 3x3 conv gated by the sigmoid of another 3x3 conv (released `SABlock`); no biases."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.Sigmoid())
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.attention(x)


class Distillation(nn.Module):
    """Multi-modal distillation: a task's features plus attention-gated features of every other source task.

    Parameters are keyed `<task>.<source>` (released `MultiTaskDistillationModule`).
    """

    def __init__(self, tasks: tuple[str, ...], sources: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({t: nn.ModuleDict({s: SpatialAttention(channels) for s in sources if s != t})
                                     for t in tasks})

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for task, blocks in self.blocks.items():
            x = feats[task]
            for source, block in blocks.items():
                x = x + block(feats[source])
            out[task] = x
        return out


# ----------------------------------------------------------------------------------------- model
class PADNet(nn.Module):
    """PAD-Net on fused multi-scale features (module docstring); `forward` returns final predictions."""

    def __init__(self, backbone: Backbone, *, outputs: dict[str, int], auxiliary_outputs: dict[str, int],
                 width: int = 256) -> None:
        super().__init__()
        self.tasks = tuple(outputs)
        self.auxiliary_tasks = tuple(auxiliary_outputs)
        self.backbone = backbone
        fused = sum(backbone.channels)
        self.backbone_fuse = ScaleFusion(fused)
        self.initial = nn.ModuleDict({t: bottlenecks(fused, width) for t in auxiliary_outputs})
        self.initial_out = nn.ModuleDict({t: nn.Conv2d(width, n, 1) for t, n in auxiliary_outputs.items()})
        self.distillation = Distillation(self.tasks, self.auxiliary_tasks, width)
        self.heads = nn.ModuleDict({t: nn.Sequential(bottlenecks(width, width), nn.Conv2d(width, n, 1))
                                    for t, n in outputs.items()})
        self.auxiliary: dict[str, dict[str, torch.Tensor]] = {}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.backbone_fuse(backbone_features("PAD-Net", self.backbone, image))
        feats = {t: block(x) for t, block in self.initial.items()}
        self.auxiliary = {"initial": {t: self.initial_out[t](f) for t, f in feats.items()}} if self.training else {}
        feats = self.distillation(feats)
        return {t: upsample(self.heads[t](feats[t]), image.shape[-2:]) for t in self.tasks}


@register_model("padnet")
def padnet(*, tasks: tuple[str, ...], dataset: str, backbone: str = "hrnet_w18_small",
           pretrained: bool | str = False, img_size: tuple[int, int] | None = None,
           auxiliary_tasks: tuple[str, ...] | None = None, width: int = 256,
           backbone_bn_momentum: float | None = None) -> PADNet:
    """PAD-Net as released with MTI-Net (module docstring).

    `auxiliary_tasks`: tasks with an initial prediction that feeds the distillation (default: the
    tasks). It must include every task; tasks beyond them (NYUD `+edges_normals`: normals, edge)
    get initial heads only, and training them needs their labels and losses in the trial.
    `backbone_bn_momentum`: the BatchNorm momentum of the backbone (the survey code's HRNet: 0.01,
    SimonVandenhende/Multi-Task-Learning-PyTorch: models/seg_hrnet.py::BN_MOMENTUM; timm's 0.1 by default).
    """
    outputs = task_outputs("PAD-Net", tasks, dataset)
    aux = auxiliary_outputs("PAD-Net", tasks, auxiliary_tasks, dataset)
    if width < 4 or width % 4:
        raise MtbenchError(f"PAD-Net option width={width}: must be a positive multiple of 4 (bottleneck width).")
    encoder = build_backbone(backbone, pretrained=pretrained, img_size=img_size, bn_momentum=backbone_bn_momentum)
    check_backbone("PAD-Net", encoder, backbone)
    if img_size is not None:
        check_size("PAD-Net", img_size, encoder)
    return PADNet(encoder, outputs=outputs, auxiliary_outputs=aux, width=width)
