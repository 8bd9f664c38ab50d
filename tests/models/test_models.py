"""Every registered model: forward and backward on a tiny batch, one output per task at input size."""

from __future__ import annotations

import pytest
import torch
from conftest import model_test_setting

from mtbench.errors import MtbenchError
from mtbench.models import build_backbone, build_model
from mtbench.profiling import count_params, measure_cost
from mtbench.registry import MODELS
from mtbench.tasks import DATASET_TASKS, get_task


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("dataset", ["synthetic_nyud", "synthetic_pascal"])
def test_model_forward_backward(name, dataset):
    torch.manual_seed(0)
    tasks = DATASET_TASKS[dataset]
    backbone, (h, w) = model_test_setting(name)
    model = build_model(name, tasks=tasks, dataset=dataset, backbone=backbone, img_size=(h, w))
    image = torch.randn(2, 3, h, w)
    out = model(image)
    assert set(out) == set(tasks)
    for task, pred in out.items():
        assert pred.shape == (2, get_task(task).num_outputs(dataset), h, w)
        assert torch.isfinite(pred).all()
    # Deep-supervision heads (model.auxiliary, used by the trainer's loss) get their gradient from there.
    auxiliary = [p for group in (getattr(model, "auxiliary", None) or {}).values() for p in group.values()]
    sum(p.mean() for p in [*out.values(), *auxiliary]).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert count_params(model) > 0


def test_single_task_has_one_backbone_per_task():
    tasks = ("semseg", "depth")
    single = build_model("single_task", tasks=tasks, dataset="synthetic_nyud", backbone="tiny")
    shared = build_model("shared_encoder", tasks=tasks, dataset="synthetic_nyud", backbone="tiny")
    backbone = count_params(build_backbone("tiny"))
    assert count_params(single) - count_params(shared) == backbone


@pytest.mark.parametrize(("name", "channels"), [("resnet18", [64, 128, 256, 512]),
                                                ("hrnet_w18_small", [18, 36, 72, 144])])
def test_backbone_channels_and_strides(name, channels):
    backbone = build_backbone(name)
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert backbone.channels == channels and backbone.reductions == [4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == channels
    assert [64 // f.shape[-1] for f in feats] == [4, 8, 16, 32]


def test_hrnet_w18_small_has_the_published_parameter_count():
    # PROTOCOLS.md: HRNet18-S of ATRC/DeMT/MTI-Net = timm hrnet_w18_small_v2 branch features, 3.861M.
    assert round(count_params(build_backbone("hrnet_w18_small")) / 1e6, 3) == 3.861


def test_swin_features_come_back_nchw():
    backbone = build_backbone("swin_tiny", img_size=(64, 96))
    feats = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(96, 16, 24), (192, 8, 12), (384, 4, 6), (768, 2, 3)]


def test_local_checkpoint_loads_and_missing_path_is_clear(tmp_path):
    import timm

    source = timm.create_model("test_resnet")
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("tiny", pretrained=str(path))
    loaded, expected = backbone.model.state_dict(), source.state_dict()
    assert loaded and all(torch.equal(value, expected[key]) for key, value in loaded.items())
    with pytest.raises(MtbenchError, match="does not exist"):
        build_backbone("tiny", pretrained=str(tmp_path / "missing.pth"))


def test_unknown_option_has_did_you_mean():
    with pytest.raises(MtbenchError, match="Did you mean 'head_channels'"):
        build_model("shared_encoder", tasks=("semseg",), dataset="synthetic_nyud", backbone="tiny", head_chanel=3)


def test_gflops_are_counted_with_input_size():
    model = build_model("shared_encoder", tasks=("depth",), dataset="synthetic_nyud", backbone="tiny")
    cost = measure_cost(model, (32, 32))
    assert cost.gflops > 0 and cost.input_size == (32, 32)
    assert cost.as_params()["cost/input_size"] == "32x32"


def test_pretrained_true_offline_fails_fast_and_says_what_to_do(monkeypatch):
    from mtbench.models import backbones

    monkeypatch.setattr(backbones, "HUB_HOST", "weights-host.invalid")
    with pytest.raises(MtbenchError, match=r"cannot be reached.*model.pretrained: <path"):
        build_backbone("resnet18", pretrained=True)


def test_backbone_names_may_pin_timm_weights_by_tag():
    from mtbench.errors import MtbenchError
    from mtbench.models import build_backbone

    # The released MTI-Net loads Microsoft's HRNet weights; timm's default tag for this model is gluon's.
    assert build_backbone("hrnet_w18_small.ms_in1k").model.pretrained_cfg["tag"] == "ms_in1k"
    assert build_backbone("hrnet_w18_small").model.pretrained_cfg["tag"] == "gluon_in1k"
    with pytest.raises(MtbenchError, match=r"no hrnet_w18_small_v2 weights tagged 'ms_in22k'.*gluon_in1k, ms_in1k"):
        build_backbone("hrnet_w18_small.ms_in22k")


@pytest.mark.parametrize("name", ["shared_encoder", "single_task", "demt", "invpt"])
def test_two_logit_heads_give_saliency_a_softmax_head_that_losses_and_meters_read(name):
    from mtbench.losses import build_task_loss
    from mtbench.metrics import build_meter

    backbone, (h, w) = model_test_setting(name)
    tasks = DATASET_TASKS["synthetic_pascal"]
    model = build_model(name, tasks=tasks, dataset="synthetic_pascal", backbone=backbone, two_logit_heads=True)
    preds = model(torch.randn(2, 3, h, w))
    assert preds["sal"].shape[1] == 2 and preds["edge"].shape[1] == 1 and preds["semseg"].shape[1] == 6
    target = torch.randint(0, 2, (2, h, w))
    assert torch.isfinite(build_task_loss("sal", dataset="synthetic_pascal")(preds["sal"], target))
    meter = build_meter("sal", dataset="synthetic_pascal")
    meter.update(preds["sal"].detach(), target)
    assert 0.0 <= meter.compute()["sal/maxF"] <= 100.0  # percent
