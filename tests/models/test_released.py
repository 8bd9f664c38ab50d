"""Released checkpoints (DeMT, InvPT, MTI-Net, PAD-Net) converted into mtbench's models, on meta tensors.

The fixtures tests/fixtures/released/<model>_<dataset>.json are the released state dicts' {key: shape}, built from
the authors' code (docs/released_checkpoints.md); the models are built at the recipe sizes on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtbench.errors import MtbenchError
from mtbench.models import build_model, load_weights
from mtbench.models.released import convert_released, detect_release, fold_sal_preliminary, softmax2_to_sigmoid

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "released"
NYUD = ("semseg", "depth", "normals", "edge")
PASCAL = ("semseg", "human_parts", "sal", "normals", "edge")
DATASETS = {"nyud": "nyud", "pascal": "pascal_context"}
RECIPES = {  # (backbone, img_size, tasks) of the released configurations
    ("demt", "nyud"): ("swin_tiny", (428, 560), NYUD),
    ("demt", "pascal"): ("swin_tiny", (512, 512), PASCAL),
    ("invpt", "nyud"): ("vit_large_patch16", (448, 576), NYUD),
    ("invpt", "pascal"): ("vit_large_patch16", (512, 512), PASCAL),
    ("mtinet", "nyud"): ("hrnet_w18_small", None, ("semseg", "depth")),
    ("mtinet", "pascal"): ("hrnet_w18_small", None, PASCAL),
    ("padnet", "nyud"): ("hrnet_w18_small", None, ("semseg", "depth")),
    ("padnet", "pascal"): ("hrnet_w18_small", None, PASCAL),
}


def released_state(model: str, dataset: str, device: str = "meta") -> dict[str, torch.Tensor]:
    """The released state dict of the fixture: empty tensors of its shapes."""
    shapes = json.loads((FIXTURES / f"{model}_{dataset}.json").read_text())
    return {key: torch.empty(shape, device=device) for key, shape in shapes.items()}


def recipe_model(model: str, dataset: str, device: str = "meta", **options) -> torch.nn.Module:
    """The mtbench model of the released configuration, built on `device`."""
    backbone, size, tasks = RECIPES[(model, dataset)]
    with torch.device(device):
        return build_model(model, tasks=tasks, dataset=DATASETS[dataset], backbone=backbone,
                           img_size=options.pop("img_size", size), **options)


@pytest.mark.parametrize(("model", "dataset"), list(RECIPES))
def test_every_released_key_is_mapped_or_dropped_and_loads_strictly(model, dataset):
    state = released_state(model, dataset)
    net = recipe_model(model, dataset)
    assert detect_release(state) == model
    converted, keys = convert_released(state, net)
    net.load_state_dict(converted, strict=True, assign=True)
    assert [k.source for k in keys] == list(state)
    assert {k.target for k in keys if k.target is not None} == set(converted) == set(net.state_dict())
    assert all(k.reason for k in keys if k.target is None)
    dropped = {k.source for k in keys if k.target is None}
    assert bool(dropped) == (model in ("demt", "invpt"))  # the survey models drop nothing


def test_invpt_drops_only_unused_modules_with_reasons():
    _, keys = convert_released(released_state("invpt", "nyud"), recipe_model("invpt", "nyud"))
    reasons = {k.source: k.reason for k in keys if k.target is None}
    assert "multi_task_decoder.scale_embed.2.weight" in reasons and "discarded" in reasons[
        "multi_task_decoder.scale_embed.2.weight"]
    assert "softmax-invariant" in reasons["multi_task_decoder.invpt.invpt_stages.1.blocks.0.attn.fuse_attn.bias"]
    assert {k.split(".")[1] for k in reasons} == {"scale_embed", "invpt"}  # all in the decoder


@pytest.mark.parametrize("model", ["demt", "invpt"])
def test_saliency_is_folded_to_one_logit_or_kept_with_two_logit_heads(model):
    state = released_state(model, "pascal")
    folded, keys = convert_released(state, recipe_model(model, "pascal"))
    head = "logits.sal.weight" if model == "demt" else "heads.sal.weight"
    assert folded[head].shape[0] == 1
    assert {k.transform for k in keys if k.target and ".sal." in k.target + "."} >= {"softmax2_to_sigmoid"}
    net = recipe_model(model, "pascal", two_logit_heads=True)
    kept, keys = convert_released(state, net)
    net.load_state_dict(kept, strict=True, assign=True)
    assert kept[head].shape[0] == 2
    assert not [k for k in keys if k.transform in ("softmax2_to_sigmoid", "fold_sal_preliminary")]


def test_softmax2_to_sigmoid_is_exact():
    torch.manual_seed(0)
    w, x = torch.randn(2, 8, 1, 1), torch.randn(1, 8, 5, 5)
    state = {"w": w}
    z = F.conv2d(x, w)
    assert torch.allclose(torch.sigmoid(F.conv2d(x, softmax2_to_sigmoid("w", state))), z.softmax(1)[:, 1:], atol=1e-6)


def test_fold_sal_preliminary_is_exact():
    """mix([f, p0, p1]) == mix'([f, p1 - p0]) with p = intermediate_head(f) (InvPT's mix_proj.sal)."""
    torch.manual_seed(0)
    mix, pre = "multi_task_decoder.invpt.mix_proj.sal.0.", "multi_task_decoder.intermediate_head.sal."
    state = {mix + "weight": torch.randn(6, 4 + 2, 1, 1), mix + "bias": torch.randn(6),
             pre + "weight": torch.randn(2, 4, 1, 1), pre + "bias": torch.randn(2)}
    f = torch.randn(1, 4, 3, 3)
    p = F.conv2d(f, state[pre + "weight"], state[pre + "bias"])
    released = F.conv2d(torch.cat([f, p], 1), state[mix + "weight"], state[mix + "bias"])
    ours = F.conv2d(torch.cat([f, p[:, 1:] - p[:, :1]], 1), fold_sal_preliminary(mix + "weight", state),
                    fold_sal_preliminary(mix + "bias", state))
    assert torch.allclose(ours, released, atol=1e-5)


def test_a_demt_checkpoint_into_an_invpt_model_is_refused():
    with pytest.raises(MtbenchError, match=r"released DeMT checkpoint \(keys backbone\.stages\., head\.defor_mixers"
                                           r"\.\.\.\.\), but the experiment builds InvPT"):
        convert_released(released_state("demt", "nyud"), recipe_model("invpt", "nyud"))


def test_a_nyud_checkpoint_into_a_pascal_model_is_refused():
    with pytest.raises(MtbenchError, match=r"tasks semseg, depth, normals, edge \(keys head\.final_logits\.<task>"
                                           r"\.\*\), the model semseg, human_parts, sal, normals, edge"):
        convert_released(released_state("demt", "nyud"), recipe_model("demt", "pascal"))


def test_another_semseg_class_count_is_refused_naming_the_keys():
    state = released_state("demt", "nyud")
    state["head.final_logits.semseg.weight"] = torch.empty(41, 180, 1, 1, device="meta")
    state["head.final_logits.semseg.bias"] = torch.empty(41, device="meta")
    with pytest.raises(MtbenchError, match=r"head\.final_logits\.semseg\.weight -> logits\.semseg\.weight: "
                                           r"checkpoint \(41, 180, 1, 1\), model \(40, 180, 1, 1\)"):
        convert_released(state, recipe_model("demt", "nyud"))


def test_another_invpt_size_is_refused_naming_the_position_embedding():
    with pytest.raises(MtbenchError, match=r"backbone\.pos_embed -> backbone\.model\.pos_embed: checkpoint "
                                           r"\(1, 1009, 1024\), model \(1, 1025, 1024\)"):
        convert_released(released_state("invpt", "nyud"), recipe_model("invpt", "nyud", img_size=(512, 512)))


def test_mtinet_auxiliary_tasks_must_follow_the_survey_order():
    net = recipe_model("mtinet", "nyud", auxiliary_tasks=("depth", "semseg"))
    with pytest.raises(MtbenchError, match=r"auxiliary_tasks: \['semseg', 'depth'\]"):
        convert_released(released_state("mtinet", "nyud"), net)


def test_load_weights_unwraps_a_survey_checkpoint_and_reports_every_key(tmp_path):
    """`checkpoint.pth.tar` of the survey code: {'model': DataParallel state dict, ...} (main.py)."""
    torch.manual_seed(0)
    state = {k: torch.randn(v.shape) for k, v in released_state("padnet", "nyud").items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    net = recipe_model("padnet", "nyud", device="cpu")
    report = load_weights(net, path)
    assert report.converter == "released padnet" and report.stripped_prefixes == {"module.": len(state)}
    assert set(report.mapped) | set(report.dropped) == set(state) and report.loaded == len(state)
    assert report.mapped["backbone.1.last_layer.0.weight"] == "backbone_fuse.fuse.0.weight"
    assert torch.equal(net.state_dict()["heads.depth.1.weight"], state["heads.depth.2.weight"])


def test_a_depth_two_demt_mixer_maps_block_by_block():
    """DeMT's xd=2 release: DefMixer blocks 0 and 1 (demt_head.py::DefMixer) -> mixers.<task>.0 and .1."""
    state = released_state("demt", "nyud")
    state |= {k.replace(".blocks.0.", ".blocks.1."): v for k, v in state.items() if k.startswith("head.defor_mixers.")}
    net = recipe_model("demt", "nyud", mixer_depth=2)
    converted, keys = convert_released(state, net)
    net.load_state_dict(converted, strict=True, assign=True)
    targets = {k.source: k.target for k in keys}
    source = "head.defor_mixers.1.blocks.1.3.fn.0.get_offset.opt.weight"
    assert targets[source] == "mixers.depth.1.spatial.0.offsets.opt.weight"
