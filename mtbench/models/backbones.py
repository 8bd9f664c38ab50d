"""Backbones from timm (the only module that imports timm), always returning NCHW feature lists.

Each registered backbone yields the maps at strides 4, 8, 16 and 32 (the stride-2 stem of CNNs is
dropped), with their channel counts read from timm's `feature_info`, never hard-coded. ViT backbones
(`vit_*`, built by `build_vit_backbone`) are the exception: four token maps at stride 16 (for InvPT).

Two per-instance changes make timm's modules compute what the released models compute (same parameters):
Swin blocks pad to whole windows before the cyclic shift (`swin_pad_then_shift`), and HRNet fuse layers
upsample bilinearly to the size of the branch they are added to (`hrnet_fuse_as_released`).
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionModule
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import nn

from mtbench.errors import MtbenchError
from mtbench.registry import BACKBONES, BackboneEntry

HUB_HOST = "huggingface.co"


class Backbone(nn.Module):
    """A timm `features_only` model whose outputs are NCHW maps at strides 4..32."""

    def __init__(self, model: nn.Module, *, keep: list[int], channels_last_output: bool) -> None:
        super().__init__()
        self.model = model
        self.keep = keep
        self.channels_last_output = channels_last_output
        info = model.feature_info
        self.channels: list[int] = [info.channels()[i] for i in keep]
        self.reductions: list[int] = [info.reduction()[i] for i in keep]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(x)
        feats = [feats[i] for i in self.keep]
        if self.channels_last_output:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return feats


def create_backbone(timm_name: str, *, pretrained: bool | str, img_size: tuple[int, int] | None = None,
                    **timm_kwargs: object) -> Backbone:
    """Build `timm_name` with features_only and wrap it; `pretrained` may be a local checkpoint path.

    True downloads timm's weights (network needed); a path loads that file through timm's own
    pretrained filters, so the usual classification checkpoint works for the features model.
    """
    kwargs: dict[str, object] = dict(features_only=True, **timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    model = _create_timm(timm_name, pretrained=pretrained, **kwargs)
    info = model.feature_info
    keep = [i for i, r in enumerate(info.reduction()) if r >= 4]
    nhwc = str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC")
    return Backbone(model, keep=keep, channels_last_output=nhwc)


def _create_timm(timm_name: str, *, pretrained: bool | str, **kwargs: object) -> nn.Module:
    """`timm.create_model` with mtbench's pretrained rules: a local path, or True only when the hub answers."""
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise MtbenchError(f"model.pretrained: checkpoint {str(path)!r} does not exist. "
                               "Give the path of a timm/PyTorch state_dict file, or `pretrained: false`.")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    else:
        kwargs["pretrained"] = pretrained
        if pretrained:
            _require_hub(timm_name)
    try:
        return timm.create_model(timm_name, **kwargs)
    except (OSError, RuntimeError, ValueError, AttributeError, KeyError) as err:
        if pretrained is True and not isinstance(err, AttributeError | KeyError):
            raise MtbenchError(
                f"could not get pretrained weights for backbone {timm_name!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). mtbench downloads nothing you did not "
                "ask for; this machine may be offline. Download the timm weights for this model "
                "elsewhere and set `model.pretrained: <path to the .pth/.safetensors file>`.") from None
        if isinstance(pretrained, str):  # e.g. an mmseg UperNet checkpoint, whose keys timm's filters do not know
            raise MtbenchError(f"model.pretrained: could not load {pretrained!r} into {timm_name!r} "
                               f"({type(err).__name__}: {err}). Give a timm/PyTorch state_dict of this backbone; "
                               "mmseg/UperNet Swin checkpoints load into the `demt` model only.") from None
        raise


def _require_hub(timm_name: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not minutes of retries, when timm's weight hub cannot be reached."""
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
    except OSError as err:
        raise MtbenchError(
            f"pretrained: true needs timm's weights for {timm_name!r} from {HUB_HOST}, which cannot be "
            f"reached ({err}). mtbench downloads nothing you did not ask for. Download the weights "
            "elsewhere (timm.create_model(..., pretrained=True) caches them) and set "
            "`model.pretrained: <path to the .pth/.safetensors file>`.") from None


def _tagged(timm_name: str, tag: str | None) -> str:
    return f"{timm_name}.{tag}" if tag else timm_name


# ------------------------------------------------------------------ Swin and HRNet as released
def _swin_attn_pad_then_shift(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """(Shifted) window attention of one block on (B, H, W, C): pad to whole windows, then roll.

    The released DeMT Swin (yangyangxu0/DeMT:src/model/backbones/swin.py::ShiftWindowMSA.forward, a copy of
    open-mmlab/mmsegmentation@1224480:mmseg/models/backbones/swin.py) zero-pads H, W at the bottom/right
    to multiples of the window, rolls the padded map by -shift,
    masks with the regions of the padded map, then rolls back and crops. timm 1.0.31
    (timm/models/swin_transformer.py::SwinTransformerBlock._attn) rolls the unpadded map and pads after, so
    windows and mask regions differ whenever H or W is not a multiple of the window (428x560, 512x512 inputs);
    otherwise both are the same computation. Parameters, window clipping and the mask (`get_attn_mask` of the
    padded map, or the buffer timm precomputed for the padded build size) are timm's own.
    """
    _, h, w, c = x.shape
    wh, ww = block.window_size
    x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    hp, wp = x.shape[1], x.shape[2]
    shifted = any(block.shift_size)
    if shifted:
        x = torch.roll(x, shifts=(-block.shift_size[0], -block.shift_size[1]), dims=(1, 2))
    mask = block.get_attn_mask(x) if block.dynamic_mask else block.attn_mask
    windows = window_partition(x, block.window_size).view(-1, block.window_area, c)
    windows = block.attn(windows, mask=mask).view(-1, wh, ww, c)
    x = window_reverse(windows, block.window_size, hp, wp)
    if shifted:
        x = torch.roll(x, shifts=block.shift_size, dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


def swin_pad_then_shift(model: nn.Module) -> int:
    """Give every timm Swin block in `model` the released pad-then-shift attention; returns how many.

    Binds `_swin_attn_pad_then_shift` as each block's own `_attn` (timm's class is left alone). A
    functools.partial rather than a bound method, so the fix survives pickling and deepcopy of the model.
    """
    blocks = [m for m in model.modules() if isinstance(m, SwinTransformerBlock)]
    for block in blocks:
        block._attn = functools.partial(_swin_attn_pad_then_shift, block)
    return len(blocks)


# Swin needs the input size at build time (PROTOCOLS.md) and returns NHWC maps. Dynamic size lets it
# evaluate images of another size than the training crop (NYUD_MT's 480x640 after 425x560 crops), padding
# to whole windows as the released mmseg Swin does; at the build size the output is unchanged.
SWIN_TIMM_KWARGS: dict[str, object] = dict(strict_img_size=False, dynamic_img_size=True)


def create_swin_backbone(timm_name: str, *, pretrained: bool | str = False,
                         img_size: tuple[int, int] | None = None, **timm_kwargs: object) -> Backbone:
    """timm Swin `timm_name` with mtbench's Swin settings and the released pad-then-shift attention.

    The registered swin_* backbones are built here; `timm_kwargs` (embed_dim, depths, ...) may override
    the architecture, e.g. for a tiny Swin in tests.
    """
    backbone = create_backbone(timm_name, pretrained=pretrained, img_size=img_size,
                               **{**SWIN_TIMM_KWARGS, **timm_kwargs})
    swin_pad_then_shift(backbone.model)
    return backbone


def _hrnet_module_forward_as_released(module: HighResolutionModule, x: list[torch.Tensor]) -> list[torch.Tensor]:
    """timm's HighResolutionModule.forward with each coarser branch resized to the exact size of branch i.

    As the survey code's segmentation HRNet (SimonVandenhende/Multi-Task-Learning-PyTorch:
    models/seg_hrnet.py::HighResolutionModule.forward): 1x1 conv + BN, then F.interpolate(size=x[i] size,
    mode='bilinear', align_corners=False); the fuse Upsample supplies mode and align_corners.
    """
    if module.num_branches == 1:
        return [module.branches[0](x[0])]
    for i, branch in enumerate(module.branches):
        x[i] = branch(x[i])
    fused = []
    for i, fuse_outer in enumerate(module.fuse_layers):
        y = None
        for j, fuse in enumerate(fuse_outer):
            if j > i:
                conv, bn, up = fuse
                z = F.interpolate(bn(conv(x[j])), size=x[i].shape[-2:], mode=up.mode,
                                  align_corners=up.align_corners)
            else:
                z = fuse(x[j])
            y = z if y is None else y + z
        fused.append(module.fuse_act(y))
    return fused


def hrnet_fuse_as_released(model: nn.Module) -> int:
    """Make every fuse layer of a timm HRNet upsample as the released segmentation HRNet; returns how many.

    timm's classification HRNet (timm/models/hrnet.py::HighResolutionModule._make_fuse_layers) adds each
    coarser branch after nn.Upsample(scale_factor=2**(j-i), mode='nearest'); the survey code's HRNet
    (models/seg_hrnet.py, used by its MTI-Net and PAD-Net) after F.interpolate to the target branch's size,
    mode='bilinear', align_corners=False. Each fuse Upsample is set to bilinear, align_corners=False, and
    each multi-branch module gets `_hrnet_module_forward_as_released` as its own forward, so a branch of
    odd size (sides not multiples of 32) gets the target's size as in the release, not 2x its own.
    Parameters are unchanged.
    """
    count = 0
    for module in model.modules():
        if not isinstance(module, HighResolutionModule) or module.num_branches == 1:
            continue
        for i, fuse_outer in enumerate(module.fuse_layers):
            for up in (fuse[-1] for j, fuse in enumerate(fuse_outer) if j > i):
                if not isinstance(up, nn.Upsample):
                    raise TypeError(f"timm HRNet fuse layer ends in {type(up).__name__}, not nn.Upsample; "
                                    "hrnet_fuse_as_released needs updating for this timm version.")
                up.mode, up.align_corners = "bilinear", False
                count += 1
        module.forward = functools.partial(_hrnet_module_forward_as_released, module)
    return count


def create_hrnet_backbone(timm_name: str, *, pretrained: bool | str = False,
                          img_size: tuple[int, int] | None = None, **timm_kwargs: object) -> Backbone:
    """timm HRNet `timm_name` as the four branch maps (feature_location='', PROTOCOLS.md), fused as released."""
    backbone = create_backbone(timm_name, pretrained=pretrained, img_size=img_size,
                               **{"feature_location": "", **timm_kwargs})
    hrnet_fuse_as_released(backbone.model)
    return backbone


def _register(name: str, timm_name: str, *, fixed_size: bool = False,
              create: Callable[..., Backbone] = create_backbone, **timm_kwargs: object) -> None:
    def build(*, pretrained: bool | str = False, img_size: tuple[int, int] | None = None,
              drop_path_rate: float = 0.0, tag: str | None = None) -> Backbone:
        stochastic_depth = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        try:
            return create(_tagged(timm_name, tag), pretrained=pretrained,
                          img_size=img_size if fixed_size else None, **timm_kwargs, **stochastic_depth)
        except TypeError as e:
            if not stochastic_depth or "drop_path_rate" not in str(e):
                raise
            raise MtbenchError(f"backbone {name!r} (timm {timm_name}) has no stochastic depth: drop its "
                               "drop_path_rate option (model.options.backbone_drop_path_rate).") from None

    how = "" if create is create_backbone else f"({create.__name__}) "
    build.__doc__ = f"timm `{timm_name}` {how}{timm_kwargs or ''} as an NCHW stride-4..32 feature list."
    BACKBONES.register(name)(BackboneEntry(build, timm_name, "pyramid"))


# A 0.37M-parameter ResNet from timm's test models: the backbone for tests and --smoke runs.
_register("tiny", "test_resnet")
_register("resnet18", "resnet18")
_register("resnet50", "resnet50")
# Swin: built for the input size, pad-then-shift window attention as the released mmseg Swin of DeMT.
_register("swin_tiny", "swin_tiny_patch4_window7_224", fixed_size=True, create=create_swin_backbone)
_register("swin_small", "swin_small_patch4_window7_224", fixed_size=True, create=create_swin_backbone)
_register("swin_base", "swin_base_patch4_window7_224", fixed_size=True, create=create_swin_backbone)
# HRNet branch features (18/36/72/144 for W18), fuse layers as the survey code's segmentation HRNet that
# MTI-Net and PAD-Net use (bilinear to the target branch's size; timm's own is nearest x2**k), so the
# released forward is matched to float rounding, at any input size the release takes.
_register("hrnet_w18_small", "hrnet_w18_small_v2", create=create_hrnet_backbone)
_register("hrnet_w18", "hrnet_w18", create=create_hrnet_backbone)
_register("hrnet_w48", "hrnet_w48", create=create_hrnet_backbone)


def backbone_entry(name: str) -> tuple[BackboneEntry, str | None]:
    """The registered backbone of `name` and the timm weights tag it names, if any.

    `hrnet_w18_small.ms_in1k` is mtbench's `hrnet_w18_small` with timm's `hrnet_w18_small_v2.ms_in1k` weights
    (Microsoft's, as the released MTI-Net loads) instead of timm's default tag (`gluon_in1k` there). The tag
    only matters with `pretrained: true`; it is checked against timm's list of weights offline.
    """
    base, _, tag = name.partition(".")
    entry = BACKBONES.get(base)
    if tag:
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{entry.timm_name}.*")]
        if tag not in tags:
            raise MtbenchError(f"backbone {name!r}: timm has no {entry.timm_name} weights tagged {tag!r}; "
                               f"its tags: {', '.join(tags) or 'none'} (write `{base}.<tag>`).")
    return entry, tag or None


def build_backbone(name: str, *, pretrained: bool | str = False, img_size: tuple[int, int] | None = None,
                   drop_path_rate: float = 0.0, bn_momentum: float | None = None) -> Backbone | ViTBackbone:
    """Build the registered backbone `name`, optionally `name.<timm tag>` (see `mtbench list`).

    `drop_path_rate`: timm's stochastic depth, rising linearly over the blocks to this rate (Swin, ViT).
    `bn_momentum`: the running-statistics momentum of every BatchNorm in the backbone (timm's: 0.1).
    """
    entry, tag = backbone_entry(name)
    for option, value in (("drop_path_rate", drop_path_rate), ("bn_momentum", bn_momentum)):
        if value is not None and not (isinstance(value, int | float) and 0.0 <= value < 1.0):
            raise MtbenchError(f"{option} must be a number in [0, 1); got {value!r}.")
    backbone = entry.build(pretrained=pretrained, img_size=img_size, drop_path_rate=drop_path_rate, tag=tag)
    if bn_momentum is not None:
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = float(bn_momentum)
    return backbone


# ------------------------------------------------------------------------------------------- ViT
class ViTBackbone(nn.Module):
    """A timm ViT returning its token maps after `taps` blocks, as NCHW maps at stride `patch_size`.

    Not a 4-scale pyramid: every map has the same stride and width. The last map gets the final
    LayerNorm when it is the output of the last block (as InvPT taps ViT-L); the others are raw block
    outputs. Position embeddings are built for `img_size` and resampled for other input sizes.
    """

    def __init__(self, model: nn.Module, *, taps: list[int]) -> None:
        super().__init__()
        self.model = model
        self.taps = taps
        self.patch_size: int = model.patch_embed.patch_size[0]
        self.channels: list[int] = [model.embed_dim] * len(taps)
        self.reductions: list[int] = [self.patch_size] * len(taps)
        self.norm_last = taps[-1] == len(model.blocks) - 1

    def check_input(self, size: tuple[int, int] | torch.Size) -> None:
        """Raise MtbenchError unless the patch size divides both sides of `size`."""
        if any(int(s) % self.patch_size for s in size):
            raise MtbenchError(f"input size {int(size[0])}x{int(size[1])} is not divisible by the ViT patch size "
                               f"{self.patch_size}: crop or pad images to multiples of {self.patch_size} "
                               "(dataset.options crop_size / pad_to, or height/width for synthetic data).")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x.shape[-2:])
        maps = self.model.forward_intermediates(x, indices=self.taps, norm=False, intermediates_only=True)
        if self.norm_last:
            maps[-1] = self.model.norm(maps[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return maps


def create_vit(timm_name: str, *, pretrained: bool | str, img_size: tuple[int, int] | None = None,
               drop_path_rate: float = 0.0) -> ViTBackbone:
    """Build timm ViT `timm_name` (no classifier) tapped after blocks depth/4, depth/2, 3*depth/4 and depth.

    ViT-L/16: blocks 6, 12, 18, 24 (InvPT); ViT-B/16: 3, 6, 9, 12. `img_size` sizes the position
    embeddings (timm resamples pretrained ones to it); other input sizes resample them per forward.
    """
    kwargs: dict[str, object] = dict(num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path_rate)
    if img_size is not None:
        kwargs["img_size"] = tuple(img_size)
    model = _create_timm(timm_name, pretrained=pretrained, **kwargs)
    depth = len(model.blocks)
    backbone = ViTBackbone(model, taps=[round(depth * k / 4) - 1 for k in (1, 2, 3, 4)])
    if img_size is not None:
        backbone.check_input(img_size)
    return backbone


def _register_vit(name: str, timm_name: str) -> None:
    def build(*, pretrained: bool | str = False, img_size: tuple[int, int] | None = None,
              drop_path_rate: float = 0.0, tag: str | None = None) -> ViTBackbone:
        return create_vit(_tagged(timm_name, tag), pretrained=pretrained, img_size=img_size,
                          drop_path_rate=drop_path_rate)

    build.__doc__ = f"timm `{timm_name}` token maps after 4 blocks, NCHW at stride 16 (for InvPT)."
    BACKBONES.register(name)(BackboneEntry(build, timm_name, "tokens"))


# The 384 checkpoints are the ones InvPT started from (ImageNet-21k, fine-tuned on 1k at 384).
_register_vit("vit_large_patch16", "vit_large_patch16_384")
_register_vit("vit_base_patch16", "vit_base_patch16_384")
_register_vit("vit_tiny_patch16", "vit_tiny_patch16_384")
# timm's 64-wide, 6-block test ViT (0.31M parameters, taps after blocks 2, 3, 4, 6): for tests and CPU runs.
_register_vit("vit_test", "test_vit")


def vit_backbone_names() -> list[str]:
    """Names of the registered ViT backbones (those that return token maps)."""
    return [n for n in BACKBONES.names() if BACKBONES.get(n).kind == "tokens"]


def build_vit_backbone(name: str, *, pretrained: bool | str = False, img_size: tuple[int, int] | None = None,
                       drop_path_rate: float = 0.0) -> ViTBackbone:
    """Build registered ViT backbone `name` (optionally `name.<timm tag>`); another kind is a user error."""
    entry, tag = backbone_entry(name)
    if entry.kind != "tokens":
        raise MtbenchError(f"backbone {name!r} is not a ViT: this model needs the token maps of a vision "
                           f"transformer. Use one of: {', '.join(vit_backbone_names())}.")
    return entry.build(pretrained=pretrained, img_size=img_size, drop_path_rate=drop_path_rate, tag=tag)
