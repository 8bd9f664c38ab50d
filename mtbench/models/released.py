"""Convert the authors' released checkpoints (DeMT, InvPT, MTI-Net, PAD-Net) into mtbench's models.

Sources of the released key names (docs/released_checkpoints.md has the full tables and the checks):
- DeMT: yangyangxu0/DeMT @ b638e140: src/model/heads/demt_head.py::DemtHead, src/model/backbones/swin.py
- InvPT: prismformore/Multi-Task-Transformer @ 870c6be1: InvPT/models/transformers/transformer_decoder.py,
  InvPT/models/transformers/invpt.py::InvPT
- MTI-Net, PAD-Net: SimonVandenhende/Multi-Task-Learning-PyTorch @ ed3d9ac1: models/mti_net.py::MTINet,
  models/padnet.py::PADNet, models/seg_hrnet.py::HighResolutionNet

Each release has a table of rules (regex on the released key, mtbench key template, transform, or the reason the
key is dropped); the first rule that matches a key decides. `convert_released` checks that the checkpoint is of
the model, task set and class counts that were built, and returns the converted state with one `KeyMapping` per
released key. Wrappers (Lightning `state_dict`, `model`, `module.`) are removed by `mtbench.models.weights`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtbench.errors import MtbenchError
from mtbench.models.demt import DeMT, unfold_to_swin_order
from mtbench.models.invpt import InvPT
from mtbench.models.mtinet import MTINet
from mtbench.models.padnet import PADNet
from mtbench.models.weights import CONVERTERS, Conversion

SHOWN = 4  # keys named in an error message
NAMES = {"demt": "DeMT", "invpt": "InvPT", "mtinet": "MTI-Net", "padnet": "PAD-Net"}
MODEL_CLASSES: dict[str, type[nn.Module]] = {"demt": DeMT, "invpt": InvPT, "mtinet": MTINet, "padnet": PADNet}
# Order in which the survey code parses tasks (utils/config.py): the order of MTI-Net's FPM concatenation.
SURVEY_ORDER = ("semseg", "human_parts", "sal", "normals", "edge", "depth")

Transform = Callable[[str, Mapping[str, Tensor]], Tensor]


@dataclass(frozen=True)
class Rule:
    """Released keys matching `pattern` go to `target` (a template) through `transform`, or are dropped (`reason`).

    Templates use `re` group references plus `{task}` (the task at captured index `ti`) and `{st+1}` / `{st-1}`
    (captured stage `st` shifted by one).
    """

    pattern: str
    target: str | None
    transform: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class KeyMapping:
    """What happened to one released key: loaded as `target` (through `transform`), or dropped for `reason`."""

    source: str
    target: str | None
    transform: str | None = None
    reason: str = ""

    def describe(self) -> str:
        """`target` with its transform in parentheses, or the reason it was dropped."""
        if self.target is None:
            return self.reason
        return self.target + (f" ({self.transform})" if self.transform else "")


def softmax2_to_sigmoid(key: str, state: Mapping[str, Tensor]) -> Tensor:
    """2-logit softmax layer -> 1 logit: row 1 minus row 0, so sigmoid(z1 - z0) == softmax(z)[1] (exact)."""
    x = state[key]
    return (x[1] - x[0]).unsqueeze(0)


def fold_sal_preliminary(key: str, state: Mapping[str, Tensor]) -> Tensor:
    """Fold InvPT's `mix_proj.sal` from [f, p0, p1] inputs to mtbench's [f, p1 - p0] (exact).

    Multi-Task-Transformer: InvPT/models/transformers/invpt.py::InvPT.forward concatenates the 2-logit
    preliminary saliency p = intermediate_head.sal(f) to f. With a = (w0 + w1) / 2, d = (w1 - w0) / 2:
    w0 p0 + w1 p1 = a (p0 + p1) + d (p1 - p0), and p0 + p1 is linear in f, so it folds into f's columns and the bias.
    """
    mix, pre = "multi_task_decoder.invpt.mix_proj.sal.0.", "multi_task_decoder.intermediate_head.sal."
    w, b = state[mix + "weight"], state[mix + "bias"]
    wi, bi = state[pre + "weight"][:, :, 0, 0], state[pre + "bias"]
    c = wi.shape[1]
    a = (w[:, c, 0, 0] + w[:, c + 1, 0, 0]) / 2
    d = (w[:, c + 1, 0, 0] - w[:, c, 0, 0]) / 2
    if key.endswith("weight"):
        folded = w[:, :c, 0, 0] + a[:, None] * (wi[0] + wi[1])[None, :]
        return torch.cat([folded, d[:, None]], 1)[:, :, None, None].contiguous()
    return b + a * (bi[0] + bi[1])


TRANSFORMS: dict[str, Transform] = {
    "unfold_to_swin_order": lambda key, state: unfold_to_swin_order(state[key]),
    "softmax2_to_sigmoid": softmax2_to_sigmoid,
    "fold_sal_preliminary": fold_sal_preliminary,
    "fuse_conv_to_matrix": lambda key, state: state[key].flatten(1),  # InvPT fuse_attn (h, 2h, 1, 1) -> (h, 2h)
}
# Transforms that only turn a 2-channel saliency head into mtbench's 1 channel: skipped for a 2-channel model.
SAL_FOLDS = ("softmax2_to_sigmoid", "fold_sal_preliminary")
SAL_HEADS = {"demt": "logits.sal.weight", "invpt": "heads.sal.weight"}  # the final saliency layer in mtbench

# yangyangxu0/DeMT: src/model/heads/demt_head.py::DemtHead, src/model/backbones/swin.py::SwinTransformer (mmseg).
_SWIN = r"^backbone\.stages\.(\d+)\.blocks\.(\d+)\."
_TIMM = r"backbone.model.layers_\1.blocks.\2."
_MIX = r"^head\.defor_mixers\.(?P<ti>\d+)\.blocks\.(\d+)\."
DEMT = (
    Rule(r"^(?!backbone\.|head\.)", None, reason="not part of the network (Lightning module state outside "
         "backbone/head, e.g. metrics_dict)"),
    Rule(r"^backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_index$", None,
         reason="constant index buffer; timm recomputes it (non-persistent)"),
    Rule(r"^head\.defor_mixers\.\d+\.blocks\.\d+\.3\.fn\.0\.offset$", None,
         reason="ChlSpl gen_offset buffer, registered but never used in forward"),
    Rule(r"^backbone\.patch_embed\.projection\.", "backbone.model.patch_embed.proj."),
    Rule(r"^backbone\.patch_embed\.norm\.", "backbone.model.patch_embed.norm."),
    Rule(_SWIN + r"attn\.w_msa\.", _TIMM + "attn."),
    Rule(_SWIN + r"ffn\.layers\.0\.0\.", _TIMM + "mlp.fc1."),
    Rule(_SWIN + r"ffn\.layers\.1\.", _TIMM + "mlp.fc2."),
    Rule(_SWIN + r"(norm[12])\.", _TIMM + r"\3."),
    # timm merges patches at the start of the next stage, in Swin's channel order (mmseg uses nn.Unfold's).
    Rule(r"^backbone\.stages\.(?P<st>\d+)\.downsample\.(norm|reduction)\.",
         r"backbone.model.layers_{st+1}.downsample.\2.", "unfold_to_swin_order"),
    Rule(r"^backbone\.norm(\d)\.", r"backbone_norms.\1."),
    Rule(r"^head\.linear1\.", "project."),
    # one mixer block per `blocks.<b>` (b > 0 only with mixer_depth > 1, e.g. the xd=2 release)
    Rule(_MIX + r"0\.", r"mixers.{task}.\2.channel.0."),
    Rule(_MIX + r"2\.", r"mixers.{task}.\2.channel.2."),
    Rule(_MIX + r"3\.fn\.0\.get_offset\.", r"mixers.{task}.\2.spatial.0.offsets."),
    Rule(_MIX + r"3\.fn\.0\.", r"mixers.{task}.\2.spatial.0."),
    Rule(_MIX + r"3\.fn\.2\.", r"mixers.{task}.\2.spatial.2."),
    Rule(r"^head\.task_fusion\.in_proj_(weight|bias)$", r"interaction.attn.in_proj.\1"),
    Rule(r"^head\.task_fusion\.out_proj\.", "interaction.attn.out_proj."),
    Rule(r"^head\.smlp\.", "interaction.mlp."),
    Rule(r"^head\.task_querys\.(?P<ti>\d+)\.in_proj_(weight|bias)$", r"queries.{task}.attn.in_proj.\2"),
    Rule(r"^head\.task_querys\.(?P<ti>\d+)\.out_proj\.", "queries.{task}.attn.out_proj."),
    Rule(r"^head\.smlp2\.(?P<ti>\d+)\.", "queries.{task}.mlp."),
    Rule(r"^head\.bottleneck\.(\w+)\.conv\.", r"bottlenecks.\1.0."),
    Rule(r"^head\.bottleneck\.(\w+)\.bn\.", r"bottlenecks.\1.1."),
    Rule(r"^head\.final_logits\.sal\.", "logits.sal.", "softmax2_to_sigmoid"),
    Rule(r"^head\.final_logits\.", "logits."),
)

# prismformore/Multi-Task-Transformer: InvPT/models/transformers/{transformer_decoder.py::TransformerDecoder,
# invpt.py::InvPT}, InvPT/models/transformer_net.py::TransformerNet.
_D = r"^multi_task_decoder\."
_I = _D + r"invpt\."
_S = _I + r"invpt_stages\.(\d+)\.blocks\.0\."
INVPT = (
    Rule(r"^backbone\.(cls_token|pos_embed)$", r"backbone.model.\1"),
    Rule(r"^backbone\.(patch_embed|blocks|norm)\.", r"backbone.model.\1."),
    Rule(_D + r"intermediate_head\.sal\.", "preliminary_head.sal.", "softmax2_to_sigmoid"),
    Rule(_D + r"intermediate_head\.(\w+)\.", r"preliminary_head.\1."),
    Rule(_D + r"preliminary_decoder\.(\w+)\.(\d)\.conv\.", r"preliminary.\1.\2.0."),
    Rule(_D + r"preliminary_decoder\.(\w+)\.(\d)\.bn1\.", r"preliminary.\1.\2.1."),
    Rule(_D + r"scale_embed\.0\.", "skip_8."),
    Rule(_D + r"scale_embed\.1\.", "skip_16."),
    Rule(_D + r"scale_embed\.2\.", None, reason="conv on the ViT block-18 map whose output is computed and "
         "discarded (stage 0 has no patch_embed); never reaches an output"),
    Rule(_I + r"mix_proj\.sal\.0\.", "mix.sal.", "fold_sal_preliminary"),
    Rule(_I + r"mix_proj\.(\w+)\.0\.", r"mix.\1."),
    Rule(_I + r"invpt_stages\.(\d+)\.patch_embed\.(\d+)\.proj\.1\.", r"stages.\1.up.\2.1.0."),
    Rule(_I + r"invpt_stages\.(\d+)\.patch_embed\.(\d+)\.proj\.2\.", r"stages.\1.up.\2.1.1."),
    Rule(_I + r"invpt_stages\.(\d+)\.patch_embed\.(\d+)\.proj\.4\.", r"stages.\1.up.\2.2.0."),
    Rule(_I + r"invpt_stages\.(\d+)\.patch_embed\.(\d+)\.proj\.5\.", r"stages.\1.up.\2.2.1."),
    Rule(_S + r"(norm1|norm2)\.", r"stages.\1.\2."),
    Rule(_S + r"mlp\.fc1\.", r"stages.\1.mlp.0."),
    Rule(_S + r"mlp\.fc2\.", r"stages.\1.mlp.2."),
    Rule(_S + r"attn\.conv_proj_q\.(\d+)\.conv\.", r"stages.\1.attn.q_reduce.\2.0."),
    Rule(_S + r"attn\.conv_proj_q\.(\d+)\.bn\.", r"stages.\1.attn.q_reduce.\2.1."),
    Rule(_S + r"attn\.(proj_q|proj_k|proj_v|proj)\.", r"stages.\1.attn.\2."),
    Rule(_I + r"invpt_stages\.0\.blocks\.0\.attn\.fuse_attn\.", None,
         reason="stage 0 receives no attention message, so fuse_attn never runs"),
    Rule(_S + r"attn\.fuse_attn\.bias$", None, reason="adds one constant per head to every score of a softmax "
         "row (and, through the message, only such constants later): softmax-invariant"),
    Rule(_S + r"attn\.fuse_attn\.weight$", r"stages.\1.attn.fuse", "fuse_conv_to_matrix"),
    Rule(_I + r"norm_mts\.(\d)\.", r"stage_norms.\1."),
    Rule(_I + r"redu_chan\.0\.", None, reason="redu_chan[0] is built but only redu_chan[i > 0] runs"),
    Rule(_I + r"redu_chan\.(?P<st>\d)\.(?P<ti>\d+)\.", "reduce.{st-1}.{task}."),
    Rule(_I + r"norm_mt\.", None, reason="built, never used in forward"),
    Rule(_I + r"mt_proj\.(\w+)\.", r"out_proj.\1."),
    Rule(r"^heads\.sal\.linear_pred\.", "heads.sal.", "softmax2_to_sigmoid"),
    Rule(r"^heads\.(\w+)\.linear_pred\.", r"heads.\1."),
)

# SimonVandenhende/Multi-Task-Learning-PyTorch: models/mti_net.py::MTINet. The HRNet keys are timm's
# hrnet_w18_small_v2 (features_only, feature_location='') names.
MTINET = (
    Rule(r"^backbone\.", "backbone.model."),
    Rule(r"^scale_(\d)\.refinement\.", r"initial.\1.refine."),
    Rule(r"^scale_(\d)\.decoders\.", r"initial.\1.predict."),
    Rule(r"^fpm_scale_(?P<st>\d)\.non_linear\.", "fpm.{st-1}.non_linear."),
    Rule(r"^fpm_scale_(?P<st>\d)\.dimensionality_reduction\.", "fpm.{st-1}.reduce."),
    Rule(r"^fpm_scale_(?P<st>\d)\.se\.", "fpm.{st-1}.se."),
    Rule(r"^distillation_scale_(\d)\.self_attention\.", r"distillation.\1.blocks."),
    Rule(r"^heads\.", "heads."),
)

# SimonVandenhende/Multi-Task-Learning-PyTorch: models/padnet.py::PADNet (backbone = Sequential(HRNet, fuse)).
PADNET = (
    Rule(r"^backbone\.0\.", "backbone.model."),
    Rule(r"^backbone\.1\.last_layer\.", "backbone_fuse.fuse."),
    Rule(r"^initial_task_prediction_heads\.layers\.", "initial."),
    Rule(r"^initial_task_prediction_heads\.conv_out\.", "initial_out."),
    Rule(r"^multi_modal_distillation\.self_attention\.", "distillation.blocks."),
    Rule(r"^heads\.(\w+)\.([01])\.", r"heads.\1.0.\2."),
    Rule(r"^heads\.(\w+)\.2\.", r"heads.\1.1."),
)

RULES: dict[str, tuple[Rule, ...]] = {"demt": DEMT, "invpt": INVPT, "mtinet": MTINET, "padnet": PADNET}
# Key prefixes that identify a release (all of a tuple must occur) and the keys that name its tasks:
# (prefix of the task-named keys of the main tasks, of the auxiliary tasks or None).
SIGNATURES: dict[str, tuple[tuple[str, ...], ...]] = {
    "demt": (("backbone.stages.", "head.defor_mixers."),),
    "invpt": (("multi_task_decoder.invpt.",),),
    "mtinet": (("scale_0.refinement.",), ("fpm_scale_",)),
    "padnet": (("initial_task_prediction_heads.",),),
}
TASK_KEYS: dict[str, tuple[str, str | None]] = {
    "demt": ("head.final_logits.", None),
    "invpt": ("heads.", None),
    "mtinet": ("heads.", "scale_0.decoders."),
    "padnet": ("heads.", "initial_task_prediction_heads.layers."),
}


def detect_release(state: Mapping[str, Tensor]) -> str | None:
    """Which released model (`demt`, `invpt`, `mtinet`, `padnet`) a bare state dict is, by its key prefixes."""
    for release, signatures in SIGNATURES.items():
        if any(all(any(k.startswith(p) for k in state) for p in sig) for sig in signatures):
            return release
    return None


def model_release(model: nn.Module) -> str | None:
    """The release name of an mtbench model's class, or None for a model without a released checkpoint."""
    return next((name for name, cls in MODEL_CLASSES.items() if isinstance(model, cls)), None)


def named_tasks(state: Mapping[str, Tensor], prefix: str) -> tuple[str, ...]:
    """Task names in key order from keys `<prefix><task>.*`."""
    return tuple(dict.fromkeys(k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)))


def check_model(release: str, model: nn.Module) -> None:
    """Refuse a released checkpoint of another model than the one built."""
    built = model_release(model)
    if built != release:
        keys = ", ".join(SIGNATURES[release][0])
        what = NAMES[built] if built else type(model).__name__
        raise MtbenchError(f"the weights are a released {NAMES[release]} checkpoint (keys {keys}...), but the "
                           f"experiment builds {what}. Evaluate them with model: {release}.")


def check_tasks(release: str, state: Mapping[str, Tensor], model: nn.Module) -> None:
    """Refuse a checkpoint whose task set (or MTI-Net's auxiliary task order) is not the model's."""
    main, aux = TASK_KEYS[release]
    pairs = [(main, named_tasks(state, main), tuple(model.tasks))]
    if aux is not None:
        pairs.append((aux, named_tasks(state, aux), tuple(getattr(model, "auxiliary_tasks", model.tasks))))
    for prefix, released, built in pairs:
        if set(released) != set(built):
            raise MtbenchError(f"the released {NAMES[release]} checkpoint has tasks {', '.join(released)} (keys "
                               f"{prefix}<task>.*), the model {', '.join(built)}: another dataset or task set. "
                               "Build the experiment with the dataset and tasks the checkpoint was trained on.")
    if release == "mtinet":  # the FPM concatenates the auxiliary tasks in the survey's parse order
        order = tuple(t for t in SURVEY_ORDER if t in model.auxiliary_tasks)
        if tuple(model.auxiliary_tasks) != order:
            raise MtbenchError(f"released MTI-Net weights concatenate the auxiliary tasks in the order "
                               f"{list(order)} (survey utils/config.py); the model has {list(model.auxiliary_tasks)}. "
                               f"Set model option auxiliary_tasks: {list(order)}.")


def fill(rule: Rule, match: re.Match[str], tasks: tuple[str, ...]) -> str:
    """The mtbench key prefix of `rule` for `match`: placeholders filled, group references expanded."""
    template, groups = rule.target or "", match.groupdict()
    if "ti" in groups:
        template = template.replace("{task}", tasks[int(groups["ti"])])
    if "st" in groups:
        stage = int(groups["st"])
        template = template.replace("{st+1}", str(stage + 1)).replace("{st-1}", str(stage - 1))
    return match.expand(template)


def map_key(key: str, rules: tuple[Rule, ...], tasks: tuple[str, ...]) -> KeyMapping | None:
    """The first rule's outcome for `key`, or None when no rule matches."""
    for rule in rules:
        match = re.match(rule.pattern, key)
        if match is None:
            continue
        if rule.target is None:
            return KeyMapping(key, None, reason=rule.reason)
        if "ti" in match.groupdict() and int(match["ti"]) >= len(tasks):
            return None  # a task index beyond the task set: another architecture
        return KeyMapping(key, fill(rule, match, tasks) + key[match.end():], rule.transform)


def keeps_two_logits(release: str, target: Mapping[str, Tensor]) -> bool:
    """Whether the model's saliency head has 2 channels (built with `two_logit_heads: true`)."""
    head = target.get(SAL_HEADS.get(release, ""))
    return head is not None and head.shape[0] == 2


def apply(mapping: KeyMapping, state: Mapping[str, Tensor], two_logits: bool) -> tuple[Tensor, KeyMapping]:
    """The converted tensor; saliency folds are skipped when the model keeps the 2-channel head."""
    assert mapping.target is not None
    value, transform = state[mapping.source], mapping.transform
    if transform in SAL_FOLDS and two_logits:
        return value, KeyMapping(mapping.source, mapping.target, None)
    return (TRANSFORMS[transform](mapping.source, state) if transform else value), mapping


def check_fit(release: str, converted: Mapping[str, Tensor], sources: Mapping[str, str],
              target: Mapping[str, Tensor]) -> None:
    """Name the missing, unexpected and mis-shaped keys (with their released names) before a strict load."""
    missing = sorted(set(target) - set(converted))
    extra = sorted(set(converted) - set(target))
    if missing or extra:
        parts = [f"{len(keys)} {what} (e.g. {', '.join(show(keys, sources))})"
                 for what, keys in (("model keys without a released key", missing),
                                    ("released keys without a model key", extra)) if keys]
        raise MtbenchError(f"the released {NAMES[release]} checkpoint does not fit this model: {'; '.join(parts)}. "
                           "Build it with the recipe's options (backbone, mixer/decoder widths, tasks).")
    wrong = [k for k in target if converted[k].shape != target[k].shape]
    if wrong:
        shown = "; ".join(f"{sources[k]} -> {k}: checkpoint {tuple(converted[k].shape)}, model "
                          f"{tuple(target[k].shape)}" for k in wrong[:SHOWN])
        raise MtbenchError(f"the released {NAMES[release]} checkpoint does not fit this model: {len(wrong)} "
                           f"tensor(s) have other shapes ({shown}), e.g. another number of classes, another "
                           "backbone or another img_size. Use the dataset, tasks and recipe size it was trained at.")


def show(keys: list[str], sources: Mapping[str, str]) -> list[str]:
    """Up to SHOWN keys, each with the released key it came from."""
    return [f"{sources[k]} -> {k}" if k in sources else k for k in keys[:SHOWN]]


def convert_released(state: Mapping[str, Tensor], model: nn.Module,
                     release: str | None = None) -> tuple[dict[str, Tensor], list[KeyMapping]]:
    """Convert a released state dict (no wrapper, no `module.`) into `model`'s keys; one KeyMapping per key.

    Raises MtbenchError for a checkpoint of another model, task set, class count or size than `model`.
    Saliency is loaded as it is into a 2-channel head (`two_logit_heads: true`), otherwise folded exactly.
    """
    release = release or detect_release(state)
    if release is None:
        raise MtbenchError("the weights are no released DeMT, InvPT, MTI-Net or PAD-Net checkpoint (first keys: "
                           f"{', '.join(list(state)[:SHOWN])}).")
    check_model(release, model)
    check_tasks(release, state, model)
    tasks, target = tuple(model.tasks), model.state_dict()
    planned = {key: map_key(key, RULES[release], tasks) for key in state}
    unknown = [key for key, m in planned.items() if m is None]
    if unknown:
        raise MtbenchError(f"the released {NAMES[release]} checkpoint has {len(unknown)} key(s) that no rule "
                           f"knows (e.g. {', '.join(unknown[:SHOWN])}): another version or configuration.")
    two_logits = keeps_two_logits(release, target)
    converted: dict[str, Tensor] = {}
    mappings: list[KeyMapping] = []
    for mapping in planned.values():
        assert mapping is not None
        if mapping.target is not None:
            converted[mapping.target], mapping = apply(mapping, state, two_logits)
        mappings.append(mapping)
    sources = {m.target: m.source for m in mappings if m.target is not None}
    check_fit(release, converted, sources, target)
    return converted, mappings


def report_entries(mappings: list[KeyMapping]) -> tuple[dict[str, str], dict[str, str]]:
    """({released key: mtbench key (transform)}, {released key: why dropped}) for a WeightsReport."""
    mapped = {m.source: m.describe() for m in mappings if m.target is not None}
    dropped = {m.source: m.reason for m in mappings if m.target is None}
    return mapped, dropped


class ReleasedConverter:
    """The authors' DeMT, InvPT, MTI-Net and PAD-Net checkpoints, recognised by their keys (`detect_release`)."""

    def matches(self, state: Mapping[str, Tensor], model: nn.Module) -> bool:
        return detect_release(state) is not None

    def convert(self, state: Mapping[str, Tensor], model: nn.Module) -> Conversion:
        release = detect_release(state)
        converted, keys = convert_released(state, model, release)
        return Conversion(converted, *report_entries(keys), name=f"released {release}")


CONVERTERS.register("released")(ReleasedConverter())
