"""NYUD-v2 (semseg 40 classes, depth, normals, edge) from either archive the field uses.

Two incompatible archives circulate (../shared PROTOCOLS.md, "Datasets"); the loader detects which one
a root holds from its file types and records it as the dataset variant:
- `NYUD_MT` (MTI-Net, ATRC since 2023): images .jpg, normals and edge .npy (used as stored).
- `NYUDv2` (ATRC's 2021 release, DeMT, InvPT): images .png, normals .png (2x/255 - 1), edge .png (/255).
Both: `segmentation/<id>.png` (0 = void -> 255, class k -> k - 1), `depth/<id>.npy` (metres, 0 =
invalid), `gt_sets/{train,val}.txt`. The val split (654 images) is the set papers report, so the
`test` split reads it too. The older ASTMT `NYUD_MT` archive (.mat labels, 41 classes) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from mtbench.data.transforms import build_transform
from mtbench.data.tree import (
    FileSpec,
    TreeDataset,
    check_range,
    check_root,
    check_shape,
    drop_missing,
    load,
    read_npy,
    read_png,
    read_rgb,
    read_split,
)
from mtbench.errors import MtbenchError
from mtbench.registry import DATASETS
from mtbench.tasks import resolve_tasks

NUM_CLASSES = 40
SPLIT_FILES = {"train": "train", "val": "val", "test": "val"}

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


def read_sample(root: Path, variant: str, tasks: Sequence[str], sample_id: str) -> dict[str, np.ndarray]:
    """Raw arrays of one id, converted per PROTOCOLS.md and checked (shape, legal values)."""
    specs = VARIANTS[variant]
    rgb = load(specs["image"].path(root, sample_id), specs["image"].read, sample_id)
    size = rgb.shape[:2]
    raw = {"rgb": rgb}
    for task in tasks:
        spec = specs[task]
        path = spec.path(root, sample_id)
        value = load(path, spec.read, sample_id)
        if task == "semseg":
            check_shape(sample_id, path, value, size, None)
            check_range(sample_id, path, value, f"0 = void, 1..{NUM_CLASSES}", value <= NUM_CLASSES)
            raw[task] = np.where(value == 0, 255, value.astype(np.int64) - 1).astype(np.uint8)
        elif task == "depth":
            value = np.asarray(value, dtype=np.float32).squeeze()
            check_shape(sample_id, path, value, size, None)
            check_range(sample_id, path, value, "finite metres >= 0", np.isfinite(value) & (value >= 0))
            raw[task] = value
        elif task == "normals":
            if spec.ext == ".png":
                check_shape(sample_id, path, value, size, 3)
                value = value.astype(np.float32) * (2.0 / 255.0) - 1.0
            value = np.asarray(value, dtype=np.float32)
            check_shape(sample_id, path, value, size, 3)
            check_range(sample_id, path, value, "finite, |n| <= 1", np.isfinite(value) & (np.abs(value) <= 1.001))
            raw[task] = value
        elif task == "edge":
            value = value.astype(np.float32) / 255.0 if spec.ext == ".png" else np.asarray(value, np.float32)
            value = value.squeeze()
            check_shape(sample_id, path, value, size, None)
            check_range(sample_id, path, value, "0..1", (value >= 0) & (value <= 1))
            raw[task] = value
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
    if split not in SPLIT_FILES:
        raise MtbenchError(f"nyud: unknown split {split!r}; valid: {', '.join(SPLIT_FILES)} (test reads val.txt, "
                           "the split papers report).")
    task_tuple = tuple(resolve_tasks("nyud", None if tasks is None else list(tasks)))
    variant = detect_variant(path)
    ids = read_split(path / "gt_sets" / f"{SPLIT_FILES[split]}.txt", "nyud", path)
    ids, skipped = drop_missing(ids, missing_files(path, variant, task_tuple, ids), skip=skip_missing,
                                dataset=f"nyud ({variant})", split=split, root=path,
                                example=lambda key, i: VARIANTS[variant][key].path(path, i))
    image_size = "x".join(map(str, read_rgb(VARIANTS[variant]["image"].path(path, ids[0])).shape[:2]))
    transform = build_transform(protocol, family="nyud", train=split == "train",
                                crop_size=tuple(crop_size) if crop_size else None,
                                pad_to=tuple(pad_to) if pad_to else None)
    return TreeDataset(name="nyud", root=path, split=split, tasks=task_tuple, ids=ids,
                       read_raw=partial(read_sample, path, variant, task_tuple), transform=transform,
                       variant=variant, image_size=image_size, skipped=skipped)
