"""Write the synthetic scenes as on-disk trees in the exact layouts of the real archives.

`write_layout` renders `mtbench.data.synthetic` scenes and stores them as the real loaders expect
(ATRC / MTI-Net / InvPT lineage; `/tmp/issue5_reference.md` sections 0-2), so that our NYUD-v2
and PASCAL-Context loaders can be exercised without the real data:

- `nyud_mt` (Google-Drive `NYUD_MT.tgz`, ATRC HEAD, MTL-PyTorch): `images/<id>.jpg`,
  `segmentation/<id>.png` (uint8, 0 = void, 1..40 = NYU-40 class + 1), `depth/<id>.npy` (float32
  metres, 0 = invalid), `normals/<id>.npy` (float32 HxWx3), `edge/<id>.npy` (float32 {0, 1}),
  `gt_sets/{train,val}.txt`. Default size 480x640.
- `nyudv2` (ATRC 2021 release / InvPT `NYUDv2` archive): as `nyud_mt` but `images/<id>.png`,
  `normals/<id>.png` (uint8 RGB, round((n + 1) / 2 * 255)) and `edge/<id>.png` (uint8 0/255).
  Default size 425x560, the ATRC crop size; the archive's real image size is unconfirmed.
- `pascal_context` (`PASCAL_MT` / `PASCALContext`): `JPEGImages/<id>.jpg`,
  `semseg/pascal-context/<id>.png` (uint8 VOC 0..20, void = IGNORE), `pascal-context/trainval/<id>.mat`
  (`LabelMap`, uint16 459-class Context ids), `human_parts/<id>.mat` (PASCAL-Part `anno` struct),
  `normals_distill/<id>.png` (as nyudv2 normals), `sal_distill/<id>.png` (uint8 0/255),
  `ImageSets/Context/{train,val}.txt`. Image sizes vary per image around 375x500.

Ids look like the real ones (`000001` for NYUD, `2008_000002` for PASCAL). The k-th id of a split
file holds `render_sample(layout, split, k, ...)`, i.e. scene k of that split of the synthetic
preset (`synthetic_nyud` / `synthetic_pascal`). The split files (and a provenance file
`mtbench_synth.json`) are written last, so an interrupted run never looks like a complete tree.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from mtbench.data.synthetic import (
    FIGURE,
    GENERATOR_VERSION,
    HEAD,
    LOWER_ARM,
    LOWER_LEG,
    ROOM_SURFACES,
    TORSO,
    UPPER_ARM,
    UPPER_LEG,
    render_scene,
)
from mtbench.errors import MtbenchError
from mtbench.tasks import IGNORE, SYNTHETIC_SEMSEG_CLASSES

LAYOUTS = ("nyud_mt", "nyudv2", "pascal_context")
PRESET_OF_LAYOUT = {"nyud_mt": "synthetic_nyud", "nyudv2": "synthetic_nyud", "pascal_context": "synthetic_pascal"}
# Default (height, width); for pascal_context the typical size around which images vary.
DEFAULT_SIZE = {"nyud_mt": (480, 640), "nyudv2": (425, 560), "pascal_context": (375, 500)}
JPEG_QUALITY = 95
PROVENANCE_FILE = "mtbench_synth.json"

# The 40 NYUv2 classes in their standard order (index i is written as i + 1; 0 = void).
NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop")
# Synthetic class -> NYU-40 class name; the PNG holds NYU40_CLASSES.index(name) + 1.
NYU40_OF_SYNTHETIC = {"floor": "floor", "wall": "wall", "box": "cabinet", "sphere": "otherprop",
                      "cylinder": "otherstructure", "figure": "person"}

# PASCAL VOC's 21 classes (0 = background, person = 15), as in the loaders' VOC_CATEGORY_NAMES.
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# Synthetic class -> VOC class name. Room surfaces are background; void pixels (no hit) are IGNORE.
VOC_OF_SYNTHETIC = {"floor": "background", "wall": "background", "box": "tvmonitor", "sphere": "bird",
                    "cylinder": "chair", "figure": "person"}
# Synthetic class -> (Context name, Context id) of the 459-class LabelMap (context_classes.json);
# void pixels get 0. floor, wall, chair and person are names NYU also has, tvmonitor is the loaders'
# custom addition, and bird is NOT NYU-compatible, so its normals are dropped by the real loader.
CONTEXT_OF_SYNTHETIC = {"floor": ("floor", 158), "wall": ("wall", 440), "box": ("tvmonitor", 427),
                        "sphere": ("bird", 25), "cylinder": ("chair", 72), "figure": ("person", 284)}
CONTEXT_VOID = 0
PERSON_CLASS_IND = VOC_CLASSES.index("person")
# PASCAL-Part names this writer uses -> HUMAN_PART_CLASSES index (the loaders' HUMAN_PART[6] table).
PART_NAME_CLASS = {
    "hair": HEAD, "head": HEAD, "neck": TORSO, "torso": TORSO, "ruarm": UPPER_ARM, "luarm": UPPER_ARM,
    "rlarm": LOWER_ARM, "llarm": LOWER_ARM, "rhand": LOWER_ARM, "lhand": LOWER_ARM, "ruleg": UPPER_LEG,
    "luleg": UPPER_LEG, "rlleg": LOWER_LEG, "llleg": LOWER_LEG, "rfoot": LOWER_LEG, "lfoot": LOWER_LEG}
# In every PARTLESS_EVERY-th image of a split (index % PARTLESS_EVERY == PARTLESS_EVERY - 1) the last
# person has no part annotation, as some PASCAL-Part persons have none.
PARTLESS_EVERY = 4


def _lut(values: dict[str, int], void: int, dtype: type) -> np.ndarray:
    """Lookup table synthetic semseg value (0..5, IGNORE) -> written value."""
    table = np.full(256, void, dtype=dtype)
    for i, name in enumerate(SYNTHETIC_SEMSEG_CLASSES):
        table[i] = values[name]
    return table


_NYU_PNG = _lut({k: NYU40_CLASSES.index(v) + 1 for k, v in NYU40_OF_SYNTHETIC.items()}, 0, np.uint8)
_VOC_PNG = _lut({k: VOC_CLASSES.index(v) for k, v in VOC_OF_SYNTHETIC.items()}, IGNORE, np.uint8)
_CONTEXT = _lut({k: v[1] for k, v in CONTEXT_OF_SYNTHETIC.items()}, CONTEXT_VOID, np.uint16)
_SPLIT_CODE = {"train": 0, "val": 1}
_TREE = {  # top-level entries each layout writes (removed by overwrite=True)
    "nyud_mt": ("images", "segmentation", "depth", "normals", "edge", "gt_sets"),
    "nyudv2": ("images", "segmentation", "depth", "normals", "edge", "gt_sets"),
    "pascal_context": ("JPEGImages", "ImageSets", "semseg", "pascal-context", "human_parts", "normals_distill",
                       "sal_distill"),
}


@dataclass(frozen=True)
class SynthSummary:
    """What `write_layout` wrote: layout, root, ids per split, (height, width) argument, seconds."""

    layout: str
    root: str
    counts: dict[str, int]
    height: int
    width: int
    varying_size: bool
    seed: int
    seconds: float


def nyu_png_values(semseg: np.ndarray) -> np.ndarray:
    """NYUD `segmentation` PNG values (0 = void, 1..40) of a synthetic semseg map."""
    return _NYU_PNG[semseg]


def voc_png_values(semseg: np.ndarray) -> np.ndarray:
    """PASCAL `semseg/pascal-context` PNG values (VOC 0..20, void = IGNORE) of a synthetic semseg map."""
    return _VOC_PNG[semseg]


def context_label_map(semseg: np.ndarray) -> np.ndarray:
    """The 459-class Context `LabelMap` (uint16) of a synthetic semseg map."""
    return _CONTEXT[semseg]


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Normals (H, W, 3) in [-1, 1] -> uint8 RGB round((n + 1) / 2 * 255); decode with 2x/255 - 1."""
    return np.clip(np.rint((normals.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def layout_ids(layout: str, n: int, *, val_fraction: float = 0.25, seed: int = 0) -> dict[str, list[str]]:
    """Split ids {"train": [...], "val": [...]}, each sorted: a seeded random round(n * val_fraction) are val."""
    _check_layout(layout)
    if layout == "pascal_context":  # 2008_000002-style, 4 years, interleaved so both splits span all
        ids = [f"{2008 + i % 4}_{2 + 3 * (i // 4):06d}" for i in range(n)]
    else:  # 000001-style, 1-based like the 1449 labelled NYUv2 frames
        ids = [f"{i + 1:06d}" for i in range(n)]
    n_val = min(max(int(round(n * val_fraction)), 0), n)
    val = set(np.random.default_rng([seed, 0x1D5]).permutation(n)[:n_val].tolist())
    return {"train": sorted(x for i, x in enumerate(ids) if i not in val),
            "val": sorted(x for i, x in enumerate(ids) if i in val)}


def image_size(layout: str, split: str, index: int, *, height: int, width: int, seed: int = 0) -> tuple[int, int]:
    """(height, width) of sample `index` of `split`: as given for NYUD; varying per image for PASCAL.

    PASCAL: half the images are exactly (height, width); the others keep the longer side and draw the
    shorter between 2/3 of it and all of it; a quarter of all images are transposed (portrait).
    """
    if layout != "pascal_context":
        return height, width
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 0x5CA1])
    h, w = height, width
    if rng.random() < 0.5:
        long = max(h, w)
        short = int(rng.integers(-(-2 * long // 3), long + 1))
        h, w = (short, long) if h <= w else (long, short)
    if rng.random() < 0.25:
        h, w = w, h
    return h, w


def render_sample(layout: str, split: str, index: int, *, height: int, width: int,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """The synthetic arrays (mtbench.data.synthetic.render) behind the `index`-th id of `split`."""
    h, w = image_size(layout, split, index, height=height, width=width, seed=seed)
    return render_scene(PRESET_OF_LAYOUT[layout], split, index, seed=seed, height=h, width=w)


def write_layout(layout: str, out: str | Path, n: int, *, height: int | None = None, width: int | None = None,
                 seed: int = 0, val_fraction: float = 0.25, overwrite: bool = False) -> SynthSummary:
    """Render `n` synthetic samples into `out` in `layout`'s exact real format; return a summary.

    `out` must be missing or empty unless `overwrite`, which first removes the layout's own folders
    (and the provenance file) from `out`; other entries are left alone.
    """
    _check_layout(layout)
    height = DEFAULT_SIZE[layout][0] if height is None else height
    width = DEFAULT_SIZE[layout][1] if width is None else width
    for option, value, low in (("n", n, 1), ("height", height, 8), ("width", width, 8), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise MtbenchError(f"{option} must be an integer >= {low}, got {value!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise MtbenchError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    root = Path(out)
    _prepare_root(root, layout, overwrite)
    start = time.perf_counter()
    splits = layout_ids(layout, n, val_fraction=val_fraction, seed=seed)
    for split, ids in splits.items():
        for index, image_id in enumerate(ids):
            arrays = render_sample(layout, split, index, height=height, width=width, seed=seed)
            _WRITERS[layout](root, image_id, arrays, partless=index % PARTLESS_EVERY == PARTLESS_EVERY - 1)
    provenance = {"layout": layout, "preset": PRESET_OF_LAYOUT[layout], "generator_version": GENERATOR_VERSION,
                  "seed": seed, "height": height, "width": width, "varying_size": layout == "pascal_context",
                  "val_fraction": val_fraction, "counts": {k: len(v) for k, v in splits.items()}}
    _write_text(root / PROVENANCE_FILE, json.dumps(provenance, indent=2) + "\n")
    split_dir = root / ("ImageSets/Context" if layout == "pascal_context" else "gt_sets")
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():  # last: their presence marks a complete tree
        _write_text(split_dir / f"{split}.txt", "".join(f"{x}\n" for x in ids))
    return SynthSummary(layout, str(root), provenance["counts"], height, width, layout == "pascal_context", seed,
                        time.perf_counter() - start)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise MtbenchError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}.")


def _prepare_root(root: Path, layout: str, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise MtbenchError(f"--out {root} exists and is not a folder.")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise MtbenchError(f"--out {root} is not empty; choose an empty or new folder, or pass --overwrite "
                               f"to replace its {layout} folders.")
        # Split files first, so a tree interrupted from here on never looks complete.
        for split_dir in ("gt_sets", "ImageSets"):
            if (root / split_dir).is_dir():
                shutil.rmtree(root / split_dir)
        for name in (*_TREE[layout], PROVENANCE_FILE):
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=JPEG_QUALITY)


def _npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _write_nyud_mt(root: Path, image_id: str, a: dict[str, np.ndarray], partless: bool = False) -> None:
    _jpg(root / "images" / f"{image_id}.jpg", a["rgb"])
    _png(root / "segmentation" / f"{image_id}.png", nyu_png_values(a["semseg"]))
    _npy(root / "depth" / f"{image_id}.npy", a["depth"].astype(np.float32))
    _npy(root / "normals" / f"{image_id}.npy", a["normals"].astype(np.float32))
    _npy(root / "edge" / f"{image_id}.npy", a["edge"].astype(np.float32))


def _write_nyudv2(root: Path, image_id: str, a: dict[str, np.ndarray], partless: bool = False) -> None:
    _png(root / "images" / f"{image_id}.png", a["rgb"])
    _png(root / "segmentation" / f"{image_id}.png", nyu_png_values(a["semseg"]))
    _npy(root / "depth" / f"{image_id}.npy", a["depth"].astype(np.float32))
    _png(root / "normals" / f"{image_id}.png", encode_normals(a["normals"]))
    _png(root / "edge" / f"{image_id}.png", (a["edge"] > 0).astype(np.uint8) * 255)


def _write_pascal(root: Path, image_id: str, a: dict[str, np.ndarray], partless: bool = False) -> None:
    _jpg(root / "JPEGImages" / f"{image_id}.jpg", a["rgb"])
    _png(root / "semseg" / "pascal-context" / f"{image_id}.png", voc_png_values(a["semseg"]))
    for folder, value in (("pascal-context/trainval", {"LabelMap": context_label_map(a["semseg"])}),
                          ("human_parts", {"anno": parts_anno(image_id, a, partless=partless)})):
        path = root / folder / f"{image_id}.mat"
        path.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(path, value, do_compression=True)
    _png(root / "normals_distill" / f"{image_id}.png", encode_normals(a["normals"]))
    _png(root / "sal_distill" / f"{image_id}.png", (a["sal"] == 1).astype(np.uint8) * 255)


_WRITERS = {"nyud_mt": _write_nyud_mt, "nyudv2": _write_nyudv2, "pascal_context": _write_pascal}

_OBJECT_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
_PART_DTYPE = [("part_name", "O"), ("mask", "O")]


def parts_anno(image_id: str, a: dict[str, np.ndarray], *, partless: bool = False) -> np.ndarray:
    """The PASCAL-Part `anno` struct (1x1) of one image, in scene order of its visible objects.

    Every visible object with a VOC class is one object (class, class_ind, uint8 mask, parts);
    persons carry their parts under PASCAL-Part names (PART_NAME_CLASS), other objects none.
    With `partless` the last person has no parts. Read back as the loaders do:
    `loadmat(f)['anno'][0][0][1][0]` -> objects; `obj[1][0][0]` = class_ind; `obj[3][0][i][0][0]` = name.
    """
    semseg, instance = a["semseg"], a["instance"]
    objects: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for k in np.unique(instance[instance >= len(ROOM_SURFACES)]):
        mask = instance == k
        cls = SYNTHETIC_SEMSEG_CLASSES[int(semseg[mask][0])]
        voc = VOC_CLASSES.index(VOC_OF_SYNTHETIC[cls])
        if voc == 0:
            continue
        pieces = person_parts(mask, a["human_parts"]) if semseg[mask][0] == FIGURE else []
        objects.append((VOC_CLASSES[voc], np.array([[float(voc)]]), mask.astype(np.uint8), _parts_array(pieces)))
    if partless:
        persons = [i for i, o in enumerate(objects) if o[0] == "person"]
        if persons:
            objects[persons[-1]] = (*objects[persons[-1]][:3], _parts_array([]))
    table = np.zeros((1, len(objects)), dtype=_OBJECT_DTYPE)
    for i, obj in enumerate(objects):
        table[0, i] = obj
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (image_id, table if objects else np.zeros((1, 0)))
    return anno


def _parts_array(pieces: list[tuple[str, np.ndarray]]) -> np.ndarray:
    if not pieces:
        return np.zeros((0, 0))  # what MATLAB writes for an empty struct array: len() == 0
    parts = np.zeros((1, len(pieces)), dtype=_PART_DTYPE)
    for i, (name, mask) in enumerate(pieces):
        parts[0, i] = (name, mask.astype(np.uint8))
    return parts


def person_parts(mask: np.ndarray, parts: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Split one person's synthetic part map into non-empty PASCAL-Part named masks.

    Limbs left of the person's mean column are its right (r*) side, as for a person facing the camera;
    the top of the head is `hair`, of the torso `neck`, the bottom of the lower arms/legs `*hand`/`*foot`.
    """
    cols = np.nonzero(mask)[1]
    left_side = np.arange(mask.shape[1])[None, :] < cols.mean()
    out: list[tuple[str, np.ndarray]] = []

    def add(name: str, m: np.ndarray) -> None:
        if m.any():
            out.append((name, m))

    def split_rows(m: np.ndarray, fraction: float, top: bool) -> tuple[np.ndarray, np.ndarray]:
        """(the `fraction` of m's rows at its top or bottom, the rest)."""
        rows = np.nonzero(m.any(axis=1))[0]
        if not len(rows):
            return m, m
        span, r = rows[-1] - rows[0] + 1, np.arange(m.shape[0])[:, None]
        band = m & ((r < rows[0] + fraction * span) if top else (r > rows[-1] - fraction * span))
        return band, m & ~band

    hair, head = split_rows(mask & (parts == HEAD), 0.3, top=True)
    neck, torso = split_rows(mask & (parts == TORSO), 0.15, top=True)
    hands, feet = [], []
    for side, is_side in (("r", left_side), ("l", ~left_side)):
        hand, lower_arm = split_rows(mask & (parts == LOWER_ARM) & is_side, 0.25, top=False)
        foot, lower_leg = split_rows(mask & (parts == LOWER_LEG) & is_side, 0.2, top=False)
        hands.append((f"{side}hand", hand))
        feet.append((f"{side}foot", foot))
        for name, m in ((f"{side}uarm", mask & (parts == UPPER_ARM) & is_side), (f"{side}larm", lower_arm),
                        (f"{side}uleg", mask & (parts == UPPER_LEG) & is_side), (f"{side}lleg", lower_leg)):
            add(name, m)
    for name, m in (("hair", hair), ("head", head), ("neck", neck), ("torso", torso), *hands, *feet):
        add(name, m)
    return out
