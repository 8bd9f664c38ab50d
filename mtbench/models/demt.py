"""DeMT (Xu et al., AAAI 2023): deformable-mixer encoder and task-aware transformer decoder.

Follows the released code (yangyangxu0/DeMT: src/model/heads/demt_head.py, ../shared PROTOCOLS.md
"DeMT as released"); parameter for parameter it builds the same network (Swin-T, NYUD: 32.07M).

- Backbone maps at strides 4..32 are upsampled to 1/4 and concatenated; transformer backbones first
  get one LayerNorm per stage (the released mmseg Swin's `norm0..norm3`). A Linear + LayerNorm
  projects the concatenation to the mixer width (256).
- Per task, a deformable mixer: `mixer_depth` blocks of channel-aware mixing (1x1 conv, GELU, BN) and
  a residual spatial-aware deformable operator (GELU, BN after it). The operator is a 1x1
  `deform_conv2d` in which every input channel has its own offset (offset groups = channels), the
  offsets coming from a learned 3x3 conv as released: a zero-initialised 3x3 conv predicts 9 (dy, dx)
  pairs, the absolute pixel grid and the 3x3 kernel grid are added, and a grouped 3x3 conv maps that
  to the 2*C channel offsets (so the learned offsets depend on absolute position, as released).
- Task interaction block (one, shared) and task query block (one per task), with `attention` naming
  what they compute:
  `released`: what the released code computed when trained with one image per GPU on PyTorch <= 1.7
  (its `nn.MultiheadAttention` got (B, N, C) tensors with batch_first=False): the interaction block
  attends over the batch axis, which with one image is a softmax over one key, i.e. its value and
  output projections; the query block's reshape made each pixel's task query attend over the T
  fused task features at that pixel. mtbench computes exactly that per image, so the output does
  not depend on the other images of the batch. The interaction block's query/key projections exist
  (same parameters as released) but receive no gradient.
  `tokens`: the paper's reading, attention over spatial tokens: the interaction block attends from
  all T*h*w task tokens to all of them, the query block from a task's h*w tokens to all fused
  tokens; keys and values are average-pooled by `kv_reduction` per side so that 1/4 resolution fits.
  Both modes have the same parameters.
- Per task a 3x3 ConvBNReLU bottleneck to sum(backbone channels) // 8, a 1x1 conv to the task's
  outputs and a bilinear upsample to the input size.

Released initialisation of Swin: ADE20K UperNet checkpoints from mmsegmentation (ImageNet-1K
pretraining for Swin-T/S, 22K for Swin-B). `load_swin_checkpoint` maps such a file (mmseg keys
`backbone.stages.N...`, or original Swin keys `layers.N...`) into the timm backbone; set
`model.pretrained: <path>` to use it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from mtbench.errors import MtbenchError
from mtbench.models.backbones import Backbone, build_backbone
from mtbench.models.blocks import ConvBNReLU
from mtbench.registry import register_model
from mtbench.tasks import get_task

ATTENTION_MODES = ("released", "tokens")


def padded_size(size: tuple[int, int] | torch.Size, stride: int) -> tuple[int, int]:
    """`size` rounded up to multiples of `stride`."""
    return -(-int(size[0]) // stride) * stride, -(-int(size[1]) // stride) * stride


def pad_bottom_right(image: torch.Tensor, stride: int) -> torch.Tensor:
    """Zero-pad the (normalised) image at the bottom/right to multiples of `stride`, as the released Swin.

    The released mmseg Swin pads its input to whole patches inside `PatchEmbed.forward` (425x560 NYUD crops
    run as 428x560), and the head resizes the 1/4 logits straight to the input size
    (yangyangxu0/DeMT: src/model/backbones/swin.py::PatchEmbed.forward, src/model/heads/demt_head.py::
    DemtHead.forward); `DeMT.forward` does both, so any input size works, for every backbone.
    """
    ph, pw = padded_size(image.shape[-2:], stride)
    h, w = image.shape[-2:]
    return image if (ph, pw) == (h, w) else F.pad(image, (0, pw - w, 0, ph - h))


# ----------------------------------------------------------------------------------------- blocks
def split_offsets(channels: int, kernel: tuple[int, int]) -> torch.Tensor:
    """Fixed channel-split shifts, (1, 2*channels, 1, 1) as (dy, dx) per channel (released `gen_offset`).

    Channel i is shifted by ((i + kh*kw // 2) mod k) - k // 2 pixels along the kernel's long axis,
    so consecutive channels look left, here, right (1x3) or up, here, down (3x1), as in CycleMLP.
    """
    kh, kw = kernel
    start = (kh * kw) // 2
    offset = torch.zeros(1, 2 * channels, 1, 1)
    for i in range(channels):
        if kh == 1:
            offset[0, 2 * i + 1] = (i + start) % kw - kw // 2
        else:
            offset[0, 2 * i] = (i + start) % kh - kh // 2
    return offset


class OffsetGenerator(nn.Module):
    """Per-channel sampling offsets from a learned 3x3 conv, as released (`Offset` in demt_head.py).

    A zero-initialised 3x3 conv predicts 9 (row, col) displacements; adding the 1-based absolute
    pixel grid and the 3x3 kernel grid gives sampling positions, and a grouped 3x3 conv (rows and
    columns in separate groups) maps them to 2*C offsets, (B, 2*C, H, W).
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        n = kernel_size * kernel_size
        self.p_conv = nn.Conv2d(channels, 2 * n, 3, padding=1)
        nn.init.constant_(self.p_conv.weight, 0.0)
        self.opt = nn.Conv2d(2 * n, 2 * channels, 3, padding=1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.p_conv(x)
        h, w = x.shape[-2:]
        k = self.kernel_size
        half = (k - 1) // 2
        kr, kc = torch.meshgrid(torch.arange(-half, half + 1, device=x.device, dtype=offset.dtype),
                                torch.arange(-half, half + 1, device=x.device, dtype=offset.dtype), indexing="ij")
        rows, cols = torch.meshgrid(torch.arange(1, h + 1, device=x.device, dtype=offset.dtype),
                                    torch.arange(1, w + 1, device=x.device, dtype=offset.dtype), indexing="ij")
        kernel = torch.cat([kr.flatten(), kc.flatten()]).view(1, 2 * k * k, 1, 1)
        grid = torch.cat([rows.expand(k * k, h, w), cols.expand(k * k, h, w)]).unsqueeze(0)
        return self.opt(offset + grid + kernel)


class ChannelSplitConv(nn.Module):
    """The spatial-aware operator: a 1x1 conv whose every input channel samples at its own offset.

    `deformable`: offsets from OffsetGenerator (released); otherwise no learned offsets. `split_kernel`
    (kh, kw with one of them 1, odd): add the fixed channel-split shifts of `split_offsets`. The
    released code builds the (1, 3) pattern as a buffer but never adds it (split_kernel=None). With
    neither, this is a plain 1x1 conv.
    """

    def __init__(self, channels: int, *, deformable: bool, split_kernel: tuple[int, int] | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(channels))
        self.offsets = OffsetGenerator(channels) if deformable else None
        if split_kernel is not None:
            self.register_buffer("split", split_offsets(channels, split_kernel), persistent=False)
        else:
            self.split = None
        # Conv2d's default initialisation, as released.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(channels)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offsets is None and self.split is None:
            return F.conv2d(x, self.weight, self.bias)
        if self.offsets is not None:
            offset = self.offsets(x)
            if self.split is not None:
                offset = offset + self.split.to(offset.dtype)
        else:
            b, c, h, w = x.shape
            offset = self.split.to(x.dtype).expand(b, 2 * c, h, w)
        if torch.jit.is_tracing():  # fvcore counts the operator as deform_conv2d (mtbench.profiling)
            return deform_conv2d(x, offset, self.weight, self.bias)
        return F.conv2d(sample_per_channel(x, offset), self.weight, self.bias)


def sample_per_channel(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of each channel at its own offset: the sampling inside a 1x1 `deform_conv2d`.

    x (B, C, H, W), offset (B, 2*C, H, W) as (dy, dx) per channel; points outside the image read 0,
    exactly as deform_conv2d. Sampling with `grid_sample` and applying the 1x1 conv after computes the
    same operator as torchvision's deform_conv2d (tests check values and gradients) and trains
    faster: forward + backward at 2x256x107x140 took 0.16 s against 0.87 s on 2 CPU cores, and
    1.84 ms against 2.05 ms on an H200 (benchmarks/bench_demt_step.py). FLOP counting traces the
    deform_conv2d form, so the count names the operator.
    """
    b, c, h, w = x.shape
    off = offset.view(b, c, 2, h, w)
    rows = torch.arange(h, device=x.device, dtype=offset.dtype).view(1, 1, h, 1) + off[:, :, 0]
    cols = torch.arange(w, device=x.device, dtype=offset.dtype).view(1, 1, 1, w) + off[:, :, 1]
    # align_corners=False: pixel i sits at (2i + 1) / size - 1 in grid coordinates.
    grid = torch.stack([(2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1], dim=-1).view(b * c, h, w, 2)
    sampled = F.grid_sample(x.reshape(b * c, 1, h, w), grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return sampled.view(b, c, h, w)


class MixerBlock(nn.Module):
    """One deformable-mixer block: channel-aware mixing, then residual spatial-aware operator."""

    def __init__(self, width: int, *, channel_mixing: bool, deformable: bool,
                 split_kernel: tuple[int, int] | None) -> None:
        super().__init__()
        self.channel = nn.Sequential(nn.Conv2d(width, width, 1), nn.GELU(), nn.BatchNorm2d(width)) \
            if channel_mixing else None
        self.spatial = nn.Sequential(ChannelSplitConv(width, deformable=deformable, split_kernel=split_kernel),
                                     nn.GELU(), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            x = self.channel(x)
        return x + self.spatial(x)


class TaskAttention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters (in_proj 3C x C, out_proj C x C).

    The products run in `scaled_dot_product_attention`; tokens are channels-last, (..., L, C).
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation, as released.
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.constant_(self.in_proj.bias, 0.0)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def _proj(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Project with the query (0), key (1) or value (2) rows of in_proj."""
        c = x.shape[-1]
        rows = slice(index * c, (index + 1) * c)
        return F.linear(x, self.in_proj.weight[rows], self.in_proj.bias[rows])

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over a single key (its softmax is 1): the value and output projections only."""
        return self.out_proj(self._proj(x, 2))

    def per_pixel(self, query: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """Each pixel's (B, N, C) query attends over the T features (B, N, T, C) at that pixel.

        The same operator as projecting every feature to keys and values (nn.MultiheadAttention, as released),
        computed without them: each head's query goes through the key projection once (q W_k), meets the raw
        features, and the softmax-weighted sum of the raw features goes through the value projection once. The
        key bias adds the same q.b_k to every one of a pixel's T scores, so the softmax drops it; the weights
        sum to 1, so the value bias passes through as is. Per task this reads the fused features twice instead
        of projecting all T of them twice: the step's memory-bound part (benchmarks/bench_demt_step.py).
        Under FLOP counting (tracing) the released form runs, so GFLOPs count the released operator.
        """
        b, n, c = query.shape
        t, h = fused.shape[2], self.num_heads
        d = c // h
        if torch.jit.is_tracing():
            q = self._proj(query, 0).view(b, n, 1, h, d)
            k = self._proj(fused, 1).view(b, n, t, h, d)
            v = self._proj(fused, 2).view(b, n, t, h, d)
            return self.out_proj(attend_per_pixel(q, k, v).reshape(b, n, c))
        weight, bias = self.in_proj.weight, self.in_proj.bias
        q = self._proj(query, 0).view(b, n, h, d) * d ** -0.5
        q_through_keys = torch.einsum("bnhd,hdc->bnhc", q, weight[c:2 * c].view(h, d, c))
        scores = torch.einsum("bnhc,bntc->bnht", q_through_keys, fused).softmax(dim=-1)
        mixed = torch.einsum("bnht,bntc->bnhc", scores, fused)
        out = torch.einsum("bnhc,hdc->bnhd", mixed, weight[2 * c:].view(h, d, c)) + bias[2 * c:].view(h, d)
        return self.out_proj(out.reshape(b, n, c))

    def over_tokens(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, Lq, C) queries attend over (B, Lk, C) key/value tokens; returns (B, Lq, C)."""
        (b, lq, c), lk, h = query.shape, keys.shape[1], self.num_heads
        q = self._proj(query, 0).view(b, lq, h, c // h).transpose(1, 2)
        k = self._proj(keys, 1).view(b, lk, h, c // h).transpose(1, 2)
        v = self._proj(keys, 2).view(b, lk, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Lq, C/heads)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, c))


def attend_per_pixel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one query over T keys per pixel: q (B, N, 1, H, D), k and v (B, N, T, H, D).

    Returns (B, N, H, D). Written with elementwise products and a softmax over T, not as an SDPA call:
    with one query and T <= 5 keys per pixel SDPA sees B*N ~ 10^5 tiny problems, which its CUDA
    kernels run slowly or refuse (cuDNN fails beyond 65535 of them: bf16, batch 8 at 428x560). Under
    FLOP counting the SDPA form is traced instead, so both products are counted (mtbench.profiling).
    """
    if torch.jit.is_tracing():
        b, n, t, h, d = k.shape
        q, k, v = (x.reshape(b * n, -1, h, d).transpose(1, 2) for x in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, h, d)
    weights = ((q * k).sum(-1) * q.shape[-1] ** -0.5).softmax(dim=2)  # (B, N, T, H)
    return (weights.unsqueeze(-1) * v).sum(2)


class TaskInteraction(nn.Module):
    """Task interaction block: attention over the tasks' features, then Linear + LayerNorm."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.attn = TaskAttention(width, num_heads)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))


class TaskQuery(nn.Module):
    """Task query block: one task's features query the fused features; Linear + LayerNorm, residual."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.attn = TaskAttention(width, num_heads)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))


def pool_tokens(tokens: torch.Tensor, size: tuple[int, int], reduction: int) -> torch.Tensor:
    """Average-pool pixel-major (B, h*w, T, C) tokens by `reduction` per side; returns (B, T*h'*w', C)."""
    b, _, t, c = tokens.shape
    h, w = size
    if reduction == 1:
        return tokens.reshape(b, h * w * t, c)
    x = tokens.view(b, h, w, t, c).permute(0, 3, 4, 1, 2).reshape(b * t, c, h, w)
    x = F.adaptive_avg_pool2d(x, (math.ceil(h / reduction), math.ceil(w / reduction)))
    return x.view(b, t, c, -1).transpose(2, 3).reshape(b, -1, c)


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of `device`: the GPU's for CUDA, physical RAM otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ------------------------------------------------------------------------------------------ model
class DeMT(nn.Module):
    """DeMT on any registered backbone; forward(image) -> {task: (B, C_t, H, W) at input size}."""

    def __init__(self, backbone: Backbone, *, tasks: tuple[str, ...], dataset: str,
                 attention: Literal["released", "tokens"] = "released", kv_reduction: int = 8,
                 num_heads: int = 4, mixer_width: int = 256, mixer_depth: int = 1, channel_mixing: bool = True,
                 deformable: bool = True, split_kernel: tuple[int, int] | None = None,
                 task_interaction: bool = True, task_query: bool = True,
                 bottleneck_channels: int | None = None, two_logit_heads: bool = False) -> None:
        super().__init__()
        check_options(tasks=tasks, attention=attention, kv_reduction=kv_reduction, num_heads=num_heads,
                      mixer_width=mixer_width, mixer_depth=mixer_depth, split_kernel=split_kernel,
                      task_interaction=task_interaction, task_query=task_query)
        outputs = {t: get_task(t).head_channels(dataset, two_logits=two_logit_heads) for t in tasks}
        self.tasks = tuple(tasks)
        self.auxiliary: dict[str, dict[str, torch.Tensor]] = {}  # no deep supervision
        self.attention = attention
        self.kv_reduction = kv_reduction
        self.num_heads = num_heads
        # What load_swin_checkpoint loaded, ignored and left at initialisation (set by the builder).
        self.pretrained_report: dict[str, object] | None = None
        self.backbone = backbone
        # The released mmseg Swin normalises every output stage (norm0..norm3); CNN backbones do not.
        self.backbone_norms = nn.ModuleList(nn.LayerNorm(c) for c in backbone.channels) \
            if backbone.channels_last_output else None
        in_channels = sum(backbone.channels)
        self.project = nn.Sequential(nn.Linear(in_channels, mixer_width), nn.LayerNorm(mixer_width))
        split = tuple(split_kernel) if split_kernel is not None else None
        self.mixers = nn.ModuleDict({t: nn.Sequential(*[
            MixerBlock(mixer_width, channel_mixing=channel_mixing, deformable=deformable, split_kernel=split)
            for _ in range(mixer_depth)]) for t in tasks})
        self.interaction = TaskInteraction(mixer_width, num_heads) if task_interaction else None
        self.queries = nn.ModuleDict({t: TaskQuery(mixer_width, num_heads) for t in tasks}) if task_query else None
        hidden = bottleneck_channels or in_channels // 8
        self.bottlenecks = nn.ModuleDict({t: ConvBNReLU(mixer_width, hidden, 3) for t in tasks})
        self.logits = nn.ModuleDict({t: nn.Conv2d(hidden, outputs[t], 1) for t in tasks})
        for conv in self.logits.values():
            # Released `init_weights`: prediction convs ~ N(0, 0.01), zero bias.
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, 0.0)

    # -- checks
    def check_input(self, image: torch.Tensor) -> None:
        """Refuse inputs that tokens attention cannot hold (any size is padded to the backbone's stride)."""
        h, w = padded_size(image.shape[-2:], self.backbone.reductions[0])
        stride = self.backbone.reductions[0]
        if self.attention == "tokens":
            need = self.attention_bytes(image.shape[0], (h // stride, w // stride))
            have = device_memory_bytes(image.device)
            if need > have:
                raise MtbenchError(
                    f"DeMT attention=tokens at {h}x{w}, batch {image.shape[0]}, kv_reduction {self.kv_reduction}: "
                    f"the attention matrices need about {need / 2**30:.2f} GiB, more than the "
                    f"{have / 2**30:.2f} GiB of {image.device}. Raise kv_reduction, lower the batch or the input "
                    "size, or use attention=released.")

    def attention_bytes(self, batch: int, size: tuple[int, int]) -> int:
        """Upper estimate of the memory of the tokens-mode attention matrices for one training step.

        Per attention call B*heads*Lq*Lk float32 scores and as many probabilities, kept for the
        backward pass by the non-fused (math) kernel: the interaction block (Lq = T*h*w) and the T
        query blocks (Lq = h*w), keys reduced to T*ceil(h/r)*ceil(w/r).
        """
        t, hw = len(self.tasks), size[0] * size[1]
        r = self.kv_reduction
        lk = t * math.ceil(size[0] / r) * math.ceil(size[1] / r)
        lq = (t * hw if self.interaction is not None else 0) + (t * hw if self.queries is not None else 0)
        return batch * self.num_heads * lq * lk * 4 * 2

    # -- forward
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(image)
        x = self.project(self.fuse(self.backbone(pad_bottom_right(image, self.backbone.reductions[0]))))
        b, h, w, c = x.shape
        x = x.permute(0, 3, 1, 2).contiguous()  # deform_conv2d wants NCHW; one copy shared by all mixers
        maps = {t: self.mixers[t](x) for t in self.tasks}
        if self.queries is not None:
            # Pixel-major tokens (B, h*w, T, C): per-pixel attention then needs no copies.
            tokens = torch.stack([maps[t].permute(0, 2, 3, 1) for t in self.tasks], dim=3).view(b, h * w, -1, c)
            fused = self.interact(tokens, (h, w))
            for t, own in zip(self.tasks, tokens.unbind(2), strict=True):
                out = own + self.query(t, own, fused, (h, w))
                maps[t] = out.view(b, h, w, c).permute(0, 3, 1, 2)
        preds = {t: self.logits[t](self.bottlenecks[t](maps[t])).contiguous() for t in self.tasks}
        return {t: F.interpolate(p, size=image.shape[-2:], mode="bilinear", align_corners=False)
                for t, p in preds.items()}

    def fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Normalise (transformer backbones), upsample to the finest map, concatenate: (B, h, w, sum C)."""
        size = feats[0].shape[-2:]
        parts = []
        for i, f in enumerate(feats):
            f = f.permute(0, 2, 3, 1)
            if self.backbone_norms is not None:
                f = self.backbone_norms[i](f)
            if f.shape[1:3] != size:
                f = F.interpolate(f.permute(0, 3, 1, 2), size=size, mode="bilinear",
                                  align_corners=False).permute(0, 2, 3, 1)
            parts.append(f)
        return torch.cat(parts, dim=-1)

    def interact(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Task interaction block on pixel-major (B, hw, T, C) tokens; returns fused features, same shape."""
        if self.interaction is None:
            return tokens
        if self.attention == "released":
            fused = self.interaction.attn.values(tokens)
        else:
            b, hw, t, c = tokens.shape
            keys = pool_tokens(tokens, size, self.kv_reduction)
            fused = self.interaction.attn.over_tokens(tokens.reshape(b, hw * t, c), keys).view(b, hw, t, c)
        return self.interaction.mlp(fused)

    def query(self, task: str, tokens: torch.Tensor, fused: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Task query block of `task`: its (B, hw, C) tokens attend to the fused (B, hw, T, C) features."""
        block = self.queries[task]
        if self.attention == "released":
            out = block.attn.per_pixel(tokens, fused)
        else:
            out = block.attn.over_tokens(tokens, pool_tokens(fused, size, self.kv_reduction))
        return block.mlp(out)


def check_options(*, tasks: tuple[str, ...], attention: str, kv_reduction: int, num_heads: int, mixer_width: int,
                  mixer_depth: int, split_kernel: tuple[int, int] | None, task_interaction: bool,
                  task_query: bool) -> None:
    """Raise MtbenchError for a DeMT option value that cannot build a model."""
    if not tasks:
        raise MtbenchError("DeMT needs at least one task (dataset.tasks is empty).")
    if attention not in ATTENTION_MODES:
        raise MtbenchError(f"DeMT option attention={attention!r}: use one of {', '.join(ATTENTION_MODES)}.")
    if kv_reduction < 1:
        raise MtbenchError(f"DeMT option kv_reduction={kv_reduction}: must be >= 1.")
    if mixer_depth < 1:
        raise MtbenchError(f"DeMT option mixer_depth={mixer_depth}: must be >= 1.")
    if num_heads < 1 or mixer_width % num_heads:
        raise MtbenchError(f"DeMT options mixer_width={mixer_width}, num_heads={num_heads}: the width must be "
                           "a multiple of the number of heads.")
    if split_kernel is not None:
        k = tuple(split_kernel)
        if len(k) != 2 or 1 not in k or any(not isinstance(n, int) or n < 1 or n % 2 == 0 for n in k):
            raise MtbenchError(f"DeMT option split_kernel={list(k)}: give [1, k] (horizontal) or [k, 1] (vertical) "
                               "with k odd, e.g. [1, 3]; null for the released operator.")
    if task_interaction and not task_query:
        raise MtbenchError("DeMT options task_interaction=true, task_query=false: the interaction block only "
                           "feeds the task query block; set task_interaction=false as well to drop the decoder.")


@register_model("demt")
def demt(*, tasks: tuple[str, ...], dataset: str, backbone: str = "swin_tiny", pretrained: bool | str = False,
         img_size: tuple[int, int] | None = None, attention: Literal["released", "tokens"] = "released",
         kv_reduction: int = 8, num_heads: int = 4, mixer_width: int = 256, mixer_depth: int = 1,
         channel_mixing: bool = True, deformable: bool = True, split_kernel: tuple[int, int] | None = None,
         task_interaction: bool = True, task_query: bool = True,
         bottleneck_channels: int | None = None, two_logit_heads: bool = False,
         backbone_drop_path_rate: float = 0.0) -> DeMT:
    """DeMT (AAAI'23): deformable-mixer encoder + task-aware transformer decoder (see module docstring).

    `two_logit_heads`: saliency gets a 2-channel softmax head, as the released PASCAL-Context model.
    `backbone_drop_path_rate`: the backbone's stochastic depth (the released Swin trains with 0.1).

    A `pretrained` path to a Swin checkpoint in mmseg (UperNet ADE20K, as released) or original Swin
    layout is loaded with `load_swin_checkpoint`; other paths and `true` go through timm.
    """
    check_options(tasks=tasks, attention=attention, kv_reduction=kv_reduction, num_heads=num_heads,
                  mixer_width=mixer_width, mixer_depth=mixer_depth, split_kernel=split_kernel,
                  task_interaction=task_interaction, task_query=task_query)
    state = read_checkpoint(pretrained) if isinstance(pretrained, str) else None
    swin_state = state is not None and swin_layout(state) in ("mmseg", "swin")
    encoder = build_backbone(backbone, pretrained=False if swin_state else pretrained, img_size=img_size,
                             drop_path_rate=backbone_drop_path_rate)
    model = DeMT(encoder, tasks=tasks, dataset=dataset, attention=attention, kv_reduction=kv_reduction,
                 num_heads=num_heads, mixer_width=mixer_width, mixer_depth=mixer_depth,
                 channel_mixing=channel_mixing, deformable=deformable, split_kernel=split_kernel,
                 task_interaction=task_interaction, task_query=task_query, bottleneck_channels=bottleneck_channels,
                 two_logit_heads=two_logit_heads)
    if swin_state:
        model.pretrained_report = load_swin_checkpoint(encoder, state, stage_norms=model.backbone_norms)
    return model


# ------------------------------------------------------------------------ Swin checkpoint loading
def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely (weights_only), unwrapping 'state_dict'/'model' and a 'module.' prefix."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise MtbenchError(f"model.pretrained: checkpoint {str(file)!r} does not exist. Give the path of a "
                           "state_dict file, or `pretrained: false`.")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the user's to fix)
        raise MtbenchError(f"model.pretrained: cannot read {str(file)!r} as a PyTorch checkpoint "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping):
        raise MtbenchError(f"model.pretrained: {str(file)!r} holds no state dict.")
    return {k.removeprefix("module."): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def swin_layout(state: Mapping[str, torch.Tensor]) -> str:
    """Name the key layout of a Swin state dict: 'mmseg', 'swin' (original/timm) or 'other'."""
    keys = [k.removeprefix("backbone.") for k in state]
    if any(k.startswith("stages.") for k in keys) and any(k.startswith("patch_embed.projection") for k in keys):
        return "mmseg"
    if any(k.startswith("layers.") for k in keys) and any(k.startswith("patch_embed.proj") for k in keys):
        return "swin"
    return "other"


def unfold_to_swin_order(x: torch.Tensor) -> torch.Tensor:
    """Reorder the last (4*C) axis of a patch-merging weight from mmseg's nn.Unfold order to Swin's.

    mmseg's Unfold orders the 2x2 neighbours as c*4 + 2*dy + dx; Swin (and timm) concatenate
    [x(0,0), x(1,0), x(0,1), x(1,1)] (dy, dx), i.e. (2*dx + dy)*C + c.
    """
    c = x.shape[-1] // 4
    return x.unflatten(-1, (c, 4))[..., [0, 2, 1, 3]].transpose(-1, -2).flatten(-2)


_MMSEG_RULES = [
    (re.compile(r"^patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\."), r"layers.\1.blocks.\2.attn."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.0\.0\."), r"layers.\1.blocks.\2.mlp.fc1."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.1\."), r"layers.\1.blocks.\2.mlp.fc2."),
    (re.compile(r"^stages\.(\d+)\.blocks\."), r"layers.\1.blocks."),
]
_BUFFERS = ("relative_position_index", "attn_mask", "relative_coords_table")


def swin_to_timm_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an mmseg or original Swin state dict to timm's keys; returns (mapped, ignored keys).

    Output keys: timm's `layers.N...` (patch merging at the start of stage N+1, as timm places it)
    and `stage_norms.N.*` for per-stage norms (mmseg `normN`; the original's final `norm` is stage 3's).
    Non-backbone entries (UperNet decode/auxiliary heads, the classifier) and buffers are ignored.
    """
    layout = swin_layout(state)
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    original = any(re.match(r"^layers\.0\.downsample\.", k.removeprefix("backbone.")) for k in state)
    prefixed = any(k.startswith("backbone.") for k in state)
    for full_key, value in state.items():
        if prefixed and not full_key.startswith("backbone."):
            ignored.append(full_key)
            continue
        key = full_key.removeprefix("backbone.")
        if key.rsplit(".", 1)[-1] in _BUFFERS or key.startswith(("head.", "decode_head.", "auxiliary_head.")):
            ignored.append(full_key)
            continue
        norm = re.match(r"^norm(\d*)\.(weight|bias)$", key)
        if norm:
            mapped[f"stage_norms.{norm.group(1) or 3}.{norm.group(2)}"] = value
            continue
        if layout == "mmseg":
            down = re.match(r"^stages\.(\d+)\.downsample\.(reduction|norm)\.(.*)$", key)
            if down:
                mapped[f"layers.{int(down.group(1)) + 1}.downsample.{down.group(2)}.{down.group(3)}"] = \
                    unfold_to_swin_order(value)
                continue
            for pattern, repl in _MMSEG_RULES:
                key, n = pattern.subn(repl, key)
                if n:
                    break
        elif original:
            key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        mapped[key] = value
    return mapped, ignored


def load_swin_checkpoint(backbone: Backbone, checkpoint: str | Path | Mapping[str, torch.Tensor], *,
                         stage_norms: nn.ModuleList | None = None) -> dict[str, object]:
    """Load an mmseg (UperNet ADE20K, as released DeMT) or original Swin checkpoint into a timm Swin backbone.

    Every backbone tensor must be matched; missing keys, unexpected backbone keys and shape
    mismatches raise MtbenchError listing them. Stage norms absent from the file (original Swin has
    only the final norm) keep their initialisation and are reported. Returns what was loaded, ignored
    and left at initialisation.
    """
    state = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    if swin_layout(state) == "other":
        raise MtbenchError("model.pretrained: the checkpoint has neither mmseg Swin keys (backbone.stages.N...) "
                           "nor original Swin keys (layers.N...); first keys: " + ", ".join(list(state)[:5]))
    mapped, ignored = swin_to_timm_keys(state)
    target = backbone.model.state_dict()
    features_naming = any(k.startswith("layers_") for k in target)
    own: dict[str, torch.Tensor] = {}
    norms: dict[str, torch.Tensor] = {}
    for key, value in mapped.items():
        if key.startswith("stage_norms."):
            norms[key.removeprefix("stage_norms.")] = value
        else:
            own[re.sub(r"^layers\.(\d+)\.", r"layers_\1.", key) if features_naming else key] = value
    expected = {k for k in target if k.rsplit(".", 1)[-1] not in _BUFFERS}
    missing = sorted(expected - own.keys())
    unexpected = sorted(own.keys() - expected)
    shapes = sorted(f"{k}: file {tuple(own[k].shape)} vs model {tuple(target[k].shape)}"
                    for k in expected & own.keys() if own[k].shape != target[k].shape)
    left: list[str] = []
    if stage_norms is not None:
        norm_target = stage_norms.state_dict()
        unexpected += sorted(f"norm{k.split('.')[0]}.{k.split('.')[1]}" for k in norms.keys() - norm_target.keys())
        shapes += sorted(f"norm {k}: file {tuple(norms[k].shape)} vs model {tuple(norm_target[k].shape)}"
                         for k in norm_target.keys() & norms.keys() if norms[k].shape != norm_target[k].shape)
        left = sorted(f"backbone_norms.{k}" for k in norm_target.keys() - norms.keys())
    else:
        ignored += sorted(f"norm{k}" for k in norms)
    if missing or unexpected or shapes:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
        lines = [f"missing: {show(missing)}" if missing else "",
                 f"unexpected: {show(unexpected)}" if unexpected else "",
                 f"shape mismatch: {show(shapes)}" if shapes else ""]
        raise MtbenchError("model.pretrained: the Swin checkpoint does not match the backbone "
                           f"({'; '.join(x for x in lines if x)}). Check that the checkpoint is for the same Swin "
                           "variant and that the input size keeps windows of 7 (at least 224x224).")
    backbone.model.load_state_dict({**target, **own}, strict=True)
    if stage_norms is not None and norms:
        stage_norms.load_state_dict({**stage_norms.state_dict(), **norms}, strict=True)
    return {"layout": swin_layout(state), "loaded": len(own) + (len(norms) if stage_norms is not None else 0),
            "ignored": ignored, "initialised": left}
