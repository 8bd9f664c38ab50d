"""The contracts between modules: every registered entry satisfies its protocol, tasks.py alone knows a task
by name, and the package's layers import downwards only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtbench.balancing import build_balancer
from mtbench.models import BACKBONES, MODELS, build_model
from mtbench.protocols import FeatureBackbone, LossBalancer, MultiTaskModel
from mtbench.registry import WEIGHTINGS
from mtbench.tasks import DATASET_TASKS, IGNORE, TASK_NAMES, TASKS

PACKAGE = Path(__file__).resolve().parents[1] / "mtbench"


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_declares_its_maps(name):
    entry = BACKBONES.get(name)
    with torch.device("meta"):  # no memory or time for ViT-L's weights: only the structure is checked
        backbone = entry.build(pretrained=False, img_size=(224, 224))
    assert isinstance(backbone, FeatureBackbone)
    assert len(backbone.channels) == len(backbone.reductions) >= 1
    assert all(isinstance(c, int) and c > 0 for c in backbone.channels)
    expected = [4, 8, 16, 32] if entry.kind == "pyramid" else [backbone.reductions[0]] * len(backbone.reductions)
    assert list(backbone.reductions) == expected
    assert entry.timm_name


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_returns_each_task_and_declares_its_deep_supervision(name):
    entry = MODELS.get(name)
    tasks = DATASET_TASKS["synthetic_pascal"]
    torch.manual_seed(0)
    model = build_model(name, tasks=tasks, dataset="synthetic_pascal", backbone=entry.smoke_backbone)
    assert isinstance(model, MultiTaskModel) and model.tasks == tasks
    image = torch.randn(2, 3, *entry.test_size)
    model.train()
    out = model(image)
    assert set(out) == set(tasks)
    for task, pred in out.items():
        assert pred.shape == (2, TASKS[task].num_outputs("synthetic_pascal"), *entry.test_size)
    assert isinstance(model.auxiliary, dict)
    for preds in model.auxiliary.values():
        assert set(preds) <= set(tasks)
    model.eval()
    with torch.no_grad():
        model(image)
    assert model.auxiliary == {}


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_balancer_fills_gradients_and_reports_its_weights(name):
    tasks = ("semseg", "depth")
    torch.manual_seed(0)
    model = build_model("shared_encoder", tasks=tasks, dataset="synthetic_nyud", backbone="tiny")
    balancer = build_balancer(name, tasks=tasks, weights={"depth": 2.0}, steps_per_epoch=2)
    assert isinstance(balancer, LossBalancer)
    balancer.attach(model)
    image = torch.randn(2, 3, 32, 32)
    out = model(image)
    losses = balancer.scale({t: out[t].float().pow(2).mean() for t in tasks})
    weights = balancer.backward(losses)
    assert weights.shape == (2,) and torch.isfinite(weights).all()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert set(balancer.task_weights()) <= set(tasks)
    balancer.after_step(lambda: balancer.scale({t: v.float().pow(2).mean() for t, v in model(image).items()}))
    balancer.load_state_dict(balancer.state_dict())


def test_task_specs_are_complete_and_consistent():
    assert set(TASKS) == set(TASK_NAMES)
    for name, spec in TASKS.items():
        assert spec.name == name and spec.primary_metric.startswith(f"{name}/")
        assert spec.validation_metric.startswith(f"{name}/")
        assert spec.fill == (IGNORE if spec.ignore is not None else 0)
        assert spec.is_class_map or spec.target_channels in (1, 3)
    for dataset, tasks in DATASET_TASKS.items():
        assert all(TASKS[t].num_outputs(dataset) >= 1 for t in tasks)


def _python_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "tasks.py" or p.parent != PACKAGE)


def _task_name_constants(node: ast.AST) -> list[str]:
    """Task names written as string constants in `node` (a tuple/list/set of them counts too)."""
    values = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [v.value for v in values if isinstance(v, ast.Constant) and v.value in TASK_NAMES]


def test_no_module_but_tasks_py_branches_on_a_task_name():
    found = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [n for side in [node.left, *node.comparators] for n in _task_name_constants(side)]
                if names:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} compares with {names}")
    assert not found, "task names are TaskSpec's business (mtbench/tasks.py):\n" + "\n".join(found)


def test_no_ignore_value_literal_outside_tasks_py():
    """255 as the ignore value (compared with, filled in, named IGNORE/FILL) is written only in tasks.py."""
    found = []
    for path in _python_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            uses = []
            if isinstance(node, ast.Compare):
                uses = [node.left, *node.comparators]
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and any(w in t.id.upper() for w in ("IGNORE", "FILL", "VOID"))
                    for t in node.targets):
                uses = [node.value]
            elif isinstance(node, ast.keyword) and node.arg and "ignore" in node.arg:
                uses = [node.value]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("full", "full_like", "fill_"):
                uses = node.args
            if any(isinstance(u, ast.Constant) and u.value == IGNORE for u in uses):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, "the ignore value comes from mtbench.tasks (IGNORE, TaskSpec.ignore/fill):\n" + "\n".join(found)


def _modules_after(code: str) -> set[str]:
    """The mtbench modules a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(m for m in sys.modules if m.startswith('mtbench')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


@pytest.mark.parametrize(("code", "forbidden"), [
    ("import mtbench.data", ("mtbench.metrics", "mtbench.losses", "mtbench.engine")),
    ("import mtbench.metrics", ("mtbench.losses", "mtbench.engine", "mtbench.data")),
    ("import mtbench.report, mtbench.report.figures, mtbench.report.tables; from mtbench.sweep import search",
     ("mtbench.engine",)),
])
def test_layers_import_downwards_only(code, forbidden):
    loaded = _modules_after(code)
    assert not [m for m in loaded if m.startswith(forbidden)], sorted(loaded)
