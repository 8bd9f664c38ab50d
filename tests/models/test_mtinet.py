"""MTI-Net and PAD-Net as released: shapes, deep supervision through the trainer, errors, pinned sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtbench.engine.trainer import auxiliary_losses
from mtbench.errors import MtbenchError
from mtbench.losses import build_task_loss
from mtbench.models import build_backbone, build_model, mtinet, padnet
from mtbench.models.backbones import Backbone
from mtbench.profiling import count_params
from mtbench.tasks import DATASET_TASKS, get_task

MODELS = ("mtinet", "padnet")
# Sides divisible by 32 for HRNet; the tiny ResNet also takes the synthetic 64x80 (ceil-sized 1/32 map).
SIZES = {"tiny": (64, 80), "hrnet_w18_small": (64, 96)}


def fake_batch(dataset: str, tasks: tuple[str, ...], size: tuple[int, int], batch: int = 2) -> dict[str, torch.Tensor]:
    """Labels in the Sample conventions (DESIGN.md) for `tasks`, random but valid."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    out: dict[str, torch.Tensor] = {"image": torch.randn(batch, 3, h, w, generator=g)}
    for task in tasks:
        n = get_task(task).num_outputs(dataset)
        if task in ("semseg", "human_parts"):
            out[task] = torch.randint(0, n, (batch, h, w), generator=g)
        elif task == "sal":
            out[task] = torch.randint(0, 2, (batch, h, w), generator=g)
        elif task == "depth":
            out[task] = torch.rand(batch, 1, h, w, generator=g) * 5 + 0.5
        elif task == "normals":
            out[task] = nn.functional.normalize(torch.randn(batch, 3, h, w, generator=g), dim=1)
        else:
            out[task] = torch.randint(0, 2, (batch, 1, h, w), generator=g).float()
    return out


def initial_heads(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the 1x1 convs that make the initial (deep-supervised) predictions."""
    if model.__class__.__name__ == "MTINet":
        return [p for scale in model.initial for p in scale.predict.parameters()]
    return list(model.initial_out.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dataset", ["synthetic_nyud", "synthetic_pascal"])
@pytest.mark.parametrize("backbone", ["tiny", "hrnet_w18_small"])
def test_outputs_and_deep_supervision(name, dataset, backbone):
    torch.manual_seed(0)
    tasks = DATASET_TASKS[dataset]
    model = build_model(name, tasks=tasks, dataset=dataset, backbone=backbone, img_size=SIZES[backbone])
    h, w = SIZES[backbone]
    out = model(torch.randn(2, 3, h, w))
    assert set(out) == set(tasks)
    for task, pred in out.items():
        assert pred.shape == (2, get_task(task).num_outputs(dataset), h, w)
        assert torch.isfinite(pred).all()
    expected = [f"scale_{s}" for s in range(4)] if name == "mtinet" else ["initial"]
    assert list(model.auxiliary) == expected
    for key, preds in model.auxiliary.items():
        assert list(preds) == list(tasks)
        stride = 4 * 2 ** int(key[-1]) if name == "mtinet" else 4
        for task, pred in preds.items():
            assert pred.shape[:2] == (2, get_task(task).num_outputs(dataset))
            assert pred.shape[-2:] == (-(-h // stride), -(-w // stride))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, h, w))
    assert model.auxiliary == {}


@pytest.mark.parametrize("name", MODELS)
def test_trainer_supervises_the_initial_predictions(name):
    torch.manual_seed(0)
    dataset, tasks = "synthetic_nyud", DATASET_TASKS["synthetic_nyud"]
    model = build_model(name, tasks=tasks, dataset=dataset, backbone="tiny")
    batch = fake_batch(dataset, tasks, (64, 80))
    losses = {t: build_task_loss(t, dataset=dataset) for t in tasks}
    weights = {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
    preds = model(batch["image"])
    final = sum(weights[t] * losses[t](preds[t], batch[t]) for t in tasks)
    final.backward(retain_graph=True)
    # The initial predictions are not on the path to the final ones: only deep supervision trains them.
    assert all(p.grad is None for p in initial_heads(model))
    aux = sum(weights[t] * v for t, v in auxiliary_losses(model, losses, batch).items())
    assert torch.isfinite(aux)
    # By hand: every auxiliary map, upsampled to the label size, with the task's weight (MTINetLoss/PADNetLoss).
    by_hand = sum(weights[t] * losses[t](nn.functional.interpolate(p, size=(64, 80), mode="bilinear"), batch[t])
                  for preds_ in model.auxiliary.values() for t, p in preds_.items())
    assert aux.item() == pytest.approx(by_hand.item(), rel=1e-5)
    aux.backward()
    grads = [p.grad for p in initial_heads(model)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_fpm_attention_modes_share_parameters_and_differ():
    tasks = ("semseg", "depth")
    kwargs = dict(tasks=tasks, dataset="synthetic_nyud", backbone="tiny")
    torch.manual_seed(0)
    released = build_model("mtinet", **kwargs).eval()
    torch.manual_seed(0)
    by_tasks = build_model("mtinet", fpm_attention="tasks", **kwargs).eval()
    assert count_params(released) == count_params(by_tasks)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(released(image)["depth"], by_tasks(image)["depth"])


@pytest.mark.parametrize("name", MODELS)
def test_auxiliary_only_tasks_get_initial_heads_only(name):
    model = build_model(name, tasks=("semseg", "depth"), dataset="synthetic_nyud", backbone="tiny",
                        auxiliary_tasks=("semseg", "depth", "normals", "edge"))
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"semseg", "depth"}
    assert all(set(p) == {"semseg", "depth", "normals", "edge"} for p in model.auxiliary.values())


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", MODELS)
def test_backbone_without_four_scales_is_refused(name, monkeypatch):
    def three_scales(*args, **kwargs):
        full = build_backbone("tiny")
        return Backbone(full.model, keep=full.keep[1:], channels_last_output=False)

    module = mtinet if name == "mtinet" else padnet
    monkeypatch.setattr(module, "build_backbone", three_scales)
    with pytest.raises(MtbenchError, match=r"four maps at strides 4, 8, 16, 32.*gives strides \[8, 16, 32\]"):
        build_model(name, tasks=("semseg",), dataset="synthetic_nyud", backbone="tiny")


@pytest.mark.parametrize("name", MODELS)
def test_task_without_a_head_is_refused(name):
    with pytest.raises(MtbenchError, match=r"no head for task 'depth' on dataset 'pascal_context'.*semseg"):
        build_model(name, tasks=("semseg", "depth"), dataset="pascal_context", backbone="tiny")
    with pytest.raises(MtbenchError, match="leaves out depth"):
        build_model(name, tasks=("semseg", "depth"), dataset="nyud", backbone="tiny", auxiliary_tasks=("semseg",))
    with pytest.raises(MtbenchError, match="no head for task 'sal' on dataset 'nyud'"):
        build_model(name, tasks=("semseg",), dataset="nyud", backbone="tiny", auxiliary_tasks=("semseg", "sal"))


@pytest.mark.parametrize("name", MODELS)
def test_input_not_divisible_by_the_stride_is_refused(name):
    with pytest.raises(MtbenchError, match=r"input 62x80 is not divisible by 4.*64x80"):
        build_model(name, tasks=("depth",), dataset="synthetic_nyud", backbone="tiny", img_size=(62, 80))
    model = build_model(name, tasks=("depth",), dataset="synthetic_nyud", backbone="tiny")
    with pytest.raises(MtbenchError, match="not divisible by 4"):
        model(torch.randn(1, 3, 64, 78))
    # HRNet fuses its branches at the exact sizes, as the released segmentation HRNet: sides need not be x32.
    hrnet = build_model(name, tasks=("depth",), dataset="synthetic_nyud", backbone="hrnet_w18_small").eval()
    assert hrnet(torch.randn(1, 3, 64, 80))["depth"].shape == (1, 1, 64, 80)


def test_unknown_option_value_is_refused():
    with pytest.raises(MtbenchError, match="fpm_attention='channels'"):
        build_model("mtinet", tasks=("depth",), dataset="nyud", backbone="tiny", fpm_attention="channels")


# ------------------------------------------------------------------------------ reference sizes
# The released code (SimonVandenhende/Multi-Task-Learning-PyTorch @ ed3d9ac, random init, CPU) builds
# exactly these counts with its HRNet-18 (= HRNetV2-W18-small-v2, 3,860,720 parameters).
PINNED = [
    ("mtinet", "nyud", ("semseg", "depth"), None, 8_578_179),
    ("mtinet", "nyud", ("semseg", "depth"), ("semseg", "depth", "edge", "normals"), 14_838_121),
    ("mtinet", "nyud", ("semseg", "depth", "normals", "edge"), None, 17_960_945),
    ("mtinet", "pascal_context", DATASET_TASKS["pascal_context"], None, 24_494_171),
    ("padnet", "nyud", ("semseg", "depth"), None, 7_019_056),
    ("padnet", "nyud", ("semseg", "depth"), ("semseg", "depth", "edge", "normals"), 12_161_332),
    ("padnet", "nyud", ("semseg", "depth", "normals", "edge"), None, 19_521_848),
    ("padnet", "pascal_context", DATASET_TASKS["pascal_context"], None, 29_304_992),
]


@pytest.mark.parametrize(("name", "dataset", "tasks", "aux", "params"), PINNED)
def test_parameter_count_matches_the_released_code(name, dataset, tasks, aux, params):
    model = build_model(name, tasks=tasks, dataset=dataset, backbone="hrnet_w18_small", auxiliary_tasks=aux)
    assert count_params(model) == params


def test_backbone_bn_momentum_sets_the_backbone_batchnorms_only():
    """The survey code's HRNet uses BatchNorm momentum 0.01 (models/seg_hrnet.py::BN_MOMENTUM), its heads 0.1."""
    model = build_model("mtinet", tasks=("semseg", "depth"), dataset="synthetic_nyud", backbone="hrnet_w18_small",
                        backbone_bn_momentum=0.01)
    backbone = {m.momentum for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    heads = {m.momentum for n, m in model.named_modules()
             if isinstance(m, torch.nn.BatchNorm2d) and not n.startswith("backbone.")}
    assert backbone == {0.01} and heads == {0.1}
