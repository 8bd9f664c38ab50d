"""InvPT-style multi-task decoder (Ye & Xu, ECCV 2022): an inverted pyramid of cross-task attention on a ViT.

Follows the released code (prismformore/Multi-Task-Transformer @ 870c6be: InvPT/models/transformer_net.py,
transformers/transformer_decoder.py, transformers/invpt.py; ../shared PROTOCOLS.md "InvPT as released").

Faithful to the release:
- ViT (ViT-L/16 as published) tapped after blocks 6, 12, 18 and 24, the last after the final LayerNorm;
  stochastic depth 0.15 in the ViT. The decoder stages are configured with 0.15 too, but the release takes
  linspace(0, 0.15, depth=1) = [0.0], so none runs: `drop_path_rate` defaults to 0.
- Preliminary decoder at 1/32 of the input (the last ViT map bilinearly resized to half its grid): per task
  two 3x3 ConvBNReLU (backbone width, then `preliminary_width` = 512) and a 1x1 preliminary prediction.
  These predictions are supervised (`self.auxiliary`, trainer `auxiliary_losses`: joined to their task's loss).
- Per task, a 1x1 conv of [features, preliminary prediction] to the stage-1 width (`decoder_width` = 576).
- Three stages at 1/32, 1/16 and 1/8 with per-task widths 576/288/144. Stages 2 and 3 first upsample each
  task's map 2x and apply two dilated (2) 3x3 ConvBNReLU, then add a ViT skip: block 12's map through a 3x3
  conv (1/16), block 6's map through a stride-2 transposed conv (1/8).
- Each stage is one transformer block over all tasks' tokens together (LayerNorm per task width, attention,
  residual, LayerNorm, MLP x4). Attention: queries from a stride-2 3x3 depthwise conv + BN per task, keys
  and values from average pooling per task (kernel = stride = 2, 4, 8: every stage attends to the same
  1/64-resolution key grid), linear q/k/v/output projections with bias, `num_heads` = 2, scale
  1/sqrt(per-task width) (not of the head width), output upsampled back to the stage's resolution.
- Attention message passing across stages: a stage's pre-softmax scores are fused with the previous stage's
  (query axis upsampled 2x per task) by a 1x1 conv over the 2 * heads score maps.
- After each stage, a LayerNorm over all tasks' channels jointly; per task a 1x1 conv to 576 (stages 2, 3),
  bilinear resize to 1/4 and a sum over stages; a 3x3 ConvBNReLU; a 1x1 head; bilinear resize to the input.

Deviations (each one stated, none silent):
- Attention runs through `scaled_dot_product_attention`. The released fused scores are linear in the
  queries (upsampling along the query axis and mixing heads commute with q @ k^T), so each stage's fused
  score equals Q @ K^T where Q concatenates, along features, the head-mixed queries of this stage and the
  upsampled, head-mixed Q of the previous stage, and K the matching keys: exact, but the product runs over
  576 / 864 / 1008 features instead of the head width. fvcore (mtbench handles) on ViT-L: 599.8 GFLOPs at
  448x576 NYUD vs 597.5 for the release, 671.8 vs 668.1 at 512x512 PASCAL. The fuse conv's bias adds one
  constant per head to every score of a row, which softmax ignores (its gradient is ~1e-11): not built.
- Parameters the release builds but never runs, or runs without using the result, are not built:
  the conv on block 18's map (`scale_embed[2]`, 5.31M; its output is discarded because stage 1 has no patch
  embedding, so block 18's map is unused), the stage-1 1x1 `redu_chan` convs, the stage-1 score-fuse conv
  (no previous stage), the unused `norm_mt` and the fuse biases. Release, ViT-L, random init: NYUD 402,092,888
  built / 395,453,322 that reach an output (ours: 395,453,322); PASCAL 422,929,810 / 415,957,604 (ours:
  415,955,938 with a 1-channel saliency head, 1,666 fewer). Loaded with the release's weights
  (`mtbench.models.load_weights`, mtbench/models/released.py), mtbench's model reproduces its outputs to 4.5e-6
  (checked outside the repo against the released code; docs/released_checkpoints.md).
- BatchNorm2d, which `train.sync_bn: true` turns into SyncBatchNorm under DDP as the release's decoder has.
- Saliency: 1 output channel (balanced BCE) by default; `two_logit_heads: true` builds the release's 2-channel
  softmax head (the loss scores z1 - z0, as ATRC's balanced cross-entropy).
- Sizes: any input whose sides are multiples of 32 (patch 16 x the decoder's half-grid start); the release
  needs multiples of 64 and its build size. Messages are resized to the next stage's query grid by size,
  which equals the release's 2x upsampling whenever the release runs.
- `attention_message=False` drops the cross-stage score fusion (an ablation, not in the release).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from mtbench.errors import MtbenchError
from mtbench.models.backbones import ViTBackbone, build_vit_backbone
from mtbench.models.blocks import ConvBNReLU
from mtbench.registry import register_model
from mtbench.tasks import get_task

NUM_STAGES = 3
# Multiple of the input side: patch 16 x the decoder starting at half the ViT grid.
SIZE_MULTIPLE = 32


# ----------------------------------------------------------------------------------------- blocks
def dilated_conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv with dilation 2 (same size), BN, ReLU: the released UpEmbed's conv unit."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class UpEmbed(nn.Sequential):
    """Upsample 2x (bilinear) and two dilated 3x3 ConvBNReLU: a task's map entering stages 2 and 3."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         dilated_conv_bn_relu(cin, cout), dilated_conv_bn_relu(cout, cout))


class Mlp(nn.Sequential):
    """Linear, GELU, Linear (the transformer block's MLP)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def resize_queries(q: torch.Tensor, tasks: int, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize the query axis of (B, H, T*h*w, D), task by task, from grid `src` to `dst`."""
    b, heads, _, dim = q.shape
    grid = q.reshape(b * heads * tasks, *src, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst, mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(b, heads, tasks * dst[0] * dst[1], dim)


class Message:
    """The previous stage's fused attention scores, held as queries and keys: scores = q @ k^T (+ const).

    q: (B, H, T*h*w, D) on the previous query grid `size`; k: (B, T*S, D), shared by the heads.
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, size: tuple[int, int]) -> None:
        self.q, self.k, self.size = q, k, size


class TaskAttention(nn.Module):
    """Self-attention over all tasks' tokens with reduced queries (depthwise conv) and keys/values (pooling).

    Scale 1/sqrt(`width`), the per-task width, as released. With `fuse_message` the pre-softmax scores are
    fused with the previous stage's by a learned (heads x 2*heads) mix (the released 1x1 `fuse_attn`).
    """

    def __init__(self, tasks: int, width: int, num_heads: int, kv_pool: int, *, fuse_message: bool,
                 send_message: bool) -> None:
        super().__init__()
        self.tasks, self.width, self.num_heads, self.kv_pool = tasks, width, num_heads, kv_pool
        self.scale = width ** -0.5
        self.send_message = send_message
        self.q_reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width, bias=False),
                          nn.BatchNorm2d(width)) for _ in range(tasks))
        self.proj_q = nn.Linear(width, width)
        self.proj_k = nn.Linear(width, width)
        self.proj_v = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)
        # Weight of the released 1x1 conv over [this stage's scores, the previous stage's] (heads x 2*heads).
        self.fuse = nn.Parameter(torch.empty(num_heads, 2 * num_heads)) if fuse_message else None
        if self.fuse is not None:
            nn.init.kaiming_uniform_(self.fuse, a=math.sqrt(5))  # nn.Conv2d's default, as released
        self.register_buffer("identity", torch.eye(num_heads), persistent=False)

    def forward(self, x: list[torch.Tensor], message: Message | None,
                ) -> tuple[torch.Tensor, tuple[int, int], Message | None]:
        """Attend from every task's reduced queries to all tasks' pooled keys.

        x: per task (B, C, h, w), layer-normed. Returns (B, T*hq*wq, C) on the query grid, that grid, and
        the fused scores for the next stage (None unless `send_message`).
        """
        b, heads, width = x[0].shape[0], self.num_heads, self.width
        queries = [reduce(t) for reduce, t in zip(self.q_reduce, x, strict=True)]
        q_size = (queries[0].shape[-2], queries[0].shape[-1])
        q = self.proj_q(torch.cat([t.flatten(2) for t in queries], dim=2).transpose(1, 2))
        kv = torch.cat([F.avg_pool2d(t, self.kv_pool, ceil_mode=True).flatten(2) for t in x], 2).transpose(1, 2)
        k, v = self.proj_k(kv), self.proj_v(kv)
        split = (b, -1, heads, width // heads)
        q_heads = q.reshape(split).transpose(1, 2) * self.scale            # (B, H, Lq, d)
        v_heads = v.reshape(split).transpose(1, 2)                          # (B, H, S, d)
        if self.fuse is None and not self.send_message:
            out = F.scaled_dot_product_attention(q_heads, k.reshape(split).transpose(1, 2), v_heads, scale=1.0)
            return self.proj(out.transpose(1, 2).reshape(b, -1, width)), q_size, None
        # Head g's scores are sum_h m[g, h] q_h @ k_h^T = (m[g, h] q_h laid out along features) @ k^T.
        mix = self.identity if self.fuse is None else self.fuse[:, :heads]
        fused_q = torch.einsum("gh,bhld->bglhd", mix, q_heads).flatten(3)   # (B, H, Lq, C)
        fused_k = k                                                         # (B, S, C)
        if self.fuse is not None and message is not None:
            prev = resize_queries(message.q, self.tasks, message.size, q_size)
            fused_q = torch.cat([fused_q, torch.einsum("gh,bhld->bgld", self.fuse[:, heads:], prev)], dim=-1)
            fused_k = torch.cat([k, message.k], dim=-1)
        keys = fused_k.unsqueeze(1).expand(-1, heads, -1, -1)
        out = F.scaled_dot_product_attention(fused_q, keys, v_heads, scale=1.0)
        out = self.proj(out.transpose(1, 2).reshape(b, -1, width))
        return out, q_size, Message(fused_q, fused_k, q_size) if self.send_message else None


class InvPTStage(nn.Module):
    """One decoder stage: [UpEmbed + ViT skip], then one transformer block over all tasks' tokens."""

    def __init__(self, tasks: int, cin: int, width: int, *, index: int, num_heads: int, mlp_ratio: float,
                 drop_path: float, fuse_message: bool, send_message: bool) -> None:
        super().__init__()
        self.tasks = tasks
        self.up = nn.ModuleList(UpEmbed(cin, width) for _ in range(tasks)) if index > 0 else None
        self.norm1 = nn.LayerNorm(width)
        self.attn = TaskAttention(tasks, width, num_heads, kv_pool=2 ** (index + 1),
                                  fuse_message=fuse_message and index > 0, send_message=send_message)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.drop_path = StochasticDepth(drop_path, mode="row")
        for m in self.modules():
            if isinstance(m, nn.Linear):  # released InvPTStage init (LayerNorm/BN keep PyTorch's 1/0)
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: list[torch.Tensor], skip: torch.Tensor | None,
                message: Message | None) -> tuple[list[torch.Tensor], Message | None]:
        if self.up is not None:
            x = [up(t) + skip for up, t in zip(self.up, x, strict=True)]
        h, w = x[0].shape[-2:]
        tokens = torch.cat([t.flatten(2) for t in x], dim=2).transpose(1, 2)   # (B, T*h*w, C)
        normed = self.norm1(tokens).transpose(1, 2).unflatten(2, (self.tasks, h, w)).unbind(2)
        attn, (hq, wq), message = self.attn(list(normed), message)
        attn = attn.transpose(1, 2).unflatten(2, (self.tasks, hq, wq)).transpose(1, 2).flatten(0, 1)
        attn = F.interpolate(attn, size=(h, w), mode="bilinear", align_corners=False)
        attn = attn.unflatten(0, (-1, self.tasks)).permute(0, 1, 3, 4, 2).flatten(1, 3)  # (B, T*h*w, C)
        tokens = tokens + self.drop_path(attn)
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return list(tokens.transpose(1, 2).unflatten(2, (self.tasks, h, w)).unbind(2)), message


# ------------------------------------------------------------------------------------------- model
class InvPT(nn.Module):
    """InvPT-style network: ViT, preliminary per-task predictions, 3-stage inverted-pyramid decoder, heads.

    forward(image) -> {task: (B, C_t, H, W)} at input resolution. In training mode it also sets
    `self.auxiliary = {"preliminary": {task: (B, C_t, H/32, W/32)}}` for deep supervision.
    """

    def __init__(self, backbone: ViTBackbone, *, tasks: tuple[str, ...], dataset: str, preliminary_width: int = 512,
                 decoder_width: int = 576, num_heads: int = 2, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 attention_message: bool = True, two_logit_heads: bool = False) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.backbone = backbone
        self.auxiliary: dict[str, dict[str, torch.Tensor]] = {}
        outputs = {t: get_task(t).head_channels(dataset, two_logits=two_logit_heads) for t in tasks}
        vit = backbone.channels[-1]
        widths = [decoder_width // 2 ** i for i in range(NUM_STAGES)]
        self.widths = widths
        self.preliminary = nn.ModuleDict(
            {t: nn.Sequential(ConvBNReLU(vit, vit), ConvBNReLU(vit, preliminary_width)) for t in tasks})
        self.preliminary_head = nn.ModuleDict({t: nn.Conv2d(preliminary_width, outputs[t], 1) for t in tasks})
        self.mix = nn.ModuleDict({t: nn.Conv2d(preliminary_width + outputs[t], widths[0], 1) for t in tasks})
        # ViT skips into stage 2 (block 12's map, 1/16) and stage 3 (block 6's map, upsampled to 1/8).
        self.skip_16 = nn.Conv2d(backbone.channels[1], widths[1], 3, padding=1)
        self.skip_8 = nn.ConvTranspose2d(backbone.channels[0], widths[2], 3, stride=2, padding=1, output_padding=1)
        self.stages = nn.ModuleList(
            InvPTStage(len(tasks), widths[max(i - 1, 0)], widths[i], index=i, num_heads=num_heads,
                       mlp_ratio=mlp_ratio, drop_path=drop_path_rate, fuse_message=attention_message,
                       send_message=attention_message and i < NUM_STAGES - 1)
            for i in range(NUM_STAGES))
        self.stage_norms = nn.ModuleList(nn.LayerNorm(len(tasks) * w) for w in widths)
        # Stage 1's width is already the output width: only stages 2 and 3 are projected (released `redu_chan`).
        self.reduce = nn.ModuleList(
            nn.ModuleDict({t: nn.Conv2d(w, widths[0], 1) for t in tasks}) for w in widths[1:])
        # Released `mt_proj`: a 3x3 conv with bias (redundant before BN, kept for parameter parity), BN, ReLU.
        self.out_proj = nn.ModuleDict({t: nn.Sequential(nn.Conv2d(widths[0], widths[0], 3, padding=1),
                                                        nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
                                       for t in tasks})
        for block in self.out_proj.values():
            nn.init.trunc_normal_(block[0].weight, std=0.02)
        self.heads = nn.ModuleDict({t: nn.Conv2d(widths[0], outputs[t], 1) for t in tasks})

    def check_input(self, size: tuple[int, int] | torch.Size) -> None:
        """Raise MtbenchError unless both sides are multiples of SIZE_MULTIPLE."""
        if any(int(s) % SIZE_MULTIPLE for s in size):
            raise MtbenchError(f"InvPT input size {int(size[0])}x{int(size[1])}: both sides must be multiples of "
                               f"{SIZE_MULTIPLE} (ViT patch 16, decoder starting at half the ViT grid). Crop or pad "
                               f"to such a size, e.g. 448x576 for NYUD, 512x512 for PASCAL.")

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(image.shape[-2:])
        feats = self.backbone(image)
        grid = feats[-1].shape[-2:]
        start = (grid[0] // 2, grid[1] // 2)
        x = F.interpolate(feats[-1], size=start, mode="bilinear", align_corners=False)
        prelim = {t: block(x) for t, block in self.preliminary.items()}
        prelim_pred = {t: self.preliminary_head[t](f) for t, f in prelim.items()}
        self.auxiliary = {"preliminary": prelim_pred} if self.training else {}
        tokens = [self.mix[t](torch.cat([prelim[t], prelim_pred[t]], dim=1)) for t in self.tasks]
        skips = [None, self.skip_16(feats[1]), self.skip_8(feats[0])]
        quarter = (4 * grid[0], 4 * grid[1])
        summed: list[torch.Tensor | int] = [0] * len(self.tasks)
        message = None
        for i, stage in enumerate(self.stages):
            tokens, message = stage(tokens, skips[i], message)
            joint = self.stage_norms[i](torch.cat(tokens, dim=1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            for j, (task, part) in enumerate(zip(self.tasks, joint.chunk(len(self.tasks), dim=1), strict=True)):
                if i > 0:
                    part = self.reduce[i - 1][task](part)
                summed[j] = summed[j] + F.interpolate(part, size=quarter, mode="bilinear", align_corners=False)
        size = image.shape[-2:]
        return {t: F.interpolate(self.heads[t](self.out_proj[t](s)), size=size, mode="bilinear", align_corners=False)
                for t, s in zip(self.tasks, summed, strict=True)}


def check_options(*, tasks: tuple[str, ...], dataset: str, decoder_width: int, num_heads: int,
                  img_size: tuple[int, int] | None) -> None:
    """Raise MtbenchError for an InvPT option value or task that cannot build a model."""
    if not tasks:
        raise MtbenchError("InvPT needs at least one task (dataset.tasks is empty).")
    for t in tasks:
        get_task(t).num_outputs(dataset)  # a task without a head on this dataset is a user error
    if num_heads < 1 or decoder_width % (2 ** (NUM_STAGES - 1) * num_heads):
        raise MtbenchError(f"InvPT options decoder_width={decoder_width}, num_heads={num_heads}: every stage "
                           f"width ({decoder_width}, /2, /4) must be a multiple of num_heads.")
    if img_size is not None and any(int(s) % SIZE_MULTIPLE for s in img_size):
        raise MtbenchError(f"InvPT input size {img_size[0]}x{img_size[1]}: both sides must be multiples of "
                           f"{SIZE_MULTIPLE} (ViT patch 16, decoder starting at half the ViT grid). Set the crop or "
                           "pad size (dataset.options) to such a size, e.g. 448x576 for NYUD, 512x512 for PASCAL.")


@register_model("invpt", smoke_backbone="vit_test", test_size=(64, 96))
def invpt(*, tasks: tuple[str, ...], dataset: str, backbone: str = "vit_large_patch16",
          pretrained: bool | str = False, img_size: tuple[int, int] | None = None, preliminary_width: int = 512,
          decoder_width: int = 576, num_heads: int = 2, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
          backbone_drop_path_rate: float = 0.15, attention_message: bool = True,
          two_logit_heads: bool = False) -> InvPT:
    """InvPT-style (ECCV'22): ViT + inverted-pyramid cross-task transformer decoder (see module docstring).

    `two_logit_heads`: saliency gets a 2-channel softmax head, as the released PASCAL-Context model."""
    check_options(tasks=tasks, dataset=dataset, decoder_width=decoder_width, num_heads=num_heads,
                  img_size=img_size)
    encoder = build_vit_backbone(backbone, pretrained=pretrained, img_size=img_size,
                                 drop_path_rate=backbone_drop_path_rate)
    return InvPT(encoder, tasks=tasks, dataset=dataset, preliminary_width=preliminary_width,
                 decoder_width=decoder_width, num_heads=num_heads, mlp_ratio=mlp_ratio,
                 drop_path_rate=drop_path_rate, attention_message=attention_message, two_logit_heads=two_logit_heads)
