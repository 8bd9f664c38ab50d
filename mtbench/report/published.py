"""Published reference rows (baselines/published_results.yaml) as Δm references.

A row is named `paper/dataset/backbone`, optionally with `/model` when a paper has several models
on one backbone (e.g. `DeMT/nyud/Swin-T`, `InvPT/pascal/ViT-L/InvPT (released ckpt)`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

import mtbench
from mtbench.errors import MtbenchError

DEFAULT_PATH = Path(mtbench.__file__).resolve().parents[1] / "baselines" / "published_results.yaml"
# Column names of the YAML -> mtbench metric keys (units already match: percent, metres, degrees).
METRIC_KEYS = {"semseg_miou": "semseg/mIoU", "parts_miou": "human_parts/mIoU", "sal_maxf": "sal/maxF",
               "depth_rmse": "depth/rmse", "normals_mean": "normals/mean", "edge_odsf": "edge/odsF"}


@dataclass(frozen=True)
class PublishedRow:
    name: str
    source: str
    trust: str
    metrics: dict[str, float]


def load_published(path: Path = DEFAULT_PATH) -> dict[str, PublishedRow]:
    """Return every published row keyed by its name."""
    if not path.is_file():
        raise MtbenchError(f"published results file {str(path)!r} not found; it ships in baselines/ of the "
                           "mtbench checkout.")
    rows: dict[str, PublishedRow] = {}
    for entry in yaml.safe_load(path.read_text())["entries"]:
        base = "/".join(str(entry[k]) for k in ("paper", "dataset", "backbone") if entry.get(k))
        name = base if base not in rows else f"{base}/{entry['model']}"
        metrics = {METRIC_KEYS[k]: float(v) for k, v in entry["metrics"].items() if v is not None}
        rows[name] = PublishedRow(name, entry["source"], entry["trust"], metrics)
    return rows


def published_row(name: str, path: Path = DEFAULT_PATH) -> PublishedRow:
    """Return the published row `name`, or a clear error with the closest names."""
    rows = load_published(path)
    if name not in rows:
        close = difflib.get_close_matches(name, list(rows), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise MtbenchError(f"no published row {name!r}.{hint} Rows: {', '.join(rows)}.")
    return rows[name]
