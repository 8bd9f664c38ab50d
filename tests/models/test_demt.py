"""DeMT: released parameter counts, attention semantics, ablation switches, bad input, Swin checkpoints."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtbench.errors import MtbenchError
from mtbench.models import build_backbone, build_model, demt
from mtbench.profiling import count_params, measure_cost, params_by_component
from mtbench.tasks import DATASET_TASKS

NYUD = DATASET_TASKS["nyud"]
SYN = DATASET_TASKS["synthetic_nyud"]


def tiny_demt(**options: object) -> demt.DeMT:
    torch.manual_seed(0)
    return build_model("demt", tasks=SYN, dataset="synthetic_nyud", backbone="tiny",
                       **{"mixer_width": 32, **options})


def meta_demt(dataset: str, img_size: tuple[int, int] = (448, 576), **options: object) -> demt.DeMT:
    with torch.device("meta"):
        return build_model("demt", tasks=DATASET_TASKS[dataset], dataset=dataset, backbone="swin_tiny",
                           img_size=img_size, **options)


# ------------------------------------------------------------------------------- parameter counts
def test_swin_tiny_nyud_has_the_released_parameter_count():
    # Released code (yangyangxu0/DeMT) and README: 32.07M = 27.52M Swin-T (with norm0..3) + 4.55M head.
    model = meta_demt("nyud")
    parts = params_by_component(model)
    assert count_params(model) == 32_070_259
    assert parts["backbone"] == 27_520_698
    assert count_params(model) - parts["backbone"] == 4_549_561
    assert round(count_params(model) / 1e6, 2) == 32.07


def test_swin_tiny_pascal_has_the_released_parameter_count():
    # Released: 33,028,902 with a 2-channel softmax saliency head (two_logit_heads); one channel is 181 fewer.
    assert count_params(meta_demt("pascal_context", two_logit_heads=True)) == 33_028_902
    model = meta_demt("pascal_context")
    assert count_params(model) == 33_028_902 - 181
    assert round(count_params(model) / 1e6, 2) == 33.03


def test_attention_modes_have_the_same_parameters():
    assert count_params(meta_demt("nyud", attention="tokens")) == count_params(meta_demt("nyud"))


def test_swin_parameter_count_depends_on_size_only_through_shrunk_windows():
    # timm shrinks a stage's 7x7 window to its map when the map is smaller, which shrinks the
    # relative-position tables; at DeMT's sizes every stage keeps 7x7 windows.
    counts = {size: count_params(meta_demt("nyud", size)) for size in [(448, 576), (480, 640), (425, 560)]}
    assert set(counts.values()) == {32_070_259}
    assert count_params(meta_demt("nyud", (64, 80))) < 32_070_259


# ----------------------------------------------------------------------------- attention semantics
def mha_pytorch17(attn: demt.TaskAttention, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention(batch_first=False) on (B, N, C) tensors, as PyTorch <= 1.7 reshaped them.

    Written after torch 1.7's multi_head_attention_forward: the first axis is taken as the
    sequence, and key/value are viewed with the *query's* batch size, so the key's N axis folds
    into the sequence axis. Later PyTorch raises on these shapes (DeMT issue #4).
    """
    tgt_len, bsz, c = query.shape
    heads = attn.num_heads
    hd = c // heads
    w, b = attn.in_proj.weight, attn.in_proj.bias
    q = F.linear(query, w[:c], b[:c]) * hd ** -0.5
    k, v = F.linear(key, w[c:], b[c:]).chunk(2, dim=-1)
    q = q.contiguous().view(tgt_len, bsz * heads, hd).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
    weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(tgt_len, bsz, c)
    return attn.out_proj(out)


def released_decoder(model: demt.DeMT, outs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The released DemtHead.forward from the mixer outputs on, for (B, hw, C) task features."""
    fusion = nn.MultiheadAttention(outs[0].shape[-1], model.num_heads)  # batch_first=False, as released
    fusion.in_proj_weight.data.copy_(model.interaction.attn.in_proj.weight)
    fusion.in_proj_bias.data.copy_(model.interaction.attn.in_proj.bias)
    fusion.out_proj.load_state_dict(model.interaction.attn.out_proj.state_dict())
    task_cat = torch.cat(outs, dim=1)
    task_cat = model.interaction.mlp(fusion(task_cat, task_cat, task_cat)[0])
    return [outs[i] + model.queries[t].mlp(mha_pytorch17(model.queries[t].attn, outs[i], task_cat))
            for i, t in enumerate(model.tasks)]


def run_decoder(model: demt.DeMT, outs: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    tokens = torch.stack(outs, dim=2)
    fused = model.interact(tokens, size)
    return [outs[i] + model.query(t, outs[i], fused, size) for i, t in enumerate(model.tasks)]


def test_released_mode_computes_what_the_released_code_computed_with_one_image():
    model = tiny_demt().eval()
    outs = [torch.randn(1, 6 * 7, 32) for _ in model.tasks]
    with torch.no_grad():
        ours, reference = run_decoder(model, outs, (6, 7)), released_decoder(model, outs)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_released_code_mixed_images_of_a_batch_but_released_mode_does_not():
    model = tiny_demt().eval()
    outs = [torch.randn(2, 6 * 7, 32) for _ in model.tasks]
    with torch.no_grad():
        ours = run_decoder(model, outs, (6, 7))
        single = run_decoder(model, [o[1:] for o in outs], (6, 7))
        literal = released_decoder(model, outs)
    torch.testing.assert_close(ours[0][1:], single[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(literal[0][1:], single[0], atol=1e-3)


@pytest.mark.parametrize("attention", ["released", "tokens"])
def test_output_of_an_image_does_not_depend_on_its_batch(attention):
    model = tiny_demt(attention=attention, kv_reduction=2).eval()
    image = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        batch, alone = model(image), model(image[2:])
    for task in model.tasks:
        torch.testing.assert_close(batch[task][2:], alone[task], rtol=1e-4, atol=1e-5)


def test_tokens_mode_attends_over_space():
    released, tokens = tiny_demt(), tiny_demt(attention="tokens", kv_reduction=2)
    tokens.load_state_dict(released.state_dict())
    image = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        a, b = released.eval()(image), tokens.eval()(image)
    assert all(a[t].shape == b[t].shape == (2, b[t].shape[1], 32, 48) for t in SYN)
    assert not torch.allclose(a["semseg"], b["semseg"])
    # In the decoder, a pixel sees only its own task features in released mode, every pixel in tokens mode.
    outs = [torch.randn(1, 6 * 8, 32) for _ in SYN]
    moved = [o.clone() for o in outs]
    moved[1][:, 0] += 1
    with torch.no_grad():
        for model, reach in ((released, False), (tokens, True)):
            before, after = run_decoder(model, outs, (6, 8))[0], run_decoder(model, moved, (6, 8))[0]
            assert not torch.allclose(before[:, 0], after[:, 0])
            assert torch.allclose(before[:, 1:], after[:, 1:]) is not reach


def test_pool_tokens_averages_each_task_map():
    tokens = torch.arange(2 * 4 * 6 * 3 * 5, dtype=torch.float32).view(2, 4 * 6, 3, 5)
    pooled = demt.pool_tokens(tokens, (4, 6), 2)
    assert pooled.shape == (2, 3 * 2 * 3, 5)
    by_task = tokens.view(2, 4, 6, 3, 5)
    assert torch.allclose(pooled[0, 0], by_task[0, :2, :2, 0].mean(dim=(0, 1)))
    # Task-major: task 2, pooled cell (row 1, col 2) of the 2x3 grid.
    assert torch.allclose(pooled[1, 2 * 6 + 1 * 3 + 2], by_task[1, 2:4, 4:6, 2].mean(dim=(0, 1)))


# ---------------------------------------------------------------------------------- ablation switches
def mixer_params(model: demt.DeMT) -> int:
    return sum(p.numel() for p in model.mixers.parameters())


def test_channel_mixing_switch_removes_the_pointwise_block():
    on, off = tiny_demt(), tiny_demt(channel_mixing=False)
    c = 32
    assert mixer_params(on) - mixer_params(off) == len(SYN) * (c * c + c + 2 * c)
    assert all(block.channel is None for mixer in off.mixers.values() for block in mixer)


def test_deformable_switch_replaces_the_deformable_operator_by_a_plain_conv():
    on, off = tiny_demt(), tiny_demt(deformable=False)
    offsets = sum(p.numel() for p in on.mixers["semseg"][0].spatial[0].offsets.parameters())
    assert mixer_params(on) - mixer_params(off) == len(SYN) * offsets
    ops_on, ops_off = measure_cost(on, (32, 48)).gflops_by_op, measure_cost(off, (32, 48)).gflops_by_op
    assert "deform_conv2d" in ops_on and "deform_conv2d" not in ops_off
    layer = off.mixers["semseg"][0].spatial[0]
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias))


def test_cpu_sampling_path_equals_deform_conv2d_in_values_and_gradients():
    from torchvision.ops import deform_conv2d

    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64, requires_grad=True)
    # Fractional offsets up to 3 px, so some points fall partly or wholly outside the map.
    offset = ((torch.rand(2, 16, 7, 9, dtype=torch.float64) - 0.5) * 6).requires_grad_()
    weight = torch.randn(5, 8, 1, 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64)
    grad_out = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    reference = deform_conv2d(x, offset, weight, bias)
    ours = F.conv2d(demt.sample_per_channel(x, offset), weight, bias)
    torch.testing.assert_close(ours, reference)
    for a, b in zip(torch.autograd.grad(ours, (x, offset, weight), grad_out),
                    torch.autograd.grad(reference, (x, offset, weight), grad_out), strict=True):
        torch.testing.assert_close(a, b)


def test_per_pixel_attention_equals_sdpa_over_each_pixels_task_keys():
    torch.manual_seed(0)
    b, n, t, h, d = 2, 6, 4, 2, 8
    q, k, v = torch.randn(b, n, 1, h, d), torch.randn(b, n, t, h, d), torch.randn(b, n, t, h, d)
    expected = F.scaled_dot_product_attention(*(x.reshape(b * n, -1, h, d).transpose(1, 2) for x in (q, k, v)))
    torch.testing.assert_close(demt.attend_per_pixel(q, k, v), expected.transpose(1, 2).reshape(b, n, h, d))


def released_per_pixel(attn: demt.TaskAttention, query: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """The released form: every feature projected to a key and a value, softmax over a pixel's T keys."""
    b, n, c = query.shape
    t, h = fused.shape[2], attn.num_heads
    q = attn._proj(query, 0).view(b, n, 1, h, c // h)
    k = attn._proj(fused, 1).view(b, n, t, h, c // h)
    v = attn._proj(fused, 2).view(b, n, t, h, c // h)
    return attn.out_proj(demt.attend_per_pixel(q, k, v).reshape(b, n, c))


def test_per_pixel_attention_without_key_and_value_projections_equals_the_released_form():
    torch.manual_seed(0)
    attn = demt.TaskAttention(64, num_heads=4)
    with torch.no_grad():  # nonzero biases: the key bias must drop out, the value bias pass through
        attn.in_proj.bias.normal_()
        attn.out_proj.bias.normal_()
    query = torch.randn(2, 300, 64, requires_grad=True)
    fused = torch.randn(2, 300, 4, 64, requires_grad=True)
    ours, released = attn.per_pixel(query, fused), released_per_pixel(attn, query, fused)
    torch.testing.assert_close(ours, released, rtol=1e-5, atol=1e-5)  # fp32 outputs
    # Gradients in float64: the identity is exact, so they agree to rounding (fp32 sums of 600 pixels differ ~1e-5).
    attn.double()
    query, fused = (x.detach().double().requires_grad_() for x in (query, fused))
    ours, released = attn.per_pixel(query, fused), released_per_pixel(attn, query, fused)
    grad_out = torch.randn_like(ours)
    inputs = (query, fused, attn.in_proj.weight, attn.out_proj.weight)
    got = torch.autograd.grad(ours, inputs, grad_out, retain_graph=True)
    expected = torch.autograd.grad(released, inputs, grad_out)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    # The key bias cannot change the output (it shifts all T scores of a pixel alike): its gradient is zero.
    key_bias = torch.autograd.grad(ours, attn.in_proj.bias, grad_out)[0][64:128]
    assert torch.count_nonzero(key_bias) == 0


def test_mixer_depth_stacks_blocks():
    one, three = tiny_demt(), tiny_demt(mixer_depth=3)
    assert len(three.mixers["depth"]) == 3
    assert mixer_params(three) == 3 * mixer_params(one)


def test_split_offsets_follow_the_released_pattern():
    horizontal = demt.split_offsets(4, (1, 3)).view(4, 2)
    assert horizontal[:, 0].tolist() == [0, 0, 0, 0]
    assert horizontal[:, 1].tolist() == [0, 1, -1, 0]
    vertical = demt.split_offsets(6, (5, 1)).view(6, 2)
    assert vertical[:, 0].tolist() == [0, 1, 2, -2, -1, 0] and vertical[:, 1].tolist() == [0] * 6


def test_split_kernel_without_deformable_shifts_each_channel():
    model = tiny_demt(deformable=False, split_kernel=[1, 3])
    layer = model.mixers["semseg"][0].spatial[0]
    x = torch.randn(1, 32, 5, 6)
    shifted = torch.zeros_like(x)
    for c in range(32):
        dx = [0, 1, -1][c % 3]
        # Channel c samples x at column j + dx (zero outside the map).
        for j in range(6):
            if 0 <= j + dx < 6:
                shifted[:, c, :, j] = x[:, c, :, j + dx]
    torch.testing.assert_close(layer(x), F.conv2d(shifted, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_task_blocks_switch_off():
    full = tiny_demt()
    no_interaction = tiny_demt(task_interaction=False)
    no_decoder = tiny_demt(task_interaction=False, task_query=False)
    assert no_interaction.interaction is None and no_interaction.queries is not None
    assert no_decoder.queries is None
    assert count_params(full) - count_params(no_interaction) == count_params(full.interaction)
    for model in (no_interaction, no_decoder):
        out = model(torch.randn(2, 3, 32, 48))
        assert out["normals"].shape == (2, 3, 32, 48)


def test_mixer_width_sets_the_decoder_width():
    model = tiny_demt(mixer_width=64, num_heads=8)
    assert model.project[0].out_features == 64 and model.queries["edge"].attn.num_heads == 8
    assert model.bottlenecks["semseg"][0].in_channels == 64


@pytest.mark.parametrize(("options", "message"), [
    ({"attention": "paper"}, "use one of released, tokens"),
    ({"task_query": False}, "set task_interaction=false as well"),
    ({"split_kernel": [3, 3]}, r"split_kernel=\[3, 3\]"),
    ({"split_kernel": [1, 4]}, "k odd"),
    ({"mixer_width": 30}, "multiple of the number of heads"),
    ({"mixer_depth": 0}, "mixer_depth=0"),
    ({"kv_reduction": 0}, "kv_reduction=0"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(MtbenchError, match=message):
        tiny_demt(**options)


def test_misspelt_option_has_did_you_mean():
    with pytest.raises(MtbenchError, match="Did you mean 'mixer_depth'"):
        build_model("demt", tasks=SYN, dataset="synthetic_nyud", backbone="tiny", mixer_dept=2)


# ---------------------------------------------------------------------------------------- bad input
def test_input_not_divisible_by_the_stride_runs_padded_bottom_right_as_the_released_swin():
    """425x560 runs as 428x560 (zeros at the bottom), the 1/4 logits resized straight to 425x560."""
    torch.manual_seed(0)
    model = tiny_demt().eval()
    image = torch.randn(1, 3, 425, 560)
    captured = {}
    hooks = [model.logits[t].register_forward_hook(lambda m, i, o, t=t: captured.__setitem__(t, o)) for t in SYN]
    with torch.no_grad():
        model(torch.nn.functional.pad(image, (0, 0, 0, 3)))
        for hook in hooks:
            hook.remove()
        out = model(image)
    for t in SYN:
        assert captured[t].shape[-2:] == (107, 140)
        expected = torch.nn.functional.interpolate(captured[t], size=(425, 560), mode="bilinear", align_corners=False)
        assert out[t].shape[-2:] == (425, 560)
        torch.testing.assert_close(out[t], expected)


def test_a_task_without_a_head_on_the_dataset_is_refused():
    with pytest.raises(MtbenchError, match="task 'sal' is not defined on dataset 'synthetic_nyud'"):
        build_model("demt", tasks=("semseg", "sal"), dataset="synthetic_nyud", backbone="tiny")
    with pytest.raises(MtbenchError, match="unknown task 'segm'"):
        build_model("demt", tasks=("segm",), dataset="synthetic_nyud", backbone="tiny")
    with pytest.raises(MtbenchError, match="at least one task"):
        build_model("demt", tasks=(), dataset="synthetic_nyud", backbone="tiny")


def test_tokens_attention_that_would_not_fit_is_refused_with_its_size(monkeypatch):
    model = tiny_demt(attention="tokens", kv_reduction=1)
    # 4 tasks, 12x16 tokens, 4 heads, batch 2: 2 * 4 * (2 * 4 * 192) * (4 * 192) * 4 B * 2 = 75.5 MiB.
    assert model.attention_bytes(2, (12, 16)) == 2 * 4 * (2 * 4 * 192) * (4 * 192) * 4 * 2
    monkeypatch.setattr(demt, "device_memory_bytes", lambda device: 64 * 2**20)
    with pytest.raises(MtbenchError, match=r"need about 0.07 GiB, more than the 0.06 GiB of cpu.*Raise kv_reduction"):
        model(torch.zeros(2, 3, 48, 64))
    model(torch.zeros(1, 3, 48, 64))  # half the batch fits


# ------------------------------------------------------------------------------ Swin checkpoints
def swin_to_mmseg(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write a timm features-only Swin state dict the way mmseg's UperNet checkpoints store it."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^layers_(\d+)\.", r"layers.\1.", key)
        down = re.match(r"^layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)$", key)
        if down:
            c = value.shape[-1] // 4
            # Swin order (2*dx + dy)*C + c  ->  Unfold order c*4 + 2*dy + dx.
            value = value.unflatten(-1, (4, c))[..., [0, 2, 1, 3], :].transpose(-1, -2).flatten(-2)
            out[f"backbone.stages.{int(down.group(1)) - 1}.downsample.{down.group(2)}.{down.group(3)}"] = value
            continue
        key = key.replace("patch_embed.proj.", "patch_embed.projection.")
        key = re.sub(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.", r"stages.\1.blocks.\2.attn.w_msa.", key)
        key = re.sub(r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.blocks.\2.ffn.layers.0.0.", key)
        key = re.sub(r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.blocks.\2.ffn.layers.1.", key)
        key = re.sub(r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks.", key)
        out[f"backbone.{key}"] = value
    return out


@pytest.fixture(scope="module")
def swin_source():
    torch.manual_seed(1)
    backbone = build_backbone("swin_tiny", img_size=(224, 224))
    return {k: v for k, v in backbone.model.state_dict().items() if not k.endswith("relative_position_index")}


def test_unfold_reorder_makes_mmseg_patch_merging_equal_to_timm():
    c = 3
    x = torch.randn(1, 4, 6, c)  # (B, H, W, C)
    weight = torch.randn(5, 4 * c)
    # mmseg: nn.Unfold(2, stride=2) on NCHW, features ordered c*4 + 2*dy + dx.
    unfolded = nn.Unfold(2, stride=2)(x.permute(0, 3, 1, 2)).transpose(1, 2)
    mmseg = unfolded @ weight.t()
    # Swin/timm: [x(0,0), x(1,0), x(0,1), x(1,1)] concatenated on channels.
    swin = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    timm_out = swin.flatten(1, 2) @ demt.unfold_to_swin_order(weight).t()
    torch.testing.assert_close(timm_out, mmseg)


def test_mmseg_upernet_checkpoint_loads_into_demt(tmp_path, swin_source):
    state = swin_to_mmseg(swin_source)
    norms = {f"backbone.norm{i}.{p}": torch.randn(c)
             for i, c in enumerate([96, 192, 384, 768]) for p in ("weight", "bias")}
    extra = {"decode_head.conv_seg.weight": torch.zeros(150, 512, 1, 1),
             "auxiliary_head.conv_seg.bias": torch.zeros(150),
             "backbone.stages.0.blocks.0.attn.w_msa.relative_position_index": torch.zeros(49, 49, dtype=torch.long)}
    path = tmp_path / "upernet_swin_tiny.pth"
    torch.save({"meta": {"mmseg_version": "0.x"}, "state_dict": {**state, **norms, **extra}}, path)
    model = build_model("demt", tasks=NYUD, dataset="nyud", backbone="swin_tiny", img_size=(224, 224),
                        pretrained=str(path))
    loaded = model.backbone.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in swin_source.items())
    assert torch.equal(model.backbone_norms[2].weight, norms["backbone.norm2.weight"])
    report = model.pretrained_report
    assert report["layout"] == "mmseg" and report["initialised"] == []
    assert "decode_head.conv_seg.weight" in report["ignored"]


def test_original_swin_checkpoint_loads_and_reports_what_stays_initialised(tmp_path, swin_source):
    state = {}
    for key, value in swin_source.items():
        key = re.sub(r"^layers_(\d+)\.", r"layers.\1.", key)
        # Original Swin keeps patch merging at the end of the previous stage.
        key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
        state[key] = value
    state.update({"norm.weight": torch.ones(768) * 2, "norm.bias": torch.zeros(768),
                  "head.weight": torch.zeros(1000, 768), "head.bias": torch.zeros(1000)})
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": state}, path)
    backbone = build_backbone("swin_tiny", img_size=(224, 224))
    norms = nn.ModuleList(nn.LayerNorm(c) for c in backbone.channels)
    report = demt.load_swin_checkpoint(backbone, path, stage_norms=norms)
    assert all(torch.equal(backbone.model.state_dict()[k], v) for k, v in swin_source.items())
    assert torch.equal(norms[3].weight, torch.full((768,), 2.0))
    assert report["layout"] == "swin" and "head.weight" in report["ignored"]
    assert report["initialised"] == [f"backbone_norms.{i}.{p}" for i in range(3) for p in ("bias", "weight")]


def test_checkpoint_mismatch_lists_missing_and_unexpected_keys(swin_source):
    state = swin_to_mmseg(swin_source)
    del state["backbone.stages.1.blocks.0.norm1.weight"]
    state["backbone.stages.1.blocks.9.norm1.weight"] = torch.zeros(192)
    state["backbone.patch_embed.norm.bias"] = torch.zeros(95)
    backbone = build_backbone("swin_tiny", img_size=(224, 224))
    with pytest.raises(MtbenchError) as err:
        demt.load_swin_checkpoint(backbone, state)
    text = str(err.value)
    assert "missing: layers_1.blocks.0.norm1.weight" in text
    assert "unexpected: layers_1.blocks.9.norm1.weight" in text
    assert "shape mismatch: patch_embed.norm.bias: file (95,) vs model (96,)" in text


def test_checkpoint_that_is_not_swin_is_refused(tmp_path):
    backbone = build_backbone("swin_tiny", img_size=(224, 224))
    with pytest.raises(MtbenchError, match="neither mmseg Swin keys"):
        demt.load_swin_checkpoint(backbone, {"conv1.weight": torch.zeros(1)})
    with pytest.raises(MtbenchError, match="does not exist"):
        demt.load_swin_checkpoint(backbone, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(MtbenchError, match="cannot read"):
        demt.load_swin_checkpoint(backbone, tmp_path / "junk.pth")


# ------------------------------------------------------------------------------- ablation_mixer.yaml
def test_ablation_mixer_is_at_paper_scale():
    from conftest import EXPERIMENTS

    from mtbench.config.loading import load_raw
    from mtbench.config.schema import Experiment

    exp = Experiment.model_validate(load_raw(EXPERIMENTS / "ablation_mixer.yaml"))
    assert (exp.dataset.name, exp.model.name, exp.model.backbone, exp.seeds) == ("nyud", "demt", "swin_tiny", [0, 1, 2])
    switches = {key.rsplit(".", 1)[-1] for v in exp.variants for key in v.overrides if key.startswith("model.options.")}
    assert switches >= {"channel_mixing", "deformable", "split_kernel", "mixer_depth", "mixer_width",
                        "task_interaction", "task_query", "attention"}


def test_every_ablation_mixer_variant_builds_and_runs_under_smoke():
    from conftest import EXPERIMENTS

    from mtbench.config import expand_trials, load_experiment

    trials = expand_trials(load_experiment(EXPERIMENTS / "ablation_mixer.yaml", smoke=True))
    assert len(trials) == 14
    image = torch.randn(2, 3, 48, 64)
    for trial in trials:
        model = build_model(trial.model.name, tasks=SYN, dataset=trial.dataset.name, backbone=trial.model.backbone,
                            img_size=(48, 64), **trial.model.options)
        assert model(image)["semseg"].shape == (2, 6, 48, 64), trial.variant


def test_backbone_drop_path_rate_is_timm_stochastic_depth_rising_to_the_rate():
    """The released Swin-T of DeMT trains with drop-path 0.1, linear over its 12 blocks."""
    model = build_model("demt", tasks=SYN, dataset="synthetic_nyud", backbone="swin_tiny", img_size=(64, 64),
                        backbone_drop_path_rate=0.1)
    rates = [m.drop_prob for m in model.backbone.modules() if type(m).__name__ == "DropPath"]
    assert max(rates) == pytest.approx(0.1) and min(rates) == pytest.approx(0.1 / 11)
    with pytest.raises(MtbenchError, match="has no stochastic depth"):
        build_model("demt", tasks=SYN, dataset="synthetic_nyud", backbone="hrnet_w18_small",
                    backbone_drop_path_rate=0.1)
    with pytest.raises(MtbenchError, match=r"drop_path_rate must be a number in \[0, 1\)"):
        build_model("demt", tasks=SYN, dataset="synthetic_nyud", backbone="tiny", backbone_drop_path_rate=1.5)
