"""mtbench works as an installed package, not only as an editable checkout: its data files are package data.

The slow test builds a wheel of the checkout offline, installs it into a fresh venv (system site-packages
visible, so torch & co. come from this machine) and runs it from a folder outside the source tree: the CLI
starts, `mtbench` is imported from the venv (not the checkout that the editable install of the test
environment points at), and the published rows and their BibTeX load through the package API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

import mtbench
from mtbench import report
from mtbench.report import published

REPO = Path(__file__).resolve().parents[1]
# Files the wheel must carry (pyproject.toml [tool.setuptools.package-data]).
WHEEL_DATA = ("mtbench/py.typed", "mtbench/report/data/published_results.yaml", "mtbench/report/data/references.bib")
# Run in the venv from outside the checkout: where mtbench and its data come from, and what the data holds.
PROBE = """
import json, sys
import mtbench
from mtbench import report
from mtbench.report.published import DEFAULT_PATH, load_published, published_rows, references_bib
rows = load_published()
bib = references_bib()
json.dump({"mtbench": mtbench.__file__, "rows_file": str(DEFAULT_PATH), "bib_file": str(report.BIB),
           "rows": len(rows), "nyud_rows": len(published_rows("nyud")),
           "cites": sorted({r.cite for r in rows.values()}), "bib": bib,
           "report_bib": report.BIB.read_text(encoding="utf-8"), "sys_path": sys.path}, sys.stdout)
"""


def _env() -> dict[str, str]:
    """This environment without anything that would put the checkout on sys.path or let pip go online."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}


def _run(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_package_data_is_read_through_the_package() -> None:
    package = Path(mtbench.__file__).resolve().parent
    assert Path(str(published.DEFAULT_PATH)).resolve() == package / "report" / "data" / "published_results.yaml"
    assert report.BIB == published.BIB_PATH
    assert Path(str(report.BIB)).resolve() == package / "report" / "data" / "references.bib"
    assert published.references_bib() == report.BIB.read_text(encoding="utf-8")
    assert "@inproceedings{xu2023demt," in published.references_bib()
    # An explicit path, as str or Path, still works.
    assert published.load_published(str(published.DEFAULT_PATH)) == published.load_published()


def test_every_package_data_pattern_matches_a_file() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mtbench"]
    for path in WHEEL_DATA:
        assert any(fnmatch(path.removeprefix("mtbench/"), p) for p in patterns), f"no package-data pattern for {path}"
    for pattern in patterns:
        assert list((REPO / "mtbench").glob(pattern)), f"package-data pattern {pattern!r} matches no file"


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_runs_and_reads_its_data(tmp_path: Path) -> None:
    # Build from a copy: building in place leaves build/ and rewrites mtbench.egg-info in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "mtbench", src / "mtbench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
         cwd=tmp_path)
    (wheel,) = dist.glob("mtbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(WHEEL_DATA) <= names, sorted(set(WHEEL_DATA) - names)
    assert not any(n.startswith(("baselines/", "tests/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python, cli = env_dir / "bin" / "python", env_dir / "bin" / "mtbench"
    # The venv has no pip of its own: the system pip, run by the venv's interpreter, installs into the venv;
    # --ignore-installed so it neither sees nor touches the editable mtbench of the system site-packages.
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel], cwd=tmp_path)
    assert cli.is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert "Usage" in _run([cli, "report", "--help"], cwd=elsewhere).stdout
    assert _run([cli, "list"], cwd=elsewhere).stdout.strip()

    found = json.loads(_run([python, "-c", PROBE], cwd=elsewhere).stdout)
    venv_root, repo = env_dir.resolve(), REPO.resolve()
    for key in ("mtbench", "rows_file", "bib_file"):
        where = Path(found[key]).resolve()
        assert where.is_relative_to(venv_root) and not where.is_relative_to(repo), (key, where, found["sys_path"])
    assert found["rows"] > 0 and found["nyud_rows"] > 0
    assert found["report_bib"] == found["bib"]
    for cite in found["cites"]:
        assert f"{{{cite}," in found["bib"], cite
