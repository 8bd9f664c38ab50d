"""InvPT-style model: shapes, deep supervision, ViT sizes, user errors, the attention, published parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtbench.engine.trainer import auxiliary_losses
from mtbench.errors import MtbenchError
from mtbench.losses import build_task_loss
from mtbench.models import build_backbone, build_model
from mtbench.models.invpt import TaskAttention
from mtbench.profiling import count_params
from mtbench.tasks import DATASET_TASKS, get_task

SMALL = dict(backbone="vit_test", preliminary_width=32, decoder_width=48)


def small_invpt(dataset: str, size: tuple[int, int] = (64, 96), **options):
    torch.manual_seed(0)
    return build_model("invpt", tasks=DATASET_TASKS[dataset], dataset=dataset, img_size=size, **{**SMALL, **options})


def labels(dataset: str, batch: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Random labels in the Sample conventions for every task of `dataset`."""
    g = torch.Generator().manual_seed(1)
    out: dict[str, torch.Tensor] = {}
    for task in DATASET_TASKS[dataset]:
        if task in ("semseg", "human_parts"):
            out[task] = torch.randint(0, get_task(task).num_outputs(dataset), (batch, *size), generator=g)
        elif task == "sal":
            out[task] = torch.randint(0, 2, (batch, *size), generator=g)
        elif task == "depth":
            out[task] = torch.rand(batch, 1, *size, generator=g) + 0.5
        elif task == "normals":
            out[task] = F.normalize(torch.randn(batch, 3, *size, generator=g), dim=1)
        else:
            out[task] = (torch.rand(batch, 1, *size, generator=g) > 0.9).float()
    return out


@pytest.mark.parametrize("dataset", ["synthetic_nyud", "synthetic_pascal"])
def test_outputs_at_input_resolution_for_every_task(dataset):
    model = small_invpt(dataset).eval()
    out = model(torch.randn(2, 3, 64, 96))
    assert list(out) == list(DATASET_TASKS[dataset]) and len(out) == (4 if "nyud" in dataset else 5)
    for task, pred in out.items():
        assert pred.shape == (2, get_task(task).num_outputs(dataset), 64, 96)
        assert torch.isfinite(pred).all()
    assert model.auxiliary == {}


def test_preliminary_predictions_are_supervised_through_the_trainer():
    dataset = "synthetic_nyud"
    model = small_invpt(dataset).train()
    batch = labels(dataset, 2, (64, 96))
    model(torch.randn(2, 3, 64, 96))
    prelim = model.auxiliary["preliminary"]
    assert {t: tuple(p.shape) for t, p in prelim.items()} == {
        t: (2, get_task(t).num_outputs(dataset), 2, 3) for t in DATASET_TASKS[dataset]}
    losses = {t: build_task_loss(t, dataset=dataset) for t in DATASET_TASKS[dataset]}
    aux = sum(auxiliary_losses(model, losses, batch).values())
    aux.backward()
    for task in DATASET_TASKS[dataset]:
        assert model.preliminary_head[task].weight.grad.abs().sum() > 0
        assert model.heads[task].weight.grad is None  # only the preliminary path is in this loss


def test_position_embeddings_resized_for_other_input_sizes():
    model = small_invpt("synthetic_nyud", size=(64, 96)).eval()
    assert model.backbone.model.pos_embed.shape == (1, 1 + 4 * 6, 64)
    for size in [(64, 96), (96, 64), (128, 128)]:
        out = model(torch.randn(1, 3, *size))
        assert out["depth"].shape[-2:] == size
    maps = build_backbone("vit_test", img_size=(64, 96))(torch.randn(1, 3, 32, 160))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 2, 10)] * 4


def test_vit_taps_quarter_depth_blocks_and_norms_the_last():
    assert build_backbone("vit_base_patch16").taps == [2, 5, 8, 11]
    backbone = build_backbone("vit_test").eval()
    x = torch.randn(1, 3, 32, 32)
    tokens = backbone.model.norm(backbone.model.forward_features(x))[:, 1:]
    assert torch.allclose(backbone(x)[-1].flatten(2).transpose(1, 2), tokens, atol=1e-5)


def test_user_errors_are_clear():
    nyud = DATASET_TASKS["synthetic_nyud"]
    with pytest.raises(MtbenchError, match="not divisible by the ViT patch size 16"):
        build_backbone("vit_test")(torch.randn(1, 3, 40, 64))
    with pytest.raises(MtbenchError, match="not divisible by the ViT patch size 16"):
        build_backbone("vit_test", img_size=(40, 64))
    with pytest.raises(MtbenchError, match="multiples of 32"):
        build_model("invpt", tasks=nyud, dataset="synthetic_nyud", img_size=(48, 64), **SMALL)
    with pytest.raises(MtbenchError, match="multiples of 32"):
        small_invpt("synthetic_nyud")(torch.randn(1, 3, 48, 64))
    with pytest.raises(MtbenchError, match="'tiny' is not a ViT.*vit_large_patch16"):
        build_model("invpt", tasks=nyud, dataset="synthetic_nyud", backbone="tiny")
    with pytest.raises(MtbenchError, match="task 'depth' is not defined on dataset 'synthetic_pascal'"):
        build_model("invpt", tasks=("semseg", "depth"), dataset="synthetic_pascal", **SMALL)
    with pytest.raises(MtbenchError, match="multiple of num_heads"):
        build_model("invpt", tasks=nyud, dataset="synthetic_nyud", **{**SMALL, "num_heads": 5})
    with pytest.raises(MtbenchError, match="Did you mean 'decoder_width'"):
        build_model("invpt", tasks=nyud, dataset="synthetic_nyud", backbone="vit_test", decoder_widht=48)


def released_attention(attn: TaskAttention, x: list[torch.Tensor], prev: torch.Tensor | None,
                       fuse_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The released SelfAttention written out: explicit scores * width^-0.5, fused 1x1 with the previous
    stage's scores (query axis upsampled 2x per task, with a bias), softmax, values, output projection."""
    b, heads, width, tasks = x[0].shape[0], attn.num_heads, attn.width, attn.tasks
    q = torch.cat([r(t).flatten(2) for r, t in zip(attn.q_reduce, x, strict=True)], 2).transpose(1, 2)
    kv = torch.cat([F.avg_pool2d(t, attn.kv_pool, ceil_mode=True).flatten(2) for t in x], 2).transpose(1, 2)

    def heads_of(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, -1, heads, width // heads).transpose(1, 2)

    q, k, v = heads_of(attn.proj_q(q)), heads_of(attn.proj_k(kv)), heads_of(attn.proj_v(kv))
    scores = q @ k.transpose(-1, -2) * width ** -0.5
    if prev is not None:
        hq, wq = x[0].shape[-2] // 2, x[0].shape[-1] // 2
        blocks = prev.chunk(tasks, dim=2)
        ups = [F.interpolate(p.reshape(b * heads, hq // 2, wq // 2, -1).permute(0, 3, 1, 2), scale_factor=2,
                             mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(b, heads, hq * wq, -1)
               for p in blocks]
        stacked = torch.cat([scores, torch.cat(ups, dim=2)], dim=1)
        scores = torch.einsum("gc,bclk->bglk", attn.fuse, stacked) + fuse_bias[None, :, None, None]
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, width)
    return attn.proj(out), scores


def test_attention_equals_the_released_formula_across_stages():
    torch.manual_seed(0)
    tasks, heads, grid = 3, 2, (4, 6)
    widths = [24, 12, 8]
    stages = [TaskAttention(tasks, w, heads, kv_pool=2 ** (i + 1), fuse_message=i > 0, send_message=i < 2).eval()
              for i, w in enumerate(widths)]
    assert [s.scale for s in stages] == [w ** -0.5 for w in widths]  # per-task width, not head width
    message, prev = None, None
    for i, attn in enumerate(stages):
        size = (grid[0] * 2 ** i, grid[1] * 2 ** i)
        x = [torch.randn(2, widths[i], *size) for _ in range(tasks)]
        ours, q_size, message = attn(x, message)
        ref, prev = released_attention(attn, x, prev, fuse_bias=torch.randn(heads))
        assert q_size == (size[0] // 2, size[1] // 2)
        assert torch.allclose(ours, ref, atol=1e-5), f"stage {i}"


def test_no_attention_message_option_has_no_fuse_weights():
    with_msg, without = small_invpt("synthetic_nyud"), small_invpt("synthetic_nyud", attention_message=False)
    assert count_params(with_msg) - count_params(without) == 2 * (2 * 2 * 2)  # stages 2, 3: heads x 2*heads
    assert without.eval()(torch.randn(1, 3, 64, 96))["semseg"].shape == (1, 6, 64, 96)


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "size", "params"), [("nyud", (448, 576), 395_453_322),
                                                         ("pascal_context", (512, 512), 415_955_938)])
def test_vit_large_parameter_count_matches_the_release_minus_unused(dataset, size, params):
    # Released InvPT (prismformore/Multi-Task-Transformer@870c6be), random init: NYUD 402,092,888 built, of which
    # 395,453,322 take part in the output (the rest: scale_embed[2] 5,308,992, stage-1 redu_chan 1,329,408,
    # norm_mt 1,152, stage-1 fuse_attn 10, fuse_attn biases 4). PASCAL 422,929,810 / 415,957,604; ours has
    # 1,666 fewer there because saliency is 1 channel here, 2 in the release.
    with torch.device("meta"):
        model = build_model("invpt", tasks=DATASET_TASKS[dataset], dataset=dataset, backbone="vit_large_patch16",
                            img_size=size)
    assert count_params(model) == params
    assert count_params(model.backbone) == (304_133_120 if dataset == "nyud" else 304_149_504)
