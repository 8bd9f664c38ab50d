"""Model cost: parameter counts per component and fvcore GFLOPs (the only module that imports fvcore).

Counting convention (the one behind the GFLOPs that DeMT, InvPT and MTI-Net print): fvcore counts one
fused multiply-add as one flop, at batch 1, for the stated input size. fvcore has no handle for some
ops these models run; mtbench adds:

- `torchvision::deform_conv2d`: counted like a convolution with the same kernel on the output grid,
  B*Cout*Ho*Wo*(Cin/groups)*kh*kw, reported as `deform_conv2d`; the bilinear sampling is counted
  separately as `deform_conv2d_sampling`, 4 multiply-adds per sampled value, B*Cin*kh*kw*Ho*Wo*4
  (plus 1 per sample for the modulation mask when one is used). Counts that treat the deformable
  conv as a plain conv (as fvcore runs on released DeMT did) equal the total minus the sampling part.
- `aten::scaled_dot_product_attention` (fused attention, e.g. in timm's ViT and in DeMT): the two
  matrix products, batch*heads*Lq*Lk*(E + Ev) = 2*B*H*Lq*Lk*D multiply-adds; the softmax and
  scaling are elementwise and not counted. A causal mask is not discounted.
- `aten::avg_pool2d`: one flop per input element, like fvcore's `adaptive_avg_pool2d`.

Elementwise ops (activations, additions, softmax, max-pooling, ...) and layout ops (padding,
reshapes) are not counted, as in fvcore's defaults; they are listed in `NOT_COUNTED_OPS`. Anything
else fvcore skips is an uncounted op and is reported beside the number (`ModelCost.uncounted_ops`).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore scripts helpers with torch.jit at import, which PyTorch >= 2.9 marks deprecated.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

CONVENTION = "fvcore, 1 multiply-add = 1 flop, batch 1"

# Ops that fvcore skips and that, by the convention above, carry no counted flops: elementwise
# arithmetic, activations, softmax, reductions and max-pooling, and pure layout/indexing ops.
ELEMENTWISE_OPS = frozenset({
    "aten::abs", "aten::add", "aten::add_", "aten::clamp_min", "aten::cos", "aten::cumsum", "aten::div",
    "aten::div_", "aten::exp", "aten::gelu", "aten::gelu_", "aten::hardsigmoid", "aten::hardswish",
    "aten::hardswish_", "aten::leaky_relu", "aten::leaky_relu_", "aten::linalg_vector_norm", "aten::log",
    "aten::log_softmax", "aten::max_pool2d", "aten::mean", "aten::mul", "aten::mul_", "aten::ne", "aten::neg",
    "aten::norm", "aten::pow", "aten::reciprocal", "aten::rsqrt", "aten::rsub", "aten::sigmoid",
    "aten::sigmoid_", "aten::sign", "aten::silu", "aten::silu_", "aten::sin", "aten::softmax", "aten::sqrt",
    "aten::sub", "aten::sum", "aten::tanh", "aten::where",
})
LAYOUT_OPS = frozenset({
    "aten::clone", "aten::expand_as", "aten::fill_", "aten::flip", "aten::im2col", "aten::index_select",
    "aten::lift_fresh", "aten::masked_fill_", "aten::meshgrid", "aten::new_ones", "aten::pad",
    "aten::repeat", "aten::unflatten", "aten::view_as",
})
NOT_COUNTED_OPS = ELEMENTWISE_OPS | LAYOUT_OPS


def deform_conv2d_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """Count `torchvision::deform_conv2d`: conv part and bilinear-sampling part (module docstring)."""
    x, w, out = get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0])
    batch, cin = x[0], x[1]
    cout, cin_per_group, kh, kw = w
    spatial = prod(out[2:])
    use_mask = bool(inputs[13].toIValue()) if len(inputs) > 13 else False
    samples = batch * cin * kh * kw * spatial
    return Counter({"deform_conv2d": batch * cout * spatial * cin_per_group * kh * kw,
                    "deform_conv2d_sampling": samples * (5 if use_mask else 4)})


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Count `aten::scaled_dot_product_attention`: Q @ K^T and P @ V, batch*heads*Lq*Lk*(E + Ev)."""
    q, k, v = (get_shape(v) for v in inputs[:3])
    batch_heads = prod(q[:-2])
    return batch_heads * q[-2] * k[-2] * (q[-1] + v[-1])


def avg_pool_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Count `aten::avg_pool2d` as one flop per input element."""
    return prod(get_shape(inputs[0]))


EXTRA_HANDLES = {
    "torchvision::deform_conv2d": deform_conv2d_flop_jit,
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::avg_pool2d": avg_pool_flop_jit,
}


@dataclass
class ModelCost:
    """Params (total and per component) and fvcore GFLOPs of a model at one input size, batch 1."""

    params_m: float
    gflops: float
    input_size: tuple[int, int]
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    params_backbone_m: float = 0.0
    params_shared_m: float = 0.0
    params_task_m: dict[str, float] = field(default_factory=dict)
    gflops_by_op: dict[str, float] = field(default_factory=dict)

    @property
    def uncounted_ops(self) -> list[str]:
        """Ops that fvcore skipped and that are not elementwise: their flops are missing from `gflops`."""
        return sorted(op for op in self.unsupported_ops if op not in NOT_COUNTED_OPS)

    def as_params(self) -> dict[str, object]:
        """Flat entries for run tracking."""
        return {"cost/params_M": round(self.params_m, 4), "cost/gflops_fvcore": round(self.gflops, 4),
                "cost/input_size": f"{self.input_size[0]}x{self.input_size[1]}",
                "cost/convention": CONVENTION,
                "cost/params_backbone_M": round(self.params_backbone_m, 4),
                "cost/params_shared_M": round(self.params_shared_m, 4),
                "cost/params_tasks_M": ",".join(f"{t}:{v:.4f}" for t, v in self.params_task_m.items()),
                "cost/uncounted_ops": ",".join(self.uncounted_ops),
                "cost/unsupported_ops": ",".join(f"{k}:{v}" for k, v in sorted(self.unsupported_ops.items()))}


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of `model`."""
    return sum(p.numel() for p in model.parameters())


def component_of(name: str, tasks: tuple[str, ...]) -> str:
    """Component of parameter `name`: 'backbone', a task name, or 'shared'.

    A path part named `backbone` or starting with `backbone_` (e.g. DeMT's per-stage norms) is the
    backbone; otherwise a path part equal to a task name (a ModuleDict keyed by task) is that task's.
    """
    parts = name.split(".")
    if any(p == "backbone" or p.startswith("backbone_") for p in parts):
        return "backbone"
    for part in parts:
        if part in tasks:
            return part
    return "shared"


def params_by_component(model: nn.Module, tasks: tuple[str, ...] | None = None) -> dict[str, int]:
    """Parameter counts keyed 'backbone', 'shared' and each task (the keys sum to the total)."""
    tasks = tuple(tasks if tasks is not None else getattr(model, "tasks", ()))
    counts = {"backbone": 0, "shared": 0, **{t: 0 for t in tasks}}
    for name, p in model.named_parameters():
        counts[component_of(name, tasks)] += p.numel()
    return counts


def flop_analysis(model: nn.Module, image: torch.Tensor) -> FlopCountAnalysis:
    """fvcore's analysis of `model(image)` with mtbench's extra handles and its warnings silenced."""
    analysis = FlopCountAnalysis(model, image).set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    return analysis


def measure_cost(model: nn.Module, input_size: tuple[int, int], *,
                 tasks: tuple[str, ...] | None = None) -> ModelCost:
    """Count params (per component) and fvcore GFLOPs for one (1, 3, H, W) input on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        image = torch.zeros(1, 3, *input_size, device=device)
        analysis = flop_analysis(model, image)
        with torch.no_grad(), warnings.catch_warnings():
            # fvcore traces with torch.jit, which PyTorch >= 2.9 marks deprecated.
            warnings.simplefilter("ignore")
            total = analysis.total()
            by_op = analysis.by_operator()
        unsupported = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    parts = params_by_component(model, tasks)
    task_names = [k for k in parts if k not in ("backbone", "shared")]
    return ModelCost(params_m=count_params(model) / 1e6, gflops=total / 1e9, input_size=tuple(input_size),
                     unsupported_ops=unsupported, params_backbone_m=parts["backbone"] / 1e6,
                     params_shared_m=parts["shared"] / 1e6,
                     params_task_m={t: parts[t] / 1e6 for t in task_names},
                     gflops_by_op={op: n / 1e9 for op, n in sorted(by_op.items())})


def flops_report(model_name: str, *, backbone: str, dataset: str, input_size: tuple[int, int],
                 options: dict[str, object] | None = None) -> dict[str, object]:
    """Build `model_name` for all tasks of `dataset` (random init) and report its params and GFLOPs.

    The dict is JSON-ready: model, backbone, dataset, tasks, input_size "HxW", batch, convention,
    params (total / backbone / shared / per task, exact counts), params_M, gflops, gflops_by_op,
    uncounted_ops (skipped ops with compute, so missing from gflops), not_counted_ops (elementwise
    and layout ops, by convention) and
    handles (what mtbench counts that fvcore does not, with its rule).
    """
    from mtbench.models import build_model
    from mtbench.tasks import resolve_tasks

    options = dict(options or {})
    tasks = resolve_tasks(dataset, None)
    size = (int(input_size[0]), int(input_size[1]))
    model = build_model(model_name, tasks=tasks, dataset=dataset, backbone=backbone, pretrained=False,
                        img_size=size, **options)
    cost = measure_cost(model, size, tasks=tasks)
    parts = params_by_component(model, tasks)
    return {
        "model": model_name, "backbone": backbone, "dataset": dataset, "tasks": list(tasks),
        "options": options, "input_size": f"{size[0]}x{size[1]}", "batch": 1, "convention": CONVENTION,
        "params": {"total": count_params(model), **parts},
        "params_M": round(cost.params_m, 3),
        "gflops": round(cost.gflops, 3),
        "gflops_by_op": {op: round(v, 4) for op, v in cost.gflops_by_op.items()},
        "uncounted_ops": {op: cost.unsupported_ops[op] for op in cost.uncounted_ops},
        "not_counted_ops": {op: n for op, n in sorted(cost.unsupported_ops.items()) if op in NOT_COUNTED_OPS},
        "handles": {
            "torchvision::deform_conv2d": "conv-like B*Cout*Ho*Wo*Cin/g*kh*kw as deform_conv2d; "
                                          "bilinear sampling 4 per sample as deform_conv2d_sampling",
            "aten::scaled_dot_product_attention": "2*B*H*Lq*Lk*D (QK^T and PV), softmax not counted",
            "aten::avg_pool2d": "1 per input element"},
    }
