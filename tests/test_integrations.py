"""Each third-party integration sits behind one module (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import mtbench

OWNERS = {"mlflow": "tracking.py", "optuna": "sweep/search.py", "submitit": "sweep/launchers.py",
          "fvcore": "profiling.py", "timm": "models/backbones.py"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_integrations_are_imported_by_their_one_module():
    package = Path(mtbench.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        for lib in imported_roots(path) & set(OWNERS):
            if rel != OWNERS[lib]:
                offenders.append(f"{rel} imports {lib}")
    assert offenders == []
