"""Every baselines/ recipe gives mtbench its released training configuration, item by item.

The expected values were read in the released code (each recipe's header cites the file of every item; the summary is
../shared/PROTOCOLS.md "Released training recipes"); a recipe is loaded as `mtbench run` loads it.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli

from mtbench.config.loading import expand_trials, load_experiment
from mtbench.config.schema import TrialConfig
from mtbench.tasks import resolve_tasks

BASELINES = REPO / "baselines"
# DeMT's released Swin-T initialisation (yangyangxu0/DeMT: src/model/backbones/swin.py::model_urls["swin_t"]).
UPERNET_SWIN_T = ("upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_20210531_112542-"
                  "e380ad3e.pth")
DEMT_REPO = "yangyangxu0/DeMT"
INVPT_REPO = "prismformore/Multi-Task-Transformer"
MTL_REPO = "SimonVandenhende/Multi-Task-Learning-PyTorch"
NYUD_4 = {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
PASCAL_5 = {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "edge": 50.0}
# The header of every recipe has one line `# <item>: ...` per item.
ITEMS = ("optimizer", "lr", "weight decay", "schedule", "steps", "batch", "precision", "input", "augmentation",
         "loss weights", "edge pos weight", "saliency", "normals loss", "deep supervision", "pretrained", "test input",
         "evaluation", "checkpoint")


@dataclass
class Released:
    """What a recipe must set for mtbench to train as the released code did."""

    repo: str
    model: str
    dataset: str
    tasks: tuple[str, ...]
    protocol: str
    crop_size: tuple[int, int] | None
    pad_to: tuple[int, int] | None
    optimizer: str
    lr: float
    weight_decay: float
    schedule_per: str
    steps: int
    batch_size: int
    sync_bn: bool
    loss_weights: dict[str, float]
    edge_pos_weight: float
    normals_normalize_by: str | None  # None: no normals task
    backbone: str
    pretrained: bool | str
    two_logit_heads: bool
    momentum: float | None = None  # sgd only
    model_options: dict[str, Any] = field(default_factory=dict)  # besides two_logit_heads
    # The Δm reference variant: its backbone and initialisation where they differ from the model's.
    single_task_backbone: str | None = None
    single_task_pretrained: bool | str | None = None
    # Items a recipe says it cannot match yet (`# Not matched: <item>: why`).
    not_matched: frozenset[str] = frozenset()


DEMT = dict(repo=DEMT_REPO, model="demt", protocol="atrc", optimizer="sgd", lr=0.001, momentum=0.9,
            weight_decay=0.0005, schedule_per="step", steps=40000, batch_size=8, sync_bn=True, backbone="swin_tiny",
            pretrained=f"weights/{UPERNET_SWIN_T}", single_task_backbone="swin_tiny.ms_in1k",
            single_task_pretrained=True, model_options={"backbone_drop_path_rate": 0.1})
INVPT = dict(repo=INVPT_REPO, model="invpt", protocol="atrc", optimizer="adam", lr=2e-5, weight_decay=1e-6,
             schedule_per="step", steps=40000, batch_size=6, sync_bn=True, edge_pos_weight=0.95,
             normals_normalize_by="pixels", backbone="vit_large_patch16.augreg_in21k_ft_in1k", pretrained=True,
             model_options={"preliminary_width": 512, "decoder_width": 576, "num_heads": 2,
                            "backbone_drop_path_rate": 0.15})
SURVEY = dict(repo=MTL_REPO, protocol="mtinet", crop_size=None, pad_to=None, optimizer="adam", lr=1e-4,
              weight_decay=1e-4, schedule_per="epoch", batch_size=8, sync_bn=False, edge_pos_weight=0.95,
              backbone="hrnet_w18_small.ms_in1k", pretrained=True, two_logit_heads=False,
              model_options={"backbone_bn_momentum": 0.01})
SURVEY_NYUD = dict(SURVEY, dataset="nyud", tasks=("semseg", "depth"), steps=100 * (795 // 8),
                   loss_weights={"semseg": 1.0, "depth": 1.0}, normals_normalize_by=None,
                   not_matched=frozenset({"single_task reference head"}))
SURVEY_PASCAL = dict(SURVEY, dataset="pascal_context", tasks=tuple(PASCAL_5), steps=100 * (4998 // 8),
                     loss_weights=PASCAL_5, normals_normalize_by="elements",
                     not_matched=frozenset({"evaluation", "single_task reference head"}))

RELEASED: dict[str, Released] = {
    "demt_nyud": Released(**DEMT, dataset="nyud", tasks=tuple(NYUD_4), crop_size=(425, 560), pad_to=None,
                          loss_weights=NYUD_4, edge_pos_weight=0.8, normals_normalize_by="pixels",
                          two_logit_heads=False,
                          not_matched=frozenset({"single_task reference init"})),
    "demt_pascal": Released(**DEMT, dataset="pascal_context", tasks=tuple(PASCAL_5), crop_size=(512, 512),
                            pad_to=None, loss_weights=PASCAL_5, edge_pos_weight=0.95, normals_normalize_by="pixels",
                            two_logit_heads=True,
                            not_matched=frozenset({"single_task reference init", "saliency balance on one GPU"})),
    "invpt_nyud": Released(**INVPT, dataset="nyud", tasks=tuple(NYUD_4), crop_size=(448, 576), pad_to=None,
                           loss_weights=NYUD_4, two_logit_heads=False),
    "invpt_pascal": Released(**INVPT, not_matched=frozenset({"saliency balance on one GPU"}),
                             dataset="pascal_context", tasks=tuple(PASCAL_5), crop_size=(512, 512), pad_to=None,
                             loss_weights=PASCAL_5, two_logit_heads=True),
    "mtinet_nyud": Released(**SURVEY_NYUD, model="mtinet"),
    "mtinet_pascal": Released(**SURVEY_PASCAL, model="mtinet"),
    "padnet_nyud": Released(**SURVEY_NYUD, model="padnet"),
    "padnet_pascal": Released(**SURVEY_PASCAL, model="padnet"),
}


def recipe_path(name: str) -> Path:
    return BASELINES / f"{name}.yaml"


def trials_of(name: str) -> dict[str, TrialConfig]:
    """The seed-0 trial of each variant of a recipe, loaded and validated as `mtbench run` does."""
    path = recipe_path(name)
    trials = expand_trials(load_experiment(path), where=str(path))
    return {t.variant: t for t in trials if t.seed == 0}


def test_every_recipe_has_its_released_configuration_listed():
    assert sorted(p.stem for p in BASELINES.glob("*.yaml")) == sorted(RELEASED)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_recipe_trains_as_released(name):
    want = RELEASED[name]
    exp = load_experiment(recipe_path(name))
    assert (exp.name, exp.seeds, exp.reference_variant) == (name, [0, 1, 2], "single_task")
    assert [v.name for v in exp.variants] == ["single_task", want.model]
    trial = trials_of(name)[want.model]
    assert (trial.model.name, trial.dataset.name, trial.dataset.protocol) == (want.model, want.dataset, want.protocol)
    assert resolve_tasks(trial.dataset.name, trial.dataset.tasks) == want.tasks
    sizes = {k: tuple(v) for k, v in trial.dataset.options.items() if k in ("crop_size", "pad_to")}
    assert (sizes.get("crop_size"), sizes.get("pad_to")) == (want.crop_size, want.pad_to)
    assert set(trial.dataset.options) <= {"crop_size", "pad_to"}
    opt, schedule, train = trial.train.optimizer, trial.train.schedule, trial.train
    assert (opt.name, opt.lr, opt.weight_decay, opt.decay_on) == (want.optimizer, want.lr, want.weight_decay, "all")
    if want.momentum is not None:
        assert opt.momentum == want.momentum
    assert (schedule.name, schedule.power, schedule.warmup_steps, schedule.min_lr_ratio, schedule.per) == \
        ("poly", 0.9, 0, 0.0, want.schedule_per)
    assert (train.steps, train.batch_size, train.sync_bn, train.amp, train.select, train.grad_clip) == \
        (want.steps, want.batch_size, want.sync_bn, False, "final", None)
    assert (trial.loss.weighting, trial.loss.weights) == ("fixed", want.loss_weights)
    losses = trial.loss.task_loss_options()
    assert losses["edge"]["pos_weight"] == want.edge_pos_weight
    normals = losses.get("normals", {}).get("normalize_by", "pixels") if "normals" in want.tasks else None
    assert normals == want.normals_normalize_by
    assert (trial.model.backbone, trial.model.pretrained) == (want.backbone, want.pretrained)
    model_options = dict(trial.model.options)
    assert model_options.pop("two_logit_heads", False) == want.two_logit_heads
    assert model_options == want.model_options


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_single_task_reference_trains_like_the_model(name):
    """The Δm reference differs from the model only in the network: same data, training, losses and weights."""
    want = RELEASED[name]
    trials = trials_of(name)
    model, reference = trials[want.model], trials["single_task"]
    assert reference.model.name == "single_task"
    assert (reference.dataset, reference.train, reference.loss) == (model.dataset, model.train, model.loss)
    assert reference.model.backbone == (want.single_task_backbone or model.model.backbone)
    expected_pretrained = model.model.pretrained if want.single_task_pretrained is None else want.single_task_pretrained
    assert reference.model.pretrained == expected_pretrained
    # single_task takes head_channels, two_logit_heads and backbone_drop_path_rate: the saliency head layout and
    # the backbone's stochastic depth follow the model's.
    shared = {k: v for k, v in want.model_options.items() if k in ("backbone_drop_path_rate", "backbone_bn_momentum")}
    assert reference.model.options == ({"two_logit_heads": True} if want.two_logit_heads else {}) | shared


def header(name: str) -> list[str]:
    """The comment lines above the first key of a recipe."""
    lines = []
    for line in recipe_path(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_header_gives_each_item_once_with_its_released_source(name):
    want = RELEASED[name]
    lines = header(name)
    for item in ITEMS:
        found = [line for line in lines if line.startswith(f"# {item}:")]
        assert len(found) == 1, f"{name}: item {item!r} has {len(found)} lines"
        # Every item cites the released file it comes from, unless the release has no such task.
        assert f"({want.repo}: " in found[0] or re.match(rf"# {item}: no \w+ task", found[0]), found[0]


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_header_names_what_is_not_matched_yet(name):
    not_matched = {m.group(1) for line in header(name) if (m := re.match(r"# Not matched: ([^:]+):", line))}
    assert not_matched == RELEASED[name].not_matched


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """`mtbench run <recipe> --dry-run` for every recipe, through the installed CLI, all at once."""
    cwds = {name: tmp_path_factory.mktemp(name) for name in RELEASED}  # mktemp is not thread-safe

    def dry_run(name: str):
        return name, run_cli("run", str(recipe_path(name)), "--dry-run", cwd=cwds[name], timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(dry_run, sorted(RELEASED)))


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_recipe_dry_run_lists_its_trials(dry_runs, name):
    result = dry_runs[name]
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"{name}: 6 trials" in result.stdout
    rows = [line.split("│")[2].strip() for line in result.stdout.splitlines() if line.count("│") > 3]
    assert sorted(rows) == sorted(["single_task"] * 3 + [RELEASED[name].model] * 3)
