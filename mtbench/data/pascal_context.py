"""PASCAL-Context with its five multi-task labels (semseg 21, human_parts 7, sal, normals, edge).

Tree (`PASCAL_MT` / ATRC's `PASCALContext`, ../shared PROTOCOLS.md "Datasets"), each task from its own
annotation file, converted as the ATRC / MTI-Net loaders do (`src/data/pascal_context.py`):
- semseg: `semseg/VOC12/<id>.png` if present, else `semseg/pascal-context/<id>.png`; 0..20, void = IGNORE.
- human_parts: `human_parts/<id>.mat` (PASCAL-Part `anno`): person objects (class 15) with parts, part
  names mapped to head / torso / upper arm / lower arm (+hand) / upper leg / lower leg (`HUMAN_PARTS`);
  later parts overwrite earlier ones; an image with no person part is ignored for the task (all IGNORE).
- sal: `sal_distill/<id>.png` / 255 > 0.5.
- normals: `normals_distill/<id>.png` decoded 2x/255 - 1, kept only on pixels whose Context class
  (`pascal-context/trainval/<id>.mat`, `LabelMap`) is NYU-compatible (`NORMALS_CLASSES`), else zero
  (= invalid).
- edge: boundaries of the LabelMap: the 3x3 Laplacian (reflected border) is non-zero, then thinned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from mtbench.data.transforms import build_transform
from mtbench.data.tree import (
    BadSampleError,
    FileSpec,
    Source,
    TreeDataset,
    check_root,
    check_shape,
    drop_missing,
    load,
    read_mat,
    read_png,
    read_rgb,
    read_split,
    split_file,
)
from mtbench.errors import MtbenchError
from mtbench.registry import DATASETS
from mtbench.tasks import IGNORE, get_task, resolve_tasks
from mtbench.thinning import thin

NUM_CLASSES = get_task("semseg").num_outputs("pascal_context")
PERSON = 15
# PASCAL-Part person part names -> the 6 human parts (ATRC/MTI-Net `HUMAN_PART[6]`); 0 = background.
HUMAN_PARTS = {
    **dict.fromkeys(("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"), 1),
    **dict.fromkeys(("neck", "torso"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}

FILES: dict[str, FileSpec] = {
    "image": FileSpec("JPEGImages", ".jpg", read_rgb),
    "semseg": FileSpec("semseg/pascal-context", ".png", read_png),
    "human_parts": FileSpec("human_parts", ".mat", read_mat),
    "sal": FileSpec("sal_distill", ".png", read_png),
    "normals": FileSpec("normals_distill", ".png", read_png),
    "labelmap": FileSpec("pascal-context/trainval", ".mat", read_mat),
}
# Files read instead of FILES[key] where they exist (ATRC prefers the VOC12 semseg where an id has one).
PREFERRED_FILES: dict[str, FileSpec] = {"semseg": FileSpec("semseg/VOC12", ".png", read_png)}
# What each task reads besides the image.
TASK_FILES = {"semseg": ("semseg",), "human_parts": ("human_parts",), "sal": ("sal",),
              "normals": ("normals", "labelmap"), "edge": ("labelmap",)}


def _distilled_hint(key: str) -> str:
    return (f"this copy of PASCAL-Context lacks the distilled {key} (some re-uploads do); get the full PASCAL_MT "
            f"archive, or leave '{key}' out of dataset.tasks")


# What a key's folder missing for every id means (`mtbench data check`): some re-uploads lack the distilled labels.
MISSING_HINTS = {"normals": _distilled_hint("normals"), "sal": _distilled_hint("sal")}


def normals_classes() -> frozenset[int]:
    """Context ids whose class name is also an NYU class, plus tvmonitor (as ATRC: 170 ids)."""
    lists = resources.files("mtbench.data") / "class_lists"
    nyu = json.loads((lists / "nyu_classes.json").read_text())
    context = json.loads((lists / "context_classes.json").read_text())
    return frozenset([context[name] for name in nyu if name in context and name != "unknown"]
                     + [context["tvmonitor"]])


NORMALS_CLASSES = normals_classes()


def file_spec(root: Path, key: str, sample_id: str) -> FileSpec:
    """Where `key` of `sample_id` is read from: its PREFERRED_FILES entry if that file exists, else FILES'."""
    preferred = PREFERRED_FILES.get(key)
    return preferred if preferred is not None and preferred.path(root, sample_id).is_file() else FILES[key]


def human_parts_map(anno: dict[str, Any], size: tuple[int, int], sample_id: str, path: Path) -> np.ndarray:
    """The 7-class parts map of a PASCAL-Part `anno` struct; all IGNORE when no person has parts."""
    target = np.zeros(size, dtype=np.uint8)
    found = False
    try:
        objects = anno["anno"][0][0][1][0]
        for obj in objects:
            if int(obj[1][0][0]) != PERSON or obj[3].size == 0:
                continue
            for part in obj[3][0]:
                name, mask = str(part[0][0]), np.asarray(part[1]).astype(bool)
                if name not in HUMAN_PARTS:
                    raise BadSampleError(f"sample {sample_id!r}: {path} has person part {name!r}, not a "
                                         f"PASCAL-Part person part ({', '.join(sorted(HUMAN_PARTS))}).")
                check_shape(sample_id, path, mask, size, None)
                target[mask] = HUMAN_PARTS[name]
                found = True
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise BadSampleError(f"sample {sample_id!r}: {path} is not a PASCAL-Part annotation (anno -> objects -> "
                             f"class, class_ind, mask, parts): {type(err).__name__}: {err}.") from None
    return target if found else np.full(size, IGNORE, dtype=np.uint8)


def label_boundaries(labelmap: np.ndarray) -> np.ndarray:
    """Training edges: where the 3x3 Laplacian of the LabelMap is non-zero (border reflected as OpenCV's
    default), thinned to one pixel (ATRC / MTI-Net `_load_edge`)."""
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    lap = ndimage.convolve(labelmap.astype(np.float64), kernel, mode="mirror")
    return thin(lap != 0).astype(np.float32)


@dataclass(frozen=True)
class Reading:
    """One id being read: the tree, the id, the image size and, when a task reads it, the Context LabelMap."""

    root: Path
    sample_id: str
    size: tuple[int, int]
    labelmap: np.ndarray | None

    def load(self, key: str) -> tuple[Any, Source]:
        """The file of `key` (see `file_spec`), read, and where it came from."""
        spec = file_spec(self.root, key, self.sample_id)
        path = spec.path(self.root, self.sample_id)
        return load(path, spec.read, self.sample_id), Source(self.sample_id, path, self.size)

    def context_labels(self) -> np.ndarray:
        """The LabelMap; read_sample loads it for every task whose TASK_FILES hold 'labelmap'."""
        if self.labelmap is None:
            raise ValueError(f"sample {self.sample_id!r}: the LabelMap was not read (TASK_FILES lacks 'labelmap')")
        return self.labelmap


def read_labelmap(root: Path, sample_id: str, size: tuple[int, int]) -> np.ndarray:
    """The 459-class Context `LabelMap` of one id, checked to have the image's size."""
    path = FILES["labelmap"].path(root, sample_id)
    mat = load(path, read_mat, sample_id)
    if "LabelMap" not in mat:
        raise BadSampleError(f"sample {sample_id!r}: {path} has no 'LabelMap' (keys: "
                             f"{', '.join(k for k in mat if not k.startswith('__'))}).")
    labelmap = np.asarray(mat["LabelMap"])
    check_shape(sample_id, path, labelmap, size, None)
    return labelmap


def decode_semseg(r: Reading) -> np.ndarray:
    """VOC class ids 0..NUM_CLASSES - 1, void kept as IGNORE."""
    value, src = r.load("semseg")
    src.check_shape(value, None)
    src.check_range(value, f"0..{NUM_CLASSES - 1} or {IGNORE}", (value < NUM_CLASSES) | (value == IGNORE))
    return value.astype(np.uint8)


def decode_human_parts(r: Reading) -> np.ndarray:
    """The PASCAL-Part person parts as 7 classes (`human_parts_map`)."""
    anno, src = r.load("human_parts")
    return human_parts_map(anno, r.size, r.sample_id, src.path)


def decode_sal(r: Reading) -> np.ndarray:
    """Distilled saliency: x/255 > 0.5 (the first channel of an RGB file)."""
    value, src = r.load("sal")
    value = value[..., 0] if value.ndim == 3 else value
    src.check_shape(value, None)
    return (value.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)


def decode_normals(r: Reading) -> np.ndarray:
    """Distilled normals 2x/255 - 1, zero (invalid) where the Context class is not NYU-compatible."""
    value, src = r.load("normals")
    src.check_shape(value, 3)
    normals = value.astype(np.float32) * (2.0 / 255.0) - 1.0
    keep = np.isin(r.context_labels(), list(NORMALS_CLASSES))
    return np.where(keep[..., None], normals, 0.0).astype(np.float32)


def decode_edge(r: Reading) -> np.ndarray:
    """Training edges: the thinned boundaries of the LabelMap."""
    return label_boundaries(r.context_labels())


# How each task's raw array is made from the files it reads (TASK_FILES).
DECODERS: dict[str, Callable[[Reading], np.ndarray]] = {
    "semseg": decode_semseg, "human_parts": decode_human_parts, "sal": decode_sal, "normals": decode_normals,
    "edge": decode_edge}


def read_sample(root: Path, tasks: Sequence[str], sample_id: str) -> dict[str, np.ndarray]:
    """Raw arrays of one id, converted per PROTOCOLS.md and checked (shape, legal values)."""
    rgb = load(FILES["image"].path(root, sample_id), read_rgb, sample_id)
    size = rgb.shape[:2]
    needs_labelmap = any("labelmap" in TASK_FILES[t] for t in tasks)
    reading = Reading(root, sample_id, size, read_labelmap(root, sample_id, size) if needs_labelmap else None)
    raw: dict[str, np.ndarray] = {"rgb": rgb}
    for task in tasks:
        raw[task] = DECODERS[task](reading)
    return raw


def task_paths(root: Path, task: str, sample_id: str) -> list[Path]:
    """The files `task` reads for `sample_id` (semseg: VOC12 if present, else pascal-context)."""
    return [file_spec(root, key, sample_id).path(root, sample_id) for key in TASK_FILES[task]]


def missing_files(root: Path, tasks: Sequence[str], ids: Sequence[str]) -> dict[str, list[str]]:
    """Ids whose image or task file is absent, per key (a folder name)."""
    out: dict[str, list[str]] = {}
    keys = ["image"] + [k for t in tasks for k in TASK_FILES[t]]
    for key in dict.fromkeys(keys):
        absent = [i for i in ids if not file_spec(root, key, i).path(root, i).is_file()]
        if absent:
            out[key] = absent
    return out


def check_layout(root: Path) -> None:
    """Refuse a root that is clearly not a PASCAL-Context tree, saying what it is instead."""
    if (root / "gt_sets").is_dir() and (root / "segmentation").is_dir():
        raise MtbenchError(f"pascal_context: {root} holds a NYUD-v2 tree (gt_sets/, segmentation/); use "
                           "dataset.name: nyud, or point dataset.root at the PASCAL-Context folder.")
    for sub in ("PASCAL_MT", "PASCALContext"):
        if (root / sub / "JPEGImages").is_dir() and not (root / "JPEGImages").is_dir():
            raise MtbenchError(f"pascal_context: {root} holds the archive in a subfolder; set dataset.root to "
                               f"{root / sub}.")


@DATASETS.register("pascal_context")
def pascal_context(*, root: str | Path | None = None, split: str, tasks: Sequence[str] | None = None,
                   protocol: str | None = None, crop_size: Sequence[int] | None = None,
                   pad_to: Sequence[int] | None = None, skip_missing: bool = False) -> TreeDataset:
    """PASCAL-Context from `root`. Options as for `nyud`; `test` reads the val split (5,105 images)."""
    path = check_root(root, "pascal_context")
    check_layout(path)
    split_name = split_file("pascal_context", split)
    task_tuple = tuple(resolve_tasks("pascal_context", None if tasks is None else list(tasks)))
    ids = read_split(path / "ImageSets" / "Context" / f"{split_name}.txt", "pascal_context", path)
    ids, skipped = drop_missing(ids, missing_files(path, task_tuple, ids), skip=skip_missing,
                                dataset="pascal_context", split=split, root=path,
                                example=lambda key, i: file_spec(path, key, i).path(path, i))
    transform = build_transform(protocol, family="pascal_context", train=split == "train",
                                crop_size=tuple(crop_size) if crop_size else None,
                                pad_to=tuple(pad_to) if pad_to else None)
    return TreeDataset(name="pascal_context", root=path, split=split, tasks=task_tuple, ids=ids,
                       read_raw=partial(read_sample, path, task_tuple), transform=transform, variant="PASCAL_MT",
                       image_size="varies", skipped=skipped)
