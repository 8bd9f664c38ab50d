"""Published reference rows (package data `mtbench/report/data/published_results.yaml`, BibTeX in
`references.bib` beside it): Δm references and rows for result tables.

A row is named `paper/dataset/backbone` (`paper/dataset` when the backbone is unknown), with `/model` appended
when that name is already taken (e.g. `DeMT/nyud/Swin-T`, `ATRC/nyud`, `InvPT/pascal/ViT-L/InvPT (released ckpt)`).

Every row carries, as data, the dataset variant (archive) the paper's code read and, per task, the mtbench meter
variant that reproduces how the paper's released code computed the number. Its `metrics` are keyed by the name
mtbench logs for that variant (`mtbench.metrics.variant_metric_name`): InvPT's saliency is `sal/maxF-invpt`,
DeMT's `sal/maxF`. So a published number only meets a run's number when both were computed the same way, and
`incomparability` says why a row may not join a table.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from mtbench.errors import MtbenchError
from mtbench.metrics import build_meter, split_metric_name, variant_metric_name

# Package data (read through importlib.resources, so it works from a wheel or a zip as well as a checkout):
# the published rows and the BibTeX entries of their `cite` keys.
DATA = resources.files("mtbench.report") / "data"
DEFAULT_PATH: Traversable = DATA / "published_results.yaml"
BIB_PATH: Traversable = DATA / "references.bib"
# A published-results file: a path, or a resource (`DEFAULT_PATH`, `DATA / name`).
Source = str | os.PathLike[str] | Traversable
# YAML metric column -> mtbench metric key of the reference definition (units already match: percent, metres,
# degrees). The logged name adds the row's meter variant for the task.
METRIC_KEYS = {"semseg_miou": "semseg/mIoU", "parts_miou": "human_parts/mIoU", "sal_maxf": "sal/maxF",
               "depth_rmse": "depth/rmse", "normals_mean": "normals/mean", "edge_odsf": "edge/odsF"}
# Row dataset -> the mtbench dataset its meters are built for.
MTBENCH_DATASET = {"nyud": "nyud", "pascal": "pascal_context"}
# Names `published_rows` accepts -> row dataset.
DATASET_NAMES = {"nyud": "nyud", "pascal": "pascal", "pascal_context": "pascal"}
# The archives each dataset's rows may name (mtbench.data records the same names with every run).
DATASET_VARIANTS = {"nyud": ("NYUDv2", "NYUD_MT"), "pascal": ("PASCAL_MT",)}
TRUST_LEVELS = ("high", "medium")
# variant_trust: absent = read from the released code; "uncertain" = the code did not settle it, and the notes
# give the reason after UNCERTAIN_MARK.
UNCERTAIN = "uncertain"
UNCERTAIN_MARK = "Variants uncertain:"
_REQUIRED = ("paper", "model", "dataset", "dataset_variant", "cite", "source", "trust", "metrics", "metric_variants")


@dataclass(frozen=True)
class PublishedRow:
    """One published result: the numbers, where they come from, and how they were computed.

    `metrics` maps mtbench's logged metric names (`sal/maxF-invpt`) to the published values; `metric_variants`
    maps each task with a number to its meter variant (`sal: invpt`). `caveat` is None unless the variants
    could not be settled from the released code (`variant_trust: uncertain`); then it says why.
    """

    name: str
    paper: str
    model: str
    backbone: str | None
    dataset: str  # 'nyud' or 'pascal'
    dataset_variant: str
    cite: str
    source: str
    trust: str
    params_m: float | None
    gflops: float | None
    input_size: str | None
    metrics: dict[str, float]
    metric_variants: dict[str, str]
    notes: str | None
    caveat: str | None = None


@cache
def logged_metric_name(key: str, dataset: str, variant: str) -> str:
    """Return the name mtbench logs for metric `key` ('task/metric') of a row `dataset` under meter `variant`.

    E.g. ('sal/maxF', 'pascal', 'invpt') -> 'sal/maxF-invpt'; ('sal/maxF', 'pascal', 'atrc') -> 'sal/maxF'
    (an alias of the reference); ('edge/odsF', 'nyud', 'odsf_nms') -> 'edge/odsF'.
    """
    task = key.split("/", 1)[0]
    meter = build_meter(task, dataset=MTBENCH_DATASET[dataset], variant=variant)
    return variant_metric_name(key, meter.metric_variant)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _row(entry: dict[str, Any], name: str, where: str) -> PublishedRow:
    """Check one YAML entry and build its row; `where` names the entry in errors."""
    missing = [k for k in _REQUIRED if entry.get(k) is None]
    if missing:
        raise MtbenchError(f"{where}: missing {', '.join(missing)} (see the header of the file).")
    dataset = entry["dataset"]
    if dataset not in DATASET_VARIANTS:
        raise MtbenchError(f"{where}: dataset {dataset!r} is not one of {', '.join(DATASET_VARIANTS)}.")
    if entry["dataset_variant"] not in DATASET_VARIANTS[dataset]:
        raise MtbenchError(f"{where}: dataset_variant {entry['dataset_variant']!r} is not an archive of {dataset} "
                           f"({', '.join(DATASET_VARIANTS[dataset])}).")
    if entry["trust"] not in TRUST_LEVELS:
        raise MtbenchError(f"{where}: trust {entry['trust']!r} is not one of {', '.join(TRUST_LEVELS)}.")
    unknown = sorted(set(entry["metrics"]) - set(METRIC_KEYS))
    if unknown:
        raise MtbenchError(f"{where}: unknown metric column(s) {', '.join(unknown)}; known: {', '.join(METRIC_KEYS)}.")
    values = {METRIC_KEYS[c]: float(v) for c, v in entry["metrics"].items() if v is not None}
    variants = {str(t): str(v) for t, v in entry["metric_variants"].items()}
    tasks = {key.split("/", 1)[0] for key in values}
    if set(variants) != tasks:
        raise MtbenchError(f"{where}: metric_variants must name exactly the tasks with a number "
                           f"({', '.join(sorted(tasks))}); it names {', '.join(sorted(variants)) or 'none'}.")
    try:
        metrics = {logged_metric_name(key, dataset, variants[key.split("/", 1)[0]]): v for key, v in values.items()}
    except MtbenchError as err:
        raise MtbenchError(f"{where}: {err}") from None
    notes = entry.get("notes")
    caveat = None
    if entry.get("variant_trust") is not None:
        if entry["variant_trust"] != UNCERTAIN:
            raise MtbenchError(f"{where}: variant_trust is {UNCERTAIN!r} or absent; got {entry['variant_trust']!r}.")
        if not notes or UNCERTAIN_MARK not in notes:
            raise MtbenchError(f"{where}: variant_trust {UNCERTAIN} needs the reason in notes, after "
                               f"{UNCERTAIN_MARK!r}.")
        caveat = "metric variants uncertain: " + notes.split(UNCERTAIN_MARK, 1)[1].strip()
    backbone = entry.get("backbone")
    return PublishedRow(
        name=name, paper=str(entry["paper"]), model=str(entry["model"]),
        backbone=None if backbone is None else str(backbone), dataset=dataset,
        dataset_variant=entry["dataset_variant"], cite=str(entry["cite"]), source=str(entry["source"]),
        trust=entry["trust"], params_m=_optional_float(entry.get("params_M")),
        gflops=_optional_float(entry.get("gflops")), input_size=entry.get("input_size"), metrics=metrics,
        metric_variants=variants, notes=notes, caveat=caveat)


def references_bib() -> str:
    """Return the BibTeX entries (one per paper) for the `cite` keys of the published rows."""
    return BIB_PATH.read_text(encoding="utf-8")


def load_published(path: Source = DEFAULT_PATH) -> dict[str, PublishedRow]:
    """Return every published row keyed by its name, after checking each entry.

    `path` is a file in the same format; the default is the file shipped with mtbench (`DEFAULT_PATH`).
    """
    if isinstance(path, str | os.PathLike):
        path = Path(path)
    if not path.is_file():
        where = " (package data of mtbench: reinstall it)" if path == DEFAULT_PATH else ""
        raise MtbenchError(f"published results file {str(path)!r} not found{where}.")
    rows: dict[str, PublishedRow] = {}
    for i, entry in enumerate(yaml.safe_load(path.read_text(encoding="utf-8"))["entries"]):
        base = "/".join(str(entry[k]) for k in ("paper", "dataset", "backbone") if entry.get(k))
        name = base if base not in rows else f"{base}/{entry.get('model')}"
        where = f"{path.name}: entry {i} ({name})"
        if name in rows:
            raise MtbenchError(f"{where}: a row of that name already exists; give the entries distinct models.")
        rows[name] = _row(entry, name, where)
    return rows


def published_row(name: str, path: Source = DEFAULT_PATH) -> PublishedRow:
    """Return the published row `name`, or a clear error with the closest names."""
    rows = load_published(path)
    if name not in rows:
        close = difflib.get_close_matches(name, list(rows), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise MtbenchError(f"no published row {name!r}.{hint} Rows: {', '.join(rows)}.")
    return rows[name]


def published_rows(dataset: str, path: Source = DEFAULT_PATH) -> list[PublishedRow]:
    """Return the published rows of `dataset` ('nyud', 'pascal' or 'pascal_context'), in file order."""
    if dataset not in DATASET_NAMES:
        close = difflib.get_close_matches(dataset, list(DATASET_NAMES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MtbenchError(f"no published rows for dataset {dataset!r}{hint}; valid: {', '.join(DATASET_NAMES)}.")
    return [row for row in load_published(path).values() if row.dataset == DATASET_NAMES[dataset]]


def incomparability(row: PublishedRow, dataset_variant: str, metric_keys: Sequence[str]) -> str | None:
    """Return why `row` cannot sit in a table of runs on archive `dataset_variant` showing `metric_keys`, or None.

    `metric_keys` are the table's metric columns as mtbench logs them (`sal/maxF-invpt`). The row fits when
    its dataset variant is the runs' and, for every metric the row and the table both have (same
    `task/metric`), the row's number was computed by the same meter variant, i.e. has the column's exact name.
    A task the row lacks leaves its cell empty; a row sharing no column with the table does not fit.
    `row.caveat` still applies to a row that fits.
    """
    if row.dataset_variant != dataset_variant:
        return f"dataset variant {row.dataset_variant}, the runs used {dataset_variant}"
    shown: dict[str, list[str]] = {}
    for name in dict.fromkeys(metric_keys):
        shown.setdefault(split_metric_name(name)[0], []).append(name)
    reasons: list[str] = []
    common = False
    for name in row.metrics:
        key = split_metric_name(name)[0]
        if key not in shown:
            continue
        if name in shown[key]:
            common = True
            continue
        task = key.split("/", 1)[0]
        reasons.append(f"{task}: the row's number is {name} ({task} meter `{row.metric_variants[task]}`), the "
                       f"table shows {' and '.join(shown[key])}")
    if reasons:
        return "; ".join(reasons)
    if not common:
        return (f"no metric in common: the row reports {', '.join(row.metrics)}, the table shows "
                f"{', '.join(metric_keys) or 'none'}")
    return None
