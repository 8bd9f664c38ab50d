"""NYUD-v2 (semseg 40 classes, depth, normals, edge) from either archive the field uses.

Two incompatible archives circulate (../shared PROTOCOLS.md, "Datasets"); the loader detects which one
a root holds from its file types and records it as the dataset variant:
- `NYUD_MT` (MTI-Net, ATRC since 2023): images .jpg, normals and edge .npy (used as stored).
- `NYUDv2` (ATRC's 2021 release, DeMT, InvPT): images .png, normals .png (2x/255 - 1), edge .png (/255).
Both: `segmentation/<id>.png` (0 = void -> IGNORE, class k -> k - 1), `depth/<id>.npy` (metres, 0 =
invalid), `gt_sets/{train,val}.txt`. The val split (654 images) is the set papers report, so the
`test` split reads it too. The older ASTMT `NYUD_MT` archive (.mat labels, 41 classes) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mtbench.data.transforms import build_transform
from mtbench.data.tree import (
    Decoder,
    FileSpec,
    Source,
    TreeDataset,
    check_root,
    drop_missing,
    load,
    read_npy,
    read_png,
    read_rgb,
    read_split,
    split_file,
)
from mtbench.errors import MtbenchError
from mtbench.registry import DATASETS
from mtbench.tasks import IGNORE, get_task, resolve_tasks

NUM_CLASSES = get_task("semseg").num_outputs("nyud")

VARIANTS: dict[str, dict[str, FileSpec]] = {
    "NYUD_MT": {"image": FileSpec("images", ".jpg", read_rgb), "semseg": FileSpec("segmentation", ".png", read_png),
                "depth": FileSpec("depth", ".npy", read_npy), "normals": FileSpec("normals", ".npy", read_npy),
                "edge": FileSpec("edge", ".npy", read_npy)},
    "NYUDv2": {"image": FileSpec("images", ".png", read_rgb), "semseg": FileSpec("segmentation", ".png", read_png),
               "depth": FileSpec("depth", ".npy", read_npy), "normals": FileSpec("normals", ".png", read_png),
               "edge": FileSpec("edge", ".png", read_png)},
}


def detect_variant(root: Path) -> str:
    """Which NYUD archive `root` holds, from the file types of its first training id."""
    if (root / "JPEGImages").is_dir() or (root / "ImageSets" / "Context").is_dir():
        raise MtbenchError(f"nyud: {root} holds a PASCAL-Context tree (JPEGImages/, ImageSets/Context/); "
                           "use dataset.name: pascal_context, or point dataset.root at the NYUD-v2 folder.")
    for sub in ("NYUD_MT", "NYUDv2"):
        if (root / sub / "gt_sets").is_dir() and not (root / "gt_sets").is_dir():
            raise MtbenchError(f"nyud: {root} holds the archive in a subfolder; set dataset.root to {root / sub}.")
    first = read_split(root / "gt_sets" / "train.txt", "nyud", root)[0]
    if (root / "segmentation" / f"{first}.mat").is_file():
        raise MtbenchError(f"nyud: {root} is the ASTMT `NYUD_MT` archive (segmentation/*.mat, 41 classes), which "
                           "no published multi-task table uses; download the MTI-Net/ATRC NYUD_MT archive or "
                           "ATRC's NYUDv2 archive (README 'Datasets').")
    found = {key: [ext for ext in (".jpg", ".png", ".npy") if (root / folder / f"{first}{ext}").is_file()]
             for key, folder in (("image", "images"), ("normals", "normals"), ("edge", "edge"))}
    for variant, specs in VARIANTS.items():
        if all(specs[key].ext in exts for key, exts in found.items() if exts):
            if found["image"]:
                return variant
    seen = ", ".join(f"{key}: {'/'.join(exts) or 'no file'}" for key, exts in found.items())
    raise MtbenchError(f"nyud: cannot tell which archive {root} holds from sample {first!r} ({seen}). NYUD_MT has "
                       "images .jpg + normals/edge .npy, NYUDv2 images .png + normals/edge .png; run "
                       f"`mtbench data check nyud --root {root}`.")


def decode_semseg(value: Any, src: Source) -> np.ndarray:
    """Segmentation PNG: 0 = void -> IGNORE, class k (1..NUM_CLASSES) -> k - 1."""
    src.check_shape(value, None)
    src.check_range(value, f"0 = void, 1..{NUM_CLASSES}", value <= NUM_CLASSES)
    return np.where(value == 0, IGNORE, value.astype(np.int64) - 1).astype(np.uint8)


def decode_depth(value: Any, src: Source) -> np.ndarray:
    """Depth .npy: finite metres, 0 = invalid."""
    value = np.asarray(value, dtype=np.float32).squeeze()
    src.check_shape(value, None)
    src.check_range(value, "finite metres >= 0", np.isfinite(value) & (value >= 0))
    return value


def decode_normals(value: Any, src: Source) -> np.ndarray:
    """Normals .npy (H, W, 3), used as stored."""
    value = np.asarray(value, dtype=np.float32)
    src.check_shape(value, 3)
    src.check_range(value, "finite, |n| <= 1", np.isfinite(value) & (np.abs(value) <= 1.001))
    return value


def decode_normals_png(value: Any, src: Source) -> np.ndarray:
    """Normals PNG (H, W, 3) uint8, decoded as 2x/255 - 1."""
    src.check_shape(value, 3)
    return decode_normals(value.astype(np.float32) * (2.0 / 255.0) - 1.0, src)


def decode_edge(value: Any, src: Source) -> np.ndarray:
    """Edge .npy in [0, 1]."""
    value = np.asarray(value, np.float32).squeeze()
    src.check_shape(value, None)
    src.check_range(value, "0..1", (value >= 0) & (value <= 1))
    return value


def decode_edge_png(value: Any, src: Source) -> np.ndarray:
    """Edge PNG uint8 0/255, decoded as x/255."""
    return decode_edge(value.astype(np.float32) / 255.0, src)


# How each task's file of a variant becomes its raw array (the files are VARIANTS').
DECODERS: dict[str, dict[str, Decoder]] = {
    "NYUD_MT": {"semseg": decode_semseg, "depth": decode_depth, "normals": decode_normals, "edge": decode_edge},
    "NYUDv2": {"semseg": decode_semseg, "depth": decode_depth, "normals": decode_normals_png,
               "edge": decode_edge_png},
}


def read_sample(root: Path, variant: str, tasks: Sequence[str], sample_id: str) -> dict[str, np.ndarray]:
    """Raw arrays of one id, converted per PROTOCOLS.md and checked (shape, legal values)."""
    specs = VARIANTS[variant]
    rgb = load(specs["image"].path(root, sample_id), specs["image"].read, sample_id)
    raw = {"rgb": rgb}
    for task in tasks:
        path = specs[task].path(root, sample_id)
        value = load(path, specs[task].read, sample_id)
        raw[task] = DECODERS[variant][task](value, Source(sample_id, path, rgb.shape[:2]))
    return raw


def missing_files(root: Path, variant: str, tasks: Sequence[str], ids: Sequence[str]) -> dict[str, list[str]]:
    """Ids whose image or task file is absent, per key."""
    specs = VARIANTS[variant]
    return {key: missing for key in ("image", *tasks)
            if (missing := [i for i in ids if not specs[key].path(root, i).is_file()])}


@DATASETS.register("nyud")
def nyud(*, root: str | Path | None = None, split: str, tasks: Sequence[str] | None = None,
         protocol: str | None = None, crop_size: Sequence[int] | None = None, pad_to: Sequence[int] | None = None,
         skip_missing: bool = False) -> TreeDataset:
    """NYUD-v2 from `root` (either archive, detected). `protocol`: None (ground truth as stored), `atrc`
    or `mtinet` (mtbench.data.transforms); `crop_size`/`pad_to` override the preset's sizes. With
    `skip_missing`, ids lacking a file are dropped and listed (`dataset.skipped`); else an error.
    """
    path = check_root(root, "nyud")
    split_name = split_file("nyud", split)
    task_tuple = tuple(resolve_tasks("nyud", None if tasks is None else list(tasks)))
    variant = detect_variant(path)
    ids = read_split(path / "gt_sets" / f"{split_name}.txt", "nyud", path)
    ids, skipped = drop_missing(ids, missing_files(path, variant, task_tuple, ids), skip=skip_missing,
                                dataset="nyud", variant=variant, split=split, root=path,
                                example=lambda key, i: VARIANTS[variant][key].path(path, i))
    first = load(VARIANTS[variant]["image"].path(path, ids[0]), read_rgb, ids[0])  # a corrupt image: one message
    image_size = "x".join(map(str, first.shape[:2]))
    transform = build_transform(protocol, family="nyud", train=split == "train",
                                crop_size=tuple(crop_size) if crop_size else None,
                                pad_to=tuple(pad_to) if pad_to else None)
    return TreeDataset(name="nyud", root=path, split=split, tasks=task_tuple, ids=ids,
                       read_raw=partial(read_sample, path, variant, task_tuple), transform=transform,
                       variant=variant, image_size=image_size, skipped=skipped)
