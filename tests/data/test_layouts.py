"""Synthetic trees in the real NYUD-v2 / PASCAL-Context layouts: files, formats, value round trips, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from mtbench.data.dataset import SyntheticMultiTask
from mtbench.data.layouts import (
    CONTEXT_OF_SYNTHETIC,
    LAYOUTS,
    NYU40_CLASSES,
    NYU40_OF_SYNTHETIC,
    PROVENANCE_FILE,
    VOC_CLASSES,
    VOC_OF_SYNTHETIC,
    image_size,
    layout_ids,
    render_sample,
    write_layout,
)
from mtbench.data.synthetic import FIGURE
from mtbench.errors import MtbenchError
from mtbench.tasks import IGNORE, SYNTHETIC_SEMSEG_CLASSES

H, W, SEED = 48, 64, 1
N = {"nyud_mt": 6, "nyudv2": 6, "pascal_context": 16}  # seed 1, n 16: every human-parts case
CLASS_LISTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "class_lists"
# The loaders' HUMAN_PART[6] (brdav/atrc src/data/pascal_context.py), copied independently of the writer.
HUMAN_PART_6 = {"hair": 1, "head": 1, "lear": 1, "lebrow": 1, "leye": 1, "lfoot": 6, "lhand": 4, "llarm": 4,
                "llleg": 6, "luarm": 3, "luleg": 5, "mouth": 1, "neck": 2, "nose": 1, "rear": 1, "rebrow": 1,
                "reye": 1, "rfoot": 6, "rhand": 4, "rlarm": 4, "rlleg": 6, "ruarm": 3, "ruleg": 5, "torso": 2}
FILES = {  # (folder, extension) of every id
    "nyud_mt": [("images", "jpg"), ("segmentation", "png"), ("depth", "npy"), ("normals", "npy"), ("edge", "npy")],
    "nyudv2": [("images", "png"), ("segmentation", "png"), ("depth", "npy"), ("normals", "png"), ("edge", "png")],
    "pascal_context": [("JPEGImages", "jpg"), ("semseg/pascal-context", "png"), ("pascal-context/trainval", "mat"),
                       ("human_parts", "mat"), ("normals_distill", "png"), ("sal_distill", "png")],
}
SPLIT_DIR = {"nyud_mt": "gt_sets", "nyudv2": "gt_sets", "pascal_context": "ImageSets/Context"}


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    for layout in LAYOUTS:
        size = {} if layout == "pascal_context" else {"height": H, "width": W}
        write_layout(layout, base / layout, N[layout], seed=SEED, **size)
        if layout == "pascal_context":  # PASCAL varies its sizes around the given one
            write_layout(layout, base / "pascal_small", N[layout], seed=SEED, height=H, width=W)
    return {layout: base / layout for layout in LAYOUTS} | {"pascal_small": base / "pascal_small"}


def samples(root: Path, layout: str):
    """(split, index, id, synthetic arrays) of every id in the tree's split files."""
    info = json.loads((root / PROVENANCE_FILE).read_text())
    for split in ("train", "val"):
        ids = (root / SPLIT_DIR[layout] / f"{split}.txt").read_text().splitlines()
        for index, image_id in enumerate(ids):
            size = {"height": info["height"], "width": info["width"]}
            yield split, index, image_id, render_sample(layout, split, index, seed=SEED, **size)


def png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def decode_normals(path: Path) -> np.ndarray:
    return 2.0 * np.array(Image.open(path), dtype=np.float32) / 255.0 - 1.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_file_of_every_id_exists_and_nothing_else(trees, layout):
    root = trees[layout]
    ids = {s: (root / SPLIT_DIR[layout] / f"{s}.txt").read_text().splitlines() for s in ("train", "val")}
    assert ids == layout_ids(layout, N[layout], seed=SEED)
    assert len(ids["val"]) == round(0.25 * N[layout]) and not set(ids["train"]) & set(ids["val"])
    pattern = r"\d{4}_\d{6}" if layout == "pascal_context" else r"\d{6}"
    assert all(re.fullmatch(pattern, x) for x in ids["train"] + ids["val"])
    expected = {f"{folder}/{x}.{ext}" for x in ids["train"] + ids["val"] for folder, ext in FILES[layout]}
    expected |= {f"{SPLIT_DIR[layout]}/{s}.txt" for s in ("train", "val")} | {PROVENANCE_FILE}
    assert {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} == expected
    assert json.loads((root / PROVENANCE_FILE).read_text())["counts"] == {k: len(v) for k, v in ids.items()}


@pytest.mark.parametrize("layout", ["nyud_mt", "nyudv2"])
def test_nyud_values_round_trip(trees, layout):
    root = trees[layout]
    nyu = np.array([NYU40_CLASSES.index(NYU40_OF_SYNTHETIC[c]) for c in SYNTHETIC_SEMSEG_CLASSES])
    for _, _, x, a in samples(root, layout):
        seg = png(root / "segmentation" / f"{x}.png")
        assert seg.dtype == np.uint8 and seg.shape == (H, W)
        label = seg.astype(np.float32) - 1  # as the reference _load_semseg
        label[label == -1] = 255
        valid = a["semseg"] != IGNORE
        assert np.array_equal(label[valid], nyu[a["semseg"][valid]]) and (label[~valid] == 255).all()
        depth = np.load(root / "depth" / f"{x}.npy")
        assert depth.dtype == np.float32 and np.array_equal(depth, a["depth"])
        if layout == "nyud_mt":
            image = png(root / "images" / f"{x}.jpg")
            assert np.abs(image.astype(float) - a["rgb"]).mean() < 12  # JPEG quality 95
            normals = np.load(root / "normals" / f"{x}.npy")
            assert normals.dtype == np.float32 and np.array_equal(normals, a["normals"])
            edge = np.load(root / "edge" / f"{x}.npy")
            assert edge.dtype == np.float32 and np.array_equal(edge, a["edge"].astype(np.float32))
        else:
            assert np.array_equal(png(root / "images" / f"{x}.png"), a["rgb"])
            normals = decode_normals(root / "normals" / f"{x}.png")
            assert normals.shape == (H, W, 3) and np.abs(normals - a["normals"]).max() <= 1 / 255 + 1e-6
            edge = png(root / "edge" / f"{x}.png")
            assert set(np.unique(edge)) <= {0, 255} and np.array_equal(edge / 255.0, a["edge"])


def test_nyud_files_hold_the_synthetic_dataset_split_samples(trees):
    root = trees["nyud_mt"]
    ds = SyntheticMultiTask("synthetic_nyud", split="val", tasks=["depth"], size=2, height=H, width=W, seed=SEED)
    first_val = (root / "gt_sets" / "val.txt").read_text().splitlines()[0]
    assert np.array_equal(np.load(root / "depth" / f"{first_val}.npy"), ds.render(0)["depth"])


def test_class_mappings_match_the_real_class_lists():
    assert NYU40_CLASSES[0] == "wall" and NYU40_CLASSES[39] == "otherprop" and len(NYU40_CLASSES) == 40
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES.index(VOC_OF_SYNTHETIC["figure"]) == 15
    assert VOC_OF_SYNTHETIC["floor"] == VOC_OF_SYNTHETIC["wall"] == "background"
    if not CLASS_LISTS.is_dir():
        pytest.skip(f"no class lists at {CLASS_LISTS}")
    context = json.loads((CLASS_LISTS / "context_classes.json").read_text())
    nyu = json.loads((CLASS_LISTS / "nyu_classes.json").read_text())
    assert all(context[name] == cid for name, cid in CONTEXT_OF_SYNTHETIC.values())
    valid = {context[k] for k in nyu if k in context and k != "unknown"} | {context["tvmonitor"]}
    compatible = {c for c, (_, cid) in CONTEXT_OF_SYNTHETIC.items() if cid in valid}
    assert compatible == {"floor", "wall", "box", "cylinder", "figure"}  # sphere (bird) is not NYU-compatible


def test_pascal_values_round_trip(trees):
    root = trees["pascal_context"]
    voc = np.array([VOC_CLASSES.index(VOC_OF_SYNTHETIC[c]) for c in SYNTHETIC_SEMSEG_CLASSES])
    ctx = np.array([CONTEXT_OF_SYNTHETIC[c][1] for c in SYNTHETIC_SEMSEG_CLASSES])
    sizes = set()
    for split, index, x, a in samples(root, "pascal_context"):
        h, w = image_size("pascal_context", split, index, height=375, width=500, seed=SEED)
        sizes.add((h, w))
        image = png(root / "JPEGImages" / f"{x}.jpg")
        assert image.shape == (h, w, 3) and min(h, w) >= 333 and max(h, w) == 500
        assert np.abs(image.astype(float) - a["rgb"]).mean() < 12
        seg = png(root / "semseg" / "pascal-context" / f"{x}.png")
        valid = a["semseg"] != IGNORE
        assert seg.dtype == np.uint8 and np.array_equal(seg[valid], voc[a["semseg"][valid]])
        assert (seg[~valid] == 255).all()
        label_map = scipy.io.loadmat(root / "pascal-context" / "trainval" / f"{x}.mat")["LabelMap"]
        assert label_map.shape == (h, w) and np.array_equal(label_map[valid], ctx[a["semseg"][valid]])
        assert set(np.unique(label_map)) <= set(ctx.tolist()) | {0}
        normals = decode_normals(root / "normals_distill" / f"{x}.png")
        assert np.abs(normals - a["normals"]).max() <= 1 / 255 + 1e-6
        sal = png(root / "sal_distill" / f"{x}.png")
        assert set(np.unique(sal)) <= {0, 255}
        assert np.array_equal((sal / 255.0 > 0.5).astype(np.uint8), (a["sal"] == 1).astype(np.uint8))
    assert len(sizes) > 1


def test_pascal_sizes_vary_around_a_small_size(trees):
    root = trees["pascal_small"]
    shapes = {png(p).shape for p in (root / "JPEGImages").glob("*.jpg")}
    assert len(shapes) > 1 and all(max(h, w) == W and min(h, w) >= 2 * W // 3 for h, w, _ in shapes)


def reference_human_parts(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, list]:
    """The ATRC `_preprocess_parts` + `_load_human_parts`, by position, on our .mat file."""
    objects = scipy.io.loadmat(path)["anno"][0][0][1][0]
    cat_ids = [int(o[1][0][0]) if np.sum(o[2]) > 0 else -1 for o in objects]
    target = None
    if 15 in cat_ids:
        for obj in objects:
            if obj[1][0][0] == 15 and len(obj[3]) != 0:
                target = np.zeros(obj[2].shape) if target is None else target
                for part_i in range(len(obj[3][0])):
                    target[obj[3][0][part_i][1].astype(bool)] = HUMAN_PART_6[str(obj[3][0][part_i][0][0])]
    return (np.zeros(shape) if target is None else target), list(objects)


def test_human_parts_mat_read_by_position_gives_the_synthetic_parts(trees):
    root = trees["pascal_small"]
    seen = dict.fromkeys(("person_with_parts", "person_without_parts", "other_object", "no_person",
                          "only_persons_without_parts"), 0)
    names: set[str] = set()
    for _, _, x, a in samples(root, "pascal_context"):
        target, objects = reference_human_parts(root / "human_parts" / f"{x}.mat", a["semseg"].shape)
        persons = [o for o in objects if o[1][0][0] == 15]
        for obj in objects:
            assert obj[2].dtype == np.uint8 and obj[2].shape == a["semseg"].shape and obj[2].sum() > 0
            assert str(obj[0][0]) == VOC_CLASSES[int(obj[1][0][0])]
            instance = np.unique(a["instance"][obj[2] == 1])
            assert len(instance) == 1 and np.array_equal(obj[2] == 1, a["instance"] == instance[0])
            if obj[1][0][0] != 15:
                assert len(obj[3]) == 0
                seen["other_object"] += 1
        with_parts = [o for o in persons if len(o[3]) != 0]
        seen["person_with_parts"] += len(with_parts)
        seen["person_without_parts"] += len(persons) - len(with_parts)
        seen["no_person"] += not persons
        seen["only_persons_without_parts"] += bool(persons) and not with_parts
        assert bool(persons) == (a["semseg"] == FIGURE).any()
        figure = a["semseg"] == FIGURE
        if with_parts:
            covered = np.max([o[2] for o in with_parts], axis=0).astype(bool)
            assert np.array_equal(target[covered], a["human_parts"][covered])
            assert (target[~covered] == 0).all()
            names |= {str(p[0][0]) for o in with_parts for p in o[3][0]}
        else:
            assert (target == 0).all()  # no annotated person: the loader ignores the whole map
        assert not (target.astype(bool) & ~figure).any()
    assert all(seen.values()), seen
    assert {"head", "hair", "neck", "torso", "ruarm", "luarm", "rlarm", "llarm", "ruleg", "rlleg"} <= names
    assert names <= set(HUMAN_PART_6)


def test_errors_are_user_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    for kwargs, needle in ((dict(layout="nyud"), "unknown layout"), (dict(out=tmp_path / "full"), "not empty"),
                           (dict(n=0), "n must be"), (dict(val_fraction=1.0), "val_fraction"),
                           (dict(height=4), "height")):
        args = {"layout": "nyudv2", "out": tmp_path / "new", "n": 2, "height": H, "width": W} | kwargs
        with pytest.raises(MtbenchError, match=needle):
            write_layout(args.pop("layout"), args.pop("out"), args.pop("n"), **args)
    assert not (tmp_path / "new").exists()


def test_overwrite_replaces_the_layout_and_keeps_other_files(tmp_path):
    write_layout("nyudv2", tmp_path, 6, height=H, width=W)
    (tmp_path / "notes.txt").write_text("mine")
    summary = write_layout("nyudv2", tmp_path, 3, height=H, width=W, overwrite=True)
    assert summary.counts == {"train": 2, "val": 1}
    assert len(list((tmp_path / "depth").glob("*.npy"))) == 3 and (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_writes_a_tree_and_refuses_a_non_empty_folder(tmp_path):
    from conftest import run_cli

    args = ("data", "synth", "--layout", "pascal_context", "--out", str(tmp_path / "tree"), "-n", "4",
            "--height", "40", "--width", "48", "--seed", "1")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train=3 val=1" in result.stdout
    assert len((tmp_path / "tree" / "ImageSets" / "Context" / "train.txt").read_text().splitlines()) == 3
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr
    assert "Traceback" not in again.stdout + again.stderr
