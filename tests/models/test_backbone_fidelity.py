"""Swin and HRNet backbones compute what the released models' backbones compute (numbers from the released code).

Fixtures in tests/fixtures/released/, made once from the authors' code (random weights, CPU, torch 2.14):
- swin_tiny_config.pt: yangyangxu0/DeMT@b638e14 src/model/backbones/swin.py::SwinTransformer (the mmseg Swin of
  released DeMT) at a tiny config (embed 8, depths 2-2-2-2, 1 head, window 7) on a 228x260 input, whose stage
  maps (57x65, 29x33, 15x17, 8x9) are no multiples of 7. Stored: its weights converted to timm names
  (mtbench.models.demt.swin_to_timm_keys: DeMT's mapping, patch merging reordered by `unfold_to_swin_order`),
  rounded to float16 before the released run, so storing them in float16 is exact; the input (float16, exact);
  the four stage outputs before DeMT's per-stage norms (which mtbench keeps outside the backbone) in float32.
- hrnet_w18_small_outputs.pt: SimonVandenhende/Multi-Task-Learning-PyTorch@ed3d9ac models/seg_hrnet.py::
  HighResolutionNet with models/model_info/hrnet_w18.yml (= HRNetV2-W18-small-v2), eval mode, weights from
  `formula_state` below (same key names as timm's), on a 64x64 and a 72x88 input: the four branch maps.
  Weights are not stored; the test regenerates them with the same formula.
"""

from __future__ import annotations

import copy
import math
import pickle
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from mtbench.models import build_backbone
from mtbench.models.backbones import SWIN_TIMM_KWARGS, create_backbone, create_swin_backbone

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "released"
TOL = 1e-5


# --------------------------------------------------------------------------- deterministic weights
def formula_values(name: str, numel: int) -> torch.Tensor:
    """`numel` values uniform in [0, 1), a function of `name` only (integer hashing: the same on every machine)."""
    mask = 0xFFFFFFFF  # values stay below 2**59: no int64 overflow
    x = (torch.arange(numel, dtype=torch.int64) * 2654435761 + zlib.crc32(name.encode())) & mask
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & mask
    x = (x >> 16) ^ x
    return x.to(torch.float64) / 2**32


def formula_tensor(name: str, like: torch.Tensor) -> torch.Tensor:
    """A value for state-dict entry `name` shaped as `like`: unit-variance weights scaled by 1/sqrt(fan-in),
    BN/LN scales near 1, small biases and running means, running variances in [1, 1.5)."""
    u = formula_values(name, like.numel()).reshape(like.shape)
    v = (2 * u - 1) * math.sqrt(3)
    if name.endswith("running_var"):
        out = 1 + 0.5 * u
    elif name.endswith(("running_mean", "bias")):
        out = 0.1 * v
    elif like.dim() == 1:
        out = 1 + 0.2 * v
    else:
        out = v / math.sqrt(like[0].numel())
    return out.to(like.dtype)


def formula_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state dict with every float entry replaced by `formula_tensor` (counters kept)."""
    return {k: formula_tensor(k, v) if v.is_floating_point() else v for k, v in module.state_dict().items()}


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------- Swin
@pytest.fixture(scope="module")
def swin_fixture() -> dict:
    return torch.load(FIXTURES / "swin_tiny_config.pt", weights_only=True)


def tiny_swin(config: dict, img_size: tuple[int, int]):
    return create_swin_backbone("swin_tiny_patch4_window7_224", img_size=img_size, embed_dim=config["embed_dim"],
                                depths=tuple(config["depths"]), num_heads=tuple(config["num_heads"]),
                                window_size=config["window_size"]).eval()


def timm_attn(backbone: nn.Module) -> nn.Module:
    """Drop the per-block attention, back to timm's own `SwinTransformerBlock._attn`."""
    for m in backbone.modules():
        m.__dict__.pop("_attn", None)
    return backbone


def test_swin_matches_the_released_mmseg_swin_where_stages_are_no_multiples_of_the_window(swin_fixture):
    config = swin_fixture["config"]
    image = swin_fixture["input"].float()
    backbone = tiny_swin(config, tuple(image.shape[-2:]))
    backbone.model.load_state_dict({k: v.float() for k, v in swin_fixture["state_dict"].items()})
    with torch.no_grad():
        ours = backbone(image)
        diff = max_diff(ours, swin_fixture["outputs"])
        assert diff <= TOL, diff
        # timm's own roll-then-pad attention is not the released computation at these sizes.
        assert max_diff(timm_attn(backbone)(image), swin_fixture["outputs"]) > 100 * TOL


def test_swin_fix_changes_nothing_where_stages_are_multiples_of_the_window(swin_fixture):
    config = swin_fixture["config"]
    backbone = tiny_swin(config, (224, 224))  # stages 56, 28, 14, 7
    backbone.model.load_state_dict({k: v.float() for k, v in swin_fixture["state_dict"].items()})
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fixed = backbone(image)
        assert max_diff(fixed, timm_attn(backbone)(image)) <= 1e-6


def swin_blocks(backbone: nn.Module) -> list[nn.Module]:
    return [m for m in backbone.modules() if type(m).__name__ == "SwinTransformerBlock"]


def has_the_fix(block: nn.Module) -> bool:
    attn = vars(block).get("_attn")
    return attn is not None and attn.func.__name__ == "_swin_attn_pad_then_shift" and attn.args[0] is block


def test_registered_swin_blocks_all_get_the_fix_and_keep_it_through_copies(swin_fixture):
    blocks = swin_blocks(build_backbone("swin_tiny", img_size=(64, 96)))
    assert len(blocks) == 12 and all(has_the_fix(b) for b in blocks)
    backbone = tiny_swin(swin_fixture["config"], (64, 96))
    for copied in (copy.deepcopy(backbone), pickle.loads(pickle.dumps(backbone))):
        assert all(has_the_fix(b) for b in swin_blocks(copied))
    # Only mtbench's instances change: timm's class and a plain timm Swin keep timm's attention.
    plain = create_backbone("swin_tiny_patch4_window7_224", pretrained=False, img_size=(64, 96), **SWIN_TIMM_KWARGS)
    assert not any("_attn" in vars(m) for m in plain.modules())


# ------------------------------------------------------------------------------------------ HRNet
def fuse_upsamples(backbone: nn.Module) -> list[nn.Upsample]:
    return [m for m in backbone.modules() if isinstance(m, nn.Upsample)]


def test_hrnet_fuse_layers_are_bilinear_as_released():
    backbone = build_backbone("hrnet_w18_small")
    ups = fuse_upsamples(backbone)
    assert len(ups) == 22  # W18-small-v2: stage 2 (1), 3 x stage 3 (3), 2 x stage 4 (6)
    assert all(up.mode == "bilinear" and up.align_corners is False for up in ups)
    multi = [m for m in backbone.modules() if type(m).__name__ == "HighResolutionModule" and m.num_branches > 1]
    assert len(multi) == 6 and all("forward" in vars(m) for m in multi)


@pytest.fixture(scope="module")
def hrnet_fixture() -> dict:
    return torch.load(FIXTURES / "hrnet_w18_small_outputs.pt", weights_only=True)


@pytest.mark.parametrize("size", ["64x64", "72x88"])
def test_hrnet_matches_the_released_segmentation_hrnet(hrnet_fixture, size):
    backbone = build_backbone("hrnet_w18_small").eval()
    backbone.model.load_state_dict(formula_state(backbone.model))
    case = hrnet_fixture[size]
    with torch.no_grad():
        diff = max_diff(backbone(case["input"]), case["outputs"])
        assert diff <= TOL, diff
        if size == "64x64":  # timm's nearest x2**k fuse is not the released computation
            for up in fuse_upsamples(backbone):
                up.mode, up.align_corners = "nearest", None
            assert max_diff(backbone(case["input"]), case["outputs"]) > 100 * TOL
