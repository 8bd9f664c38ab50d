"""NYUD-v2 and PASCAL-Context loaders on tiny hand-written trees in the real layouts, known pixel values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mtbench.data import build_dataset
from mtbench.data import pascal_context as pc
from mtbench.data.check import check_tree
from mtbench.data.tree import BadSampleError
from mtbench.errors import MtbenchError

H, W = 4, 6
RGB = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
SEG = np.array([[0, 1, 40, 5, 5, 5]] * H, dtype=np.uint8)  # 0 = void
DEPTH = np.full((H, W), 2.5, dtype=np.float32)
DEPTH[0, 0] = 0.0  # invalid
NORMALS = np.zeros((H, W, 3), dtype=np.float32)
NORMALS[..., 2] = 1.0
EDGE = np.zeros((H, W), dtype=np.float32)
EDGE[:, 2] = 1.0


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def write_nyud(root: Path, variant: str, ids=("a1", "a2"), val=("b1",)) -> Path:
    for i in (*ids, *val):
        if variant == "NYUD_MT":
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(RGB).save(root / "images" / f"{i}.jpg", quality=100)
            save_npy(root / "normals" / f"{i}.npy", NORMALS)
            save_npy(root / "edge" / f"{i}.npy", EDGE)
        else:
            save_png(root / "images" / f"{i}.png", RGB)
            save_png(root / "normals" / f"{i}.png", np.round((NORMALS + 1) / 2 * 255).astype(np.uint8))
            save_png(root / "edge" / f"{i}.png", (EDGE * 255).astype(np.uint8))
        save_png(root / "segmentation" / f"{i}.png", SEG)
        save_npy(root / "depth" / f"{i}.npy", DEPTH)
    (root / "gt_sets").mkdir(parents=True, exist_ok=True)
    (root / "gt_sets" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "gt_sets" / "val.txt").write_text("\n".join(val) + "\n")
    return root


@pytest.mark.parametrize("variant", ["NYUD_MT", "NYUDv2"])
def test_nyud_conversions_and_variant_detection(tmp_path, variant):
    root = write_nyud(tmp_path / variant, variant)
    ds = build_dataset("nyud", root=root, split="train")
    assert ds.variant == variant and len(ds) == 2 and ds.tasks == ("semseg", "depth", "normals", "edge")
    s = ds[0]
    assert s["meta"] == {"id": "a1", "size": (H, W)}
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert s["semseg"].dtype == torch.int64
    assert s["semseg"][0].tolist() == [255, 0, 39, 4, 4, 4]  # void -> 255, k -> k - 1
    assert s["depth"].shape == (1, H, W) and s["depth"][0, 0, 0] == 0 and s["depth"][0, 1, 1] == 2.5
    assert s["normals"].shape == (3, H, W)
    # PNG normals decode as 2x/255 - 1: 255 -> 1, 128 -> 1/255.
    expected = torch.tensor([1 / 255, 1 / 255, 1.0]) if variant == "NYUDv2" else torch.tensor([0.0, 0.0, 1.0])
    torch.testing.assert_close(s["normals"][:, 1, 1], expected)
    assert s["edge"][0].tolist() == torch.from_numpy(EDGE).tolist()
    assert variant in ds.fingerprint and "train=2" in ds.fingerprint and f"{H}x{W}" in ds.fingerprint


def test_nyud_test_split_is_the_published_val_split(tmp_path):
    root = write_nyud(tmp_path / "n", "NYUDv2")
    assert build_dataset("nyud", root=root, split="test").ids == ["b1"]


def test_nyud_refuses_pascal_tree_subfolder_and_astmt_archive(tmp_path):
    (tmp_path / "p" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(MtbenchError, match="PASCAL-Context tree"):
        build_dataset("nyud", root=tmp_path / "p", split="train")
    write_nyud(tmp_path / "outer" / "NYUDv2", "NYUDv2")
    with pytest.raises(MtbenchError, match="subfolder"):
        build_dataset("nyud", root=tmp_path / "outer", split="train")
    root = write_nyud(tmp_path / "astmt", "NYUD_MT")
    scipy.io.savemat(root / "segmentation" / "a1.mat", {"segmentation": SEG})
    with pytest.raises(MtbenchError, match="ASTMT"):
        build_dataset("nyud", root=root, split="train")
    with pytest.raises(MtbenchError, match="does not exist"):
        build_dataset("nyud", root=tmp_path / "nowhere", split="train")
    with pytest.raises(MtbenchError, match="dataset.root"):
        build_dataset("nyud", root=None, split="train")


def test_nyud_missing_file_names_the_file_and_id_or_is_skipped_and_recorded(tmp_path):
    root = write_nyud(tmp_path / "n", "NYUDv2")
    (root / "depth" / "a2.npy").unlink()
    with pytest.raises(BadSampleError, match=r"1 of 2 train ids have no depth file.*a2\.npy.*'a2'"):
        build_dataset("nyud", root=root, split="train")
    ds = build_dataset("nyud", root=root, split="train", skip_missing=True)
    assert ds.ids == ["a1"] and ds.skipped == ["a2"] and "skipped1" in ds.fingerprint
    # Without depth the tree is complete.
    assert len(build_dataset("nyud", root=root, split="train", tasks=["semseg"])) == 2


def test_nyud_corrupt_and_out_of_range_files_fail_at_load_naming_the_file(tmp_path):
    root = write_nyud(tmp_path / "n", "NYUDv2")
    (root / "images" / "a2.png").write_bytes(b"not a png")
    bad = SEG.copy()
    bad[0, 0] = 41
    save_png(root / "segmentation" / "a1.png", bad)
    ds = build_dataset("nyud", root=root, split="train")
    with pytest.raises(BadSampleError, match=r"'a1'.*segmentation.*a1\.png holds 41"):
        ds[0]
    with pytest.raises(BadSampleError, match=r"'a2'.*a2\.png.*corrupt"):
        ds[1]
    save_png(root / "segmentation" / "a1.png", SEG[:, :4])
    with pytest.raises(BadSampleError, match=r"shape \(4, 4\), expected \(4, 6\)"):
        ds[0]


# --------------------------------------------------------------------------------- PASCAL-Context
def parts_anno(objects: list[tuple[str, int, np.ndarray, list[tuple[str, np.ndarray]]]]) -> dict:
    """A PASCAL-Part `anno` struct as scipy writes MATLAB structs (read back by position)."""
    obj_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    part_dtype = [("part_name", "O"), ("mask", "O")]
    objs = np.empty((1, len(objects)), dtype=obj_dtype)
    for j, (name, ind, mask, parts) in enumerate(objects):
        arr = np.empty((1, len(parts)), dtype=part_dtype) if parts else np.empty((0, 0), dtype=part_dtype)
        for k, (pname, pmask) in enumerate(parts):
            arr[0, k] = (pname, pmask.astype(np.uint8))
        objs[0, j] = (name, np.array([[ind]], dtype=np.uint8), mask.astype(np.uint8), arr)
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = ("x.jpg", objs)
    return {"anno": anno}


CONTEXT_WALL, CONTEXT_SKY, CONTEXT_PERSON = 440, 360, 284  # ids in context_classes.json


def write_pascal(root: Path, with_parts: bool = True) -> Path:
    labelmap = np.full((H, W), CONTEXT_WALL, dtype=np.uint16)
    labelmap[:, 4:] = CONTEXT_SKY
    person = np.zeros((H, W), dtype=bool)
    person[1:3, 1:3] = True
    head, hand, torso = np.zeros((H, W), bool), np.zeros((H, W), bool), np.zeros((H, W), bool)
    head[1, 1], hand[1, 2], torso[2, 1:3] = True, True, True
    for i in ("2008_000001", "2008_000002"):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(RGB).save(root / "JPEGImages" / f"{i}.jpg", quality=100)
        save_png(root / "semseg" / "pascal-context" / f"{i}.png", np.where(person, 15, 0).astype(np.uint8))
        (root / "pascal-context" / "trainval").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "pascal-context" / "trainval" / f"{i}.mat", {"LabelMap": labelmap})
        parts = [("hair", head), ("rhand", hand), ("torso", torso)] if with_parts and i.endswith("1") else []
        (root / "human_parts").mkdir(parents=True, exist_ok=True)
        objects = [("chair", 9, np.ones((H, W)), []), ("person", 15, person, parts)]
        scipy.io.savemat(root / "human_parts" / f"{i}.mat", parts_anno(objects))
        sal = np.where(person, 200, 100).astype(np.uint8)  # /255 > 0.5 -> person only
        save_png(root / "sal_distill" / f"{i}.png", sal)
        normals = np.zeros((H, W, 3), np.uint8)
        normals[..., 2] = 255
        save_png(root / "normals_distill" / f"{i}.png", normals)
    (root / "ImageSets" / "Context").mkdir(parents=True)
    (root / "ImageSets" / "Context" / "train.txt").write_text("2008_000001\n2008_000002\n")
    (root / "ImageSets" / "Context" / "val.txt").write_text("2008_000002\n")
    return root


def test_pascal_context_class_list_for_normals_matches_atrc():
    assert len(pc.NORMALS_CLASSES) == 170
    assert {CONTEXT_WALL, CONTEXT_PERSON, 427} <= pc.NORMALS_CLASSES and CONTEXT_SKY not in pc.NORMALS_CLASSES


def test_pascal_context_five_tasks(tmp_path):
    root = write_pascal(tmp_path / "PASCAL_MT")
    ds = build_dataset("pascal_context", root=root, split="train")
    assert ds.tasks == ("semseg", "human_parts", "sal", "normals", "edge")
    s = ds[0]
    assert s["semseg"][1].tolist() == [0, 15, 15, 0, 0, 0]
    parts = s["human_parts"]
    # hair -> head (1), rhand -> lower arm (4), torso -> torso (2); the rest of the image is background.
    assert parts[1, 1] == 1 and parts[1, 2] == 4 and parts[2].tolist() == [0, 2, 2, 0, 0, 0] and parts[0].eq(0).all()
    assert s["sal"][1].tolist() == [0, 1, 1, 0, 0, 0]
    # Normals kept on wall (NYU-compatible), zeroed (= invalid) on sky.
    assert s["normals"][2, :, :4].eq(1.0).all() and s["normals"][:, :, 4:].eq(0).all()
    # Edge: the Laplacian of the LabelMap is non-zero on both sides of the wall|sky border (columns 3
    # and 4, none at the reflected image frame); thinning leaves a line of one pixel per row inside it.
    edge = s["edge"][0]
    assert edge[:, :3].eq(0).all() and edge[:, 5].eq(0).all() and edge[1:, 3:5].sum(dim=1).eq(1).all()
    assert set(edge.unique().tolist()) == {0.0, 1.0}
    # An image whose person has no parts is ignored for human_parts (all 255).
    assert ds[1]["human_parts"].eq(255).all()


def test_pascal_context_prefers_voc12_semseg_and_refuses_nyud_tree(tmp_path):
    root = write_pascal(tmp_path / "P")
    save_png(root / "semseg" / "VOC12" / "2008_000001.png", np.full((H, W), 3, np.uint8))
    assert build_dataset("pascal_context", root=root, split="train", tasks=["semseg"])[0]["semseg"].eq(3).all()
    nyud_root = write_nyud(tmp_path / "n", "NYUDv2")
    with pytest.raises(MtbenchError, match="NYUD-v2 tree"):
        build_dataset("pascal_context", root=nyud_root, split="train")


def test_pascal_context_bad_part_name_and_bad_mat_are_named(tmp_path):
    root = write_pascal(tmp_path / "P")
    objects = [("person", 15, np.ones((H, W)), [("tentacle", np.ones((H, W)))])]
    scipy.io.savemat(root / "human_parts" / "2008_000001.mat", parts_anno(objects))
    ds = build_dataset("pascal_context", root=root, split="train", tasks=["human_parts"])
    with pytest.raises(BadSampleError, match="'tentacle'"):
        ds[0]
    (root / "human_parts" / "2008_000001.mat").write_bytes(b"garbage")
    with pytest.raises(BadSampleError, match=r"2008_000001\.mat.*corrupt"):
        ds[0]


def test_check_reports_counts_variant_and_a_reupload_without_saliency(tmp_path):
    root = write_nyud(tmp_path / "n", "NYUD_MT")
    report = check_tree("nyud", root)
    assert report.ok and report.variant == "NYUD_MT" and report.counts == {"train": 2, "val": 1}
    assert report.image_sizes == {f"{H}x{W}": 3}
    root = write_pascal(tmp_path / "P")
    for f in (root / "sal_distill").iterdir():
        f.unlink()
    (root / "sal_distill").rmdir()
    report = check_tree("pascal_context", root)
    assert not report.ok
    problems = "\n".join(report.problems())
    assert "train: all 2 ids have no sal file" in problems and "lacks the distilled sal" in problems
