"""FLOP handles against hand-computed counts, per-component params, and nothing left uncounted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from mtbench.models import build_model
from mtbench.profiling import (
    CONVENTION,
    count_params,
    flop_analysis,
    flops_report,
    measure_cost,
    params_by_component,
)
from mtbench.registry import MODELS
from mtbench.tasks import DATASET_TASKS


def count(module: nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    with torch.no_grad():
        return dict(flop_analysis(module, inputs).by_operator())


class Deform(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, groups: int = 1, mask: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin // groups, k, k))
        self.k, self.mask = k, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        offset = torch.zeros(b, 2 * self.k * self.k, h, w)
        mask = torch.ones(b, self.k * self.k, h, w) if self.mask else None
        return deform_conv2d(x, offset, self.weight, padding=self.k // 2, mask=mask)


def test_deform_conv2d_counts_like_a_conv_plus_bilinear_sampling():
    # B=1, Cin=4, Cout=8, 3x3, output 5x6: conv part 8*30*4*9, sampling 4 per sample, 4*9*30 samples.
    ops = count(Deform(4, 8, 3), torch.randn(1, 4, 5, 6))
    assert ops == {"deform_conv2d": 8 * 30 * 4 * 9, "deform_conv2d_sampling": 4 * (4 * 9 * 30)}
    # Weight groups divide the conv part; a modulation mask adds 1 per sample; batch multiplies both.
    ops = count(Deform(4, 8, 3, groups=2, mask=True), torch.randn(2, 4, 5, 6))
    assert ops == {"deform_conv2d": 2 * 8 * 30 * 2 * 9, "deform_conv2d_sampling": 5 * (2 * 4 * 9 * 30)}


def test_deform_conv2d_conv_part_equals_fvcore_on_the_same_plain_conv():
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    plain = count(conv, torch.randn(1, 4, 5, 6))["conv"]
    assert count(Deform(4, 8, 3), torch.randn(1, 4, 5, 6))["deform_conv2d"] == plain


class Attention(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_counts_two_matrix_products():
    # 2*B*H*Lq*Lk*D with B=2, H=3, Lq=5, Lk=7, D=8.
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8)
    assert count(Attention(), q, k, k) == {"scaled_dot_product_attention": 2 * 2 * 3 * 5 * 7 * 8}
    v = torch.randn(2, 3, 7, 4)  # value width differs: Lq*Lk*(E + Ev)
    assert count(Attention(), q, k, v) == {"scaled_dot_product_attention": 2 * 3 * 5 * 7 * (8 + 4)}


def test_sdpa_count_equals_fvcore_on_the_explicit_matmuls():
    class Explicit(nn.Module):
        def forward(self, q, k, v):
            return torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v

    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8)
    assert count(Explicit(), q, k, k)["matmul"] == count(Attention(), q, k, k)["scaled_dot_product_attention"]


def test_avg_pool2d_counts_one_per_input_element():
    class Pool(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x, 2)

    assert count(Pool(), torch.randn(1, 3, 4, 6)) == {"avg_pool2d": 3 * 4 * 6}


@pytest.mark.parametrize("name", MODELS.names())
def test_registered_models_leave_no_op_uncounted(name):
    from conftest import model_test_setting

    tasks = DATASET_TASKS["synthetic_nyud"]
    backbone, size = model_test_setting(name)
    model = build_model(name, tasks=tasks, dataset="synthetic_nyud", backbone=backbone, img_size=size)
    cost = measure_cost(model, size)
    assert cost.gflops > 0
    assert cost.uncounted_ops == [], f"{name}: ops without a flop handle: {cost.uncounted_ops}"
    assert cost.params_backbone_m + cost.params_shared_m + sum(cost.params_task_m.values()) == pytest.approx(
        cost.params_m)


def test_swin_backbone_leaves_no_op_uncounted():
    model = build_model("demt", tasks=("semseg", "depth"), dataset="nyud", backbone="swin_tiny",
                        img_size=(224, 224), mixer_width=32)
    cost = measure_cost(model, (224, 224))
    assert cost.uncounted_ops == []
    assert {"deform_conv2d", "scaled_dot_product_attention", "matmul"} <= set(cost.gflops_by_op)


def test_params_by_component():
    tasks = ("semseg", "depth")
    single = build_model("single_task", tasks=tasks, dataset="synthetic_nyud", backbone="tiny")
    parts = params_by_component(single)
    assert sum(parts.values()) == count_params(single)
    assert parts["backbone"] == sum(count_params(n.backbone) for n in single.networks.values())
    shared = build_model("shared_encoder", tasks=tasks, dataset="synthetic_nyud", backbone="tiny")
    parts = params_by_component(shared)
    assert parts["shared"] == 0 and parts["semseg"] == count_params(shared.heads["semseg"])
    demt = build_model("demt", tasks=tasks, dataset="synthetic_nyud", backbone="tiny", mixer_width=32)
    parts = params_by_component(demt)
    assert parts["shared"] == count_params(demt.project) + count_params(demt.interaction)
    assert parts["depth"] == sum(count_params(m["depth"]) for m in
                                 (demt.mixers, demt.queries, demt.bottlenecks, demt.logits))


def test_cost_params_for_tracking():
    model = build_model("demt", tasks=("semseg", "depth"), dataset="synthetic_nyud", backbone="tiny",
                        mixer_width=32)
    flat = measure_cost(model, (32, 48)).as_params()
    assert flat["cost/input_size"] == "32x48" and flat["cost/convention"] == CONVENTION
    assert flat["cost/uncounted_ops"] == ""
    assert flat["cost/params_tasks_M"].startswith("semseg:") and "depth:" in flat["cost/params_tasks_M"]


def test_flops_report_is_json_ready_and_complete():
    import json

    report = flops_report("demt", backbone="tiny", dataset="synthetic_nyud", input_size=(32, 48),
                          options={"mixer_width": 32})
    json.dumps(report)
    assert report["input_size"] == "32x48" and report["batch"] == 1 and report["convention"] == CONVENTION
    assert report["tasks"] == list(DATASET_TASKS["synthetic_nyud"])
    params = report["params"]
    assert params["total"] == params["backbone"] + params["shared"] + sum(params[t] for t in report["tasks"])
    assert report["gflops"] == pytest.approx(sum(report["gflops_by_op"].values()), abs=1e-3)
    assert report["uncounted_ops"] == {}
    assert "torchvision::deform_conv2d" in report["handles"]
