"""Small building blocks shared by the baseline models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """k x k convolution, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def fuse_scales(feats: list[torch.Tensor]) -> torch.Tensor:
    """Upsample every map to the first (finest) map's size and concatenate them (HRNet-style)."""
    size = feats[0].shape[-2:]
    ups = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
    return torch.cat(ups, dim=1)


class TaskHead(nn.Module):
    """A light per-task head on fused multi-scale features: 3x3 ConvBNReLU, 1x1 to the task's outputs."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.block = ConvBNReLU(in_channels, hidden)
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.out(self.block(x)), size=size, mode="bilinear", align_corners=False)
