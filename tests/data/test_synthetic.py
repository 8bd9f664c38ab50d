"""Tests of the synthetic datasets: determinism, Sample contract, label consistency, physics, errors."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch

from mtbench.data import build_dataset, synthetic
from mtbench.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from mtbench.data.synthetic import (
    BOX,
    FIGURE,
    FLOOR,
    FOREGROUND_CLASSES,
    HEAD,
    PRESETS,
    ROOM_SURFACES,
    SPHERE,
    TORSO,
    WALL,
    boundaries,
    render,
    render_scene,
    sample_scene,
    scene_rng,
)
from mtbench.errors import MtbenchError
from mtbench.tasks import DATASET_TASKS, HUMAN_PART_CLASSES, IGNORE, SYNTHETIC_SEMSEG_CLASSES

NAMES = tuple(PRESETS)


@pytest.fixture(scope="module")
def scenes() -> list[tuple[str, dict[str, np.ndarray]]]:
    """Twenty rendered scenes per preset at the default size."""
    return [(p, render_scene(p, "train", i)) for p in NAMES for i in range(20)]


def _level(preset: str, index: int, pitch: float = 0.0):
    """Scene `index` of `preset` seen by a camera with yaw 0 and the given pitch."""
    scene = sample_scene(scene_rng(preset, "train", index), preset)
    return dataclasses.replace(scene, camera=dataclasses.replace(scene.camera, pitch=pitch, yaw=0.0))


def _camera_rays(focal: float, height: int, width: int) -> np.ndarray:
    """(H, W, 3) ray directions in the camera frame (x right, y up, z towards the camera), z = -1."""
    f = focal * width
    u = (np.arange(width) + 0.5 - width / 2) / f
    v = (np.arange(height) + 0.5 - height / 2) / f
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu, -vv, -np.ones_like(uu)], -1)


# ---------------------------------------------------------------------------------------------
# Determinism


def test_render_is_bit_identical_for_same_inputs() -> None:
    a = render_scene("synthetic_pascal", "val", 7, seed=3, height=64, width=80)
    b = render_scene("synthetic_pascal", "val", 7, seed=3, height=64, width=80)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_dataset_is_independent_of_instance_and_access_order() -> None:
    one = build_dataset("synthetic_nyud", split="train", tasks=None)
    two = build_dataset("synthetic_nyud", split="train", tasks=None)
    first = one[5]
    for i in (9, 0, 3):  # touch other samples first
        two[i]
    second = two[5]
    for key in ("image", "semseg", "depth", "normals", "edge"):
        assert torch.equal(first[key], second[key]), key
    assert torch.equal(one[5]["image"], first["image"])
    assert first["meta"] == second["meta"] == {"id": "synthetic_nyud-train-000005", "size": (96, 128)}


def test_splits_and_seeds_give_different_scenes() -> None:
    images = [render_scene("synthetic_nyud", split, 0)["rgb"] for split in ("train", "val", "test")]
    images.append(render_scene("synthetic_nyud", "train", 0, seed=1)["rgb"])
    images.append(render_scene("synthetic_nyud", "train", 1)["rgb"])
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j]), (i, j)


# ---------------------------------------------------------------------------------------------
# Sample contract


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(96, 128), (64, 80), (240, 320)])
def test_sample_shapes_dtypes_and_ranges(name: str, size: tuple[int, int]) -> None:
    h, w = size
    ds = build_dataset(name, split="val", tasks=None, height=h, width=w, num_val=3)
    assert len(ds) == 3
    s = ds[2]
    assert set(s) == {"image", "meta", *DATASET_TASKS[name]}
    assert s["meta"] == {"id": f"{name}-val-000002", "size": (h, w)}
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, h, w)
    sem = s["semseg"]
    assert sem.dtype == torch.int64 and sem.shape == (h, w)
    assert set(sem.unique().tolist()) <= set(range(len(SYNTHETIC_SEMSEG_CLASSES)))
    normals = s["normals"]
    assert normals.dtype == torch.float32 and normals.shape == (3, h, w)
    assert torch.allclose(normals.norm(dim=0), torch.ones(h, w), atol=1e-5)  # closed room: all valid
    edge = s["edge"]
    assert edge.dtype == torch.float32 and edge.shape == (1, h, w)
    assert set(edge.unique().tolist()) <= {0.0, 1.0} and edge.sum() > 0
    if "depth" in s:
        assert s["depth"].dtype == torch.float32 and s["depth"].shape == (1, h, w)
        assert 0.5 < s["depth"].min() and s["depth"].max() < 10.5  # metres, NYUD-like
    if "sal" in s:
        assert s["sal"].dtype == torch.int64 and s["sal"].shape == (h, w)
        assert set(s["sal"].unique().tolist()) <= {0, 1}
    if "human_parts" in s:
        parts = s["human_parts"]
        assert parts.dtype == torch.int64 and parts.shape == (h, w)
        values = set(parts.unique().tolist())
        assert values == {IGNORE} or values <= set(range(len(HUMAN_PART_CLASSES)))


def test_requested_tasks_only_and_image_normalisation() -> None:
    ds = build_dataset("synthetic_pascal", split="test", tasks=["sal", "semseg"], num_test=4)
    s = ds[1]
    assert set(s) == {"image", "meta", "semseg", "sal"}
    rgb = torch.from_numpy(ds.render(1)["rgb"].copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(s["image"] * std + mean, rgb, atol=1e-5)
    assert ds.render(1)["rgb"].dtype == np.uint8


def test_default_split_sizes_options_and_batching() -> None:
    sizes = [len(build_dataset("synthetic_nyud", split=s, tasks=None)) for s in ("train", "val", "test")]
    assert sizes == [800, 200, 200]
    ds = build_dataset("synthetic_nyud", split="train", tasks=["depth"], num_train=5, cache=True)
    assert len(ds) == 5
    assert torch.equal(ds[4]["depth"], ds[-1]["depth"])  # the second read comes from the cache
    # Index 5 is the first draw of the second epoch (mtbench.engine.batching): scene 0 again.
    assert torch.equal(ds[5]["depth"], ds[0]["depth"]) and len(list(ds)) == 5
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["depth"].shape == (2, 1, 96, 128) and batch["meta"]["id"][1] == "synthetic_nyud-train-000001"


# ---------------------------------------------------------------------------------------------
# Consistency between labels


def test_edges_are_thin_and_lie_on_label_changes(scenes) -> None:
    for _, out in scenes:
        edge, inst, sem = out["edge"].astype(bool), out["instance"], out["semseg"]
        assert not (edge[:-1, :-1] & edge[:-1, 1:] & edge[1:, :-1] & edge[1:, 1:]).any()
        changes = np.zeros_like(edge)
        changes[:, :-1] |= inst[:, :-1] != inst[:, 1:]
        changes[:-1] |= inst[:-1] != inst[1:]
        assert not (edge & ~changes).any()  # every edge pixel is on an instance change
        sem_changes = np.zeros_like(edge)
        sem_changes[:, :-1] |= sem[:, :-1] != sem[:, 1:]
        sem_changes[:-1] |= sem[:-1] != sem[1:]
        padded, h, w = np.pad(edge, 1), *edge.shape
        near = np.zeros_like(edge)
        for dy in range(3):
            for dx in range(3):
                near |= padded[dy:dy + h, dx:dx + w]
        assert not (sem_changes & ~near).any()  # every semantic change has an edge within 1 px


def test_boundaries_break_two_by_two_blocks() -> None:
    labels = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    e = boundaries(labels)
    assert e.tolist() == [[True, True, True], [True, False, True], [True, True, False]]


def test_saliency_parts_and_semantics_agree(scenes) -> None:
    saw_ignored_parts = saw_parts = False
    for _, out in scenes:
        sem, parts = out["semseg"], out["human_parts"]
        assert np.array_equal(out["sal"] == 1, np.isin(sem, FOREGROUND_CLASSES))
        if (sem == FIGURE).any():
            saw_parts = True
            assert np.array_equal(parts > 0, sem == FIGURE)
        else:
            saw_ignored_parts = True
            assert (parts == IGNORE).all()
        assert np.array_equal(out["instance"] < len(ROOM_SURFACES), np.isin(sem, (FLOOR, WALL)))
    assert saw_parts and saw_ignored_parts


def test_class_coverage_over_fifty_images() -> None:
    for name in NAMES:
        seen_sem, seen_parts = set(), set()
        for i in range(50):
            out = render_scene(name, "train", i, height=48, width=64)
            seen_sem |= set(np.unique(out["semseg"]).tolist())
            seen_parts |= set(np.unique(out["human_parts"]).tolist())
        assert seen_sem == set(range(len(SYNTHETIC_SEMSEG_CLASSES))), name
        if name == "synthetic_pascal":
            assert set(range(len(HUMAN_PART_CLASSES))) <= seen_parts


# ---------------------------------------------------------------------------------------------
# Physical consistency


def test_normals_face_the_camera_and_depth_is_positive(scenes) -> None:
    for name, out in scenes:
        h, w = out["depth"].shape
        rays = _camera_rays(PRESETS[name].focal, h, w)
        assert (out["depth"] > 0).all()
        assert ((out["normals"] * rays).sum(-1) < 1e-6).all()


def test_level_camera_sees_floor_up_and_back_wall_facing() -> None:
    out = render(_level("synthetic_nyud", 4), 60, 80)
    floor, back = out["instance"] == 0, out["instance"] == 1
    assert floor.sum() > 100 and back.sum() > 100
    assert np.allclose(out["normals"][floor], (0.0, 1.0, 0.0), atol=1e-6)
    assert np.allclose(out["normals"][back], (0.0, 0.0, 1.0), atol=1e-6)


def test_pitched_camera_sees_tilted_floor() -> None:
    pitch = math.radians(20)
    out = render(_level("synthetic_nyud", 4, pitch=pitch), 60, 80)
    floor = out["instance"] == 0
    assert np.allclose(out["normals"][floor], (0.0, math.cos(pitch), math.sin(pitch)), atol=1e-6)


def test_floor_depth_grows_towards_the_horizon() -> None:
    scene = _level("synthetic_nyud", 2)
    h, w = 48, 64
    out = render(scene, h, w)
    f = scene.camera.focal * w
    rows = np.arange(h)[:, None].repeat(w, 1)
    floor = out["instance"] == 0
    # Level pinhole camera: a floor point seen at image offset v below the centre lies at h_cam / v.
    expected = scene.camera.height * f / (rows + 0.5 - h / 2)
    assert np.allclose(out["depth"][floor], expected[floor], rtol=1e-5)
    pitched = render_scene("synthetic_nyud", "train", 2, height=h, width=w)
    for col in range(w):
        d = pitched["depth"][:, col][pitched["instance"][:, col] == 0]
        assert (np.diff(d) < 0).all()  # any pitch: floor depth falls from row to row going down


def test_sphere_normals_point_away_from_its_centre() -> None:
    checked = 0
    for index in range(30):
        scene = _level("synthetic_nyud", index)
        h, w = 60, 80
        out = render(scene, h, w)
        o = np.array([0.0, scene.camera.height, 0.0])
        rays = _camera_rays(scene.camera.focal, h, w) * (1, 1, -1)  # level, yaw 0: world = camera, z flipped
        points = o + out["depth"][..., None] * rays
        world_normals = out["normals"] * (1, 1, -1)
        for k, obj in enumerate(scene.objects):
            mask = out["instance"] == len(ROOM_SURFACES) + k
            if obj.semantic != SPHERE or mask.sum() < 5:
                continue
            sphere = obj.primitives[0]
            offset = points[mask] - np.asarray(sphere.a)
            assert np.allclose(np.linalg.norm(offset, axis=1), sphere.radius, rtol=1e-4)
            assert np.allclose(offset / sphere.radius, world_normals[mask], atol=1e-3)
            checked += 1
    assert checked >= 3


def test_box_hits_lie_on_the_face_their_normal_names() -> None:
    checked = 0
    for index in range(20):
        scene = _level("synthetic_nyud", index)
        h, w = 60, 80
        out = render(scene, h, w)
        o = np.array([0.0, scene.camera.height, 0.0])
        points = o + out["depth"][..., None] * _camera_rays(scene.camera.focal, h, w) * (1, 1, -1)
        normals = out["normals"] * (1, 1, -1)
        for k, obj in enumerate(scene.objects):
            mask = out["instance"] == len(ROOM_SURFACES) + k
            if obj.semantic != BOX or mask.sum() < 5:
                continue
            box = obj.primitives[0]
            c, s = math.cos(box.yaw), math.sin(box.yaw)
            to_box = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])  # world -> box frame
            local, n_local = (points[mask] - box.a) @ to_box.T, normals[mask] @ to_box.T
            axis = np.abs(n_local).argmax(1)
            assert np.allclose(np.abs(n_local).max(1), 1.0, atol=1e-6)  # face normals are box axes
            rows = np.arange(len(axis))
            face = np.asarray(box.half)[axis] * np.sign(n_local[rows, axis])
            assert np.allclose(local[rows, axis], face, atol=1e-6)
            assert (np.abs(local) <= np.asarray(box.half) + 1e-6).all()
            checked += 1
    assert checked >= 3


def test_screen_space_culling_never_changes_the_result(monkeypatch) -> None:
    culled = [render_scene(name, "train", i, height=40, width=56) for name in NAMES for i in range(8)]

    def whole_image(centres, radii, origin, camera, height, width):
        return np.tile(np.array([0, height, 0, width]), (centres.shape[1], 1))

    monkeypatch.setattr(synthetic, "_screen_rects", whole_image)
    brute = [render_scene(name, "train", i, height=40, width=56) for name in NAMES for i in range(8)]
    for a, b in zip(culled, brute, strict=True):
        for key in a:
            assert np.array_equal(a[key], b[key]), key


def test_figures_stand_with_head_above_torso(scenes) -> None:
    checked = 0
    for _, out in scenes:
        for inst in np.unique(out["instance"][out["semseg"] == FIGURE]):
            rows = np.nonzero(out["instance"] == inst)[0]
            parts = out["human_parts"][out["instance"] == inst]
            head, torso = rows[parts == HEAD], rows[parts == TORSO]
            if len(head) > 3 and len(torso) > 3:
                assert head.mean() < torso.mean()
                checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------------------------
# User errors


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "synthetic_nyd", "split": "train"}, "Did you mean 'synthetic_nyud'"),
    ({"name": "synthetic_nyud", "split": "trian"}, "valid splits: train, val, test"),
    ({"name": "synthetic_nyud", "split": "train", "tasks": ["sal"]}, "'sal' is not available"),
    ({"name": "synthetic_pascal", "split": "train", "tasks": ["depth"]}, "'depth' is not available"),
    ({"name": "synthetic_nyud", "split": "train", "tasks": ["segm"]}, "unknown task 'segm'"),
    ({"name": "synthetic_nyud", "split": "train", "num_trian": 3}, "unknown option 'num_trian'"),
    ({"name": "synthetic_nyud", "split": "train", "protocol": "atrc"}, "protocol=None"),
    ({"name": "synthetic_nyud", "split": "train", "height": 0}, "'height'"),
])
def test_user_errors(kwargs: dict, message: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(MtbenchError, match=re.escape(message)) as info:
        build_dataset(name, **{"tasks": None, **kwargs})
    if "num_trian" in kwargs:
        assert "Did you mean 'num_train'" in str(info.value)
