"""Tests of mtbench.data.transforms: geometry per key, padding and ignore rules, determinism, metric invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtbench.data.dataset import normalize_image
from mtbench.data.transforms import (
    build_transform,
    centre_pad,
    fixed_resize,
    hflip,
    hsv_to_rgb,
    photometric_distortion,
    random_crop,
    rescale,
    rgb_to_hsv,
    scale_rotate,
)
from mtbench.errors import MtbenchError
from mtbench.metrics import build_meter

SEMSEG_VALUES = (0, 3, 7, 255)
PARTS_VALUES = (0, 2, 5, 255)


def make_raw(h: int = 40, w: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """A raw sample whose normals' y component encodes the source pixel index, so that every output pixel can
    be traced back to the input pixel it was copied from (ny = (index + 1) / 4096, nx = 0.3 > 0)."""
    rng = np.random.default_rng(seed)
    index = np.arange(h * w, dtype=np.float32).reshape(h, w)
    ny = (index + 1) / 4096
    nx = np.full_like(ny, 0.3)
    normals = np.stack([nx, ny, np.sqrt(1 - nx**2 - ny**2)], axis=-1).astype(np.float32)
    return {
        "rgb": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "semseg": rng.choice(np.array(SEMSEG_VALUES, dtype=np.uint8), (h, w)),
        "human_parts": rng.choice(np.array(PARTS_VALUES, dtype=np.uint8), (h, w)),
        "sal": rng.choice(np.array([0, 1, 255], dtype=np.uint8), (h, w)),
        "edge": rng.choice(np.array([0.0, 1.0, 255.0], dtype=np.float32), (h, w)),
        "depth": rng.uniform(0.5, 10.0, (h, w)).astype(np.float32),
        "normals": normals,
    }


def large_raw(h: int, w: int) -> dict[str, np.ndarray]:
    """make_raw at a size past its normals' index encoding, with random unit normals and a zero (invalid) block."""
    with np.errstate(invalid="ignore"):
        raw = make_raw(h, w)
    n = np.random.default_rng(0).normal(size=(h, w, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[: h // 4, : w // 4] = 0.0
    return {**raw, "normals": n}


def source_index(normals: torch.Tensor) -> torch.Tensor:
    return (normals[1] * 4096).round().long() - 1


# ------------------------------------------------------------------------------------------------ flip

def test_hflip_mirrors_every_map_and_negates_normals_x() -> None:
    raw = make_raw(3, 4)
    out = hflip(raw)
    for key in ("rgb", "semseg", "human_parts", "sal", "edge", "depth"):
        np.testing.assert_array_equal(out[key][:, 0], raw[key][:, 3], err_msg=key)
        np.testing.assert_array_equal(out[key][:, 3], raw[key][:, 0], err_msg=key)
    np.testing.assert_array_equal(out["normals"][1, 0], raw["normals"][1, 3] * np.array([-1, 1, 1], np.float32))
    assert raw["normals"][0, 0, 0] == pytest.approx(0.3)  # the input is not modified


def test_atrc_train_keeps_every_map_on_the_same_source_pixel() -> None:
    """Scale, crop, flip: each output pixel's labels are the input's at the pixel its normals came from, depth
    is divided by one factor in [0.5, 2] per sample, and nx < 0 exactly when the row runs right to left."""
    raw = make_raw()
    transform = build_transform("atrc", family="nyud", train=True, crop_size=(32, 40))
    flips = set()
    for seed in range(12):
        out = transform(raw, np.random.default_rng(seed))
        valid = out["normals"].norm(dim=0) > 0  # padding is zero
        idx = source_index(out["normals"])[valid]
        for key in ("semseg", "human_parts", "sal"):
            assert torch.equal(out[key][valid], torch.from_numpy(raw[key].astype(np.int64)).view(-1)[idx]), key
        assert torch.equal(out["edge"][0][valid], torch.from_numpy(raw["edge"]).view(-1)[idx])
        ratio = torch.from_numpy(raw["depth"]).view(-1)[idx] / out["depth"][0][valid]
        assert 0.5 - 1e-6 <= float(ratio.min()) and float(ratio.max()) <= 2.0 + 1e-6
        assert float(ratio.max() - ratio.min()) < 1e-5 * float(ratio.max())
        flipped = bool(out["normals"][0][valid][0] < 0)
        assert bool((out["normals"][0][valid] < 0).all()) == flipped
        columns = source_index(out["normals"]) % raw["rgb"].shape[1]
        row = columns[valid.nonzero()[0][0]][valid[valid.nonzero()[0][0]]]
        steps = row[1:] - row[:-1]
        assert bool((steps <= 0).all() if flipped else (steps >= 0).all())
        flips.add(flipped)
    assert flips == {True, False}


# --------------------------------------------------------------------------------------------- scaling

def test_rescale_doubles_size_nearest_for_labels_and_halves_depth() -> None:
    raw = {"rgb": np.zeros((2, 2, 3), np.uint8), "semseg": np.array([[1, 2], [3, 255]], np.uint8),
           "depth": np.array([[2.0, 4.0], [0.0, 8.0]], np.float32)}
    out = rescale(raw, 2.0)
    np.testing.assert_array_equal(out["semseg"], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 255, 255], [3, 3, 255, 255]])
    np.testing.assert_array_equal(out["depth"][::2, ::2], [[1.0, 2.0], [0.0, 4.0]])
    assert out["semseg"].dtype == np.uint8


def test_rescale_floors_the_new_size() -> None:
    raw = make_raw(5, 7)
    out = rescale(raw, 0.75)
    assert {key: a.shape[:2] for key, a in out.items()} == dict.fromkeys(raw, (3, 5))


@pytest.mark.parametrize("protocol,family", [("atrc", "nyud"), ("mtinet", "pascal_context"), ("mtinet", "nyud")])
def test_labels_stay_in_their_value_sets(protocol: str, family: str) -> None:
    raw = make_raw(24, 30)
    crop = {"crop_size": (20, 24)} if protocol == "atrc" else {}
    transform = build_transform(protocol, family=family, train=True, **crop)
    for seed in range(4):
        out = transform(raw, np.random.default_rng(seed))
        for key, legal in (("semseg", SEMSEG_VALUES), ("human_parts", PARTS_VALUES), ("sal", (0, 1, 255)),
                           ("edge", (0.0, 1.0, 255.0))):
            assert bool(torch.isin(out[key], torch.tensor(legal, dtype=out[key].dtype)).all()), key


# ------------------------------------------------------------------------------------------------ crop

def test_cat_max_ratio_retries_until_a_crop_holds_two_balanced_classes() -> None:
    """Left half class 1, right half class 2; a 10x10 crop at column offset o (0..10) passes when
    max(10 - o, o) / 10 < 0.75, i.e. o in 3..7 (5 of 11 offsets). Replaying the rng stream gives the expected
    offset: the first passing one of the first 10 draws, else the 11th, unchecked (as ATRC)."""
    semseg = np.ones((10, 20), np.uint8)
    semseg[:, 10:] = 2
    raw = {"rgb": np.zeros((10, 20, 3), np.uint8), "semseg": semseg, "depth": np.tile(np.arange(20.0), (10, 1))}
    first_failed = balanced = 0
    for seed in range(30):
        out = random_crop(raw, (10, 10), np.random.default_rng(seed))
        replay = np.random.default_rng(seed)
        draws = [(int(replay.integers(0, 1)), int(replay.integers(0, 11))) for _ in range(11)]
        expected = next((o for _, o in draws[:10] if 3 <= o <= 7), draws[10][1])
        assert out["depth"][0, 0] == expected, seed
        counts = np.bincount(out["semseg"].ravel())[1:]
        balanced += len(counts) == 2 and counts.max() / counts.sum() < 0.75
        first_failed += not 3 <= draws[0][1] <= 7
    assert first_failed >= 10 and balanced >= 28  # the retry mattered, and almost always found a good crop


def test_crop_uses_the_last_drawn_location_unchecked_after_ten_failures() -> None:
    cols = np.tile(np.arange(20, dtype=np.uint8), (12, 1))
    raw = {"rgb": np.zeros((12, 20, 3), np.uint8), "semseg": np.zeros((12, 20), np.uint8), "depth": cols}
    out = random_crop(raw, (10, 10), np.random.default_rng(3))
    rng = np.random.default_rng(3)
    draws = [(int(rng.integers(0, 3)), int(rng.integers(0, 11))) for _ in range(11)]  # 1 + 10 re-draws
    top, left = draws[-1]
    assert out["depth"][0, 0] == left and out["depth"].shape == (10, 10)
    assert top in range(3)


# ---------------------------------------------------------------------------------------------- padding

def test_atrc_eval_pads_around_the_centre_with_each_tasks_fill() -> None:
    raw = make_raw(5, 6)
    out = build_transform("atrc", family="pascal_context", train=False, pad_to=(8, 11))(raw, np.random.default_rng())
    plain = build_transform(None, family="pascal_context", train=False)(raw, np.random.default_rng())
    top, left = 1, 2  # dh = 3 -> 1 above, 2 below; dw = 5 -> 2 left, 3 right
    fills = {"image": 0.0, "semseg": 255, "human_parts": 255, "sal": 255, "edge": 255.0, "depth": 0.0,
             "normals": 0.0}
    for key, fill in fills.items():
        full = out[key]
        assert full.shape[-2:] == (8, 11) and full.dtype == plain[key].dtype, key
        assert torch.equal(full[..., top:top + 5, left:left + 6], plain[key]), key
        mask = torch.ones(8, 11, dtype=torch.bool)
        mask[top:top + 5, left:left + 6] = False
        assert bool((full[..., mask] == fill).all()), key


def test_eval_pad_never_resizes_or_crops() -> None:
    raw = make_raw(9, 6)
    out = build_transform("atrc", family="nyud", train=False, pad_to=(8, 10))(raw, np.random.default_rng())
    plain = build_transform(None, family="nyud", train=False)(raw, np.random.default_rng())
    for key, tensor in out.items():
        assert tensor.shape[-2:] == (9, 10), key
        assert torch.equal(tensor[..., :, 2:8], plain[key]), key


def test_centre_pad_keeps_dtype_and_channels() -> None:
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    out = centre_pad(a, (3, 5), 0.0)
    assert out.shape == (3, 5, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1, 1:3], a[0])


# --------------------------------------------------------------------------------------------- ignore

@pytest.mark.parametrize("protocol", ["atrc", "mtinet"])
def test_human_parts_without_parts_is_ignored_whole(protocol: str) -> None:
    raw = make_raw(6, 8)
    transform = build_transform(protocol, family="pascal_context", train=False)
    raw["human_parts"] = np.zeros((6, 8), np.uint8)
    assert bool((transform(raw, np.random.default_rng())["human_parts"] == 255).all())
    raw["human_parts"][2, 3] = 4
    parts = transform(raw, np.random.default_rng())["human_parts"]
    assert set(parts.unique().tolist()) == ({0, 4, 255} if protocol == "atrc" else {0, 4})


def test_atrc_treats_a_parts_map_of_background_and_ignore_as_empty() -> None:
    raw = make_raw(6, 8)
    raw["human_parts"] = np.zeros((6, 8), np.uint8)
    raw["human_parts"][0] = 255
    out = build_transform("atrc", family="pascal_context", train=False)(raw, np.random.default_rng())
    assert bool((out["human_parts"] == 255).all())


# ------------------------------------------------------------------------------------------------ mtinet

def test_scale_rotate_follows_opencv_get_rotation_matrix() -> None:
    """90° about (w/2, h/2) = (2, 2) maps src (x, y) to dst (y, 4 - x): dst[y, x] = src[x, 4 - y] for y >= 1,
    and row 0 samples column 4, outside the map, so it is the 0 border."""
    sem = np.arange(16, dtype=np.uint8).reshape(4, 4) + 1
    out = scale_rotate({"rgb": np.zeros((4, 4, 3), np.uint8), "semseg": sem}, 90.0, 1.0)["semseg"]
    expected = np.zeros((4, 4), np.uint8)
    for y in range(1, 4):
        for x in range(4):
            expected[y, x] = sem[x, 4 - y]
    np.testing.assert_array_equal(out, expected)


def test_zoom_divides_depth_and_rotation_turns_normals_in_plane() -> None:
    raw = {"rgb": np.zeros((8, 8, 3), np.uint8), "depth": np.full((8, 8), 3.0, np.float32),
           "normals": np.tile(np.array([1.0, 0.0, 0.0], np.float32), (8, 8, 1))}
    zoomed = scale_rotate(raw, 0.0, 1.5)
    np.testing.assert_allclose(zoomed["depth"], 2.0)  # a zoom leaves no border
    turned = scale_rotate(raw, 90.0, 1.0)["normals"][3:5, 3:5]  # reference: a = atan2(1, 0); (sin, cos)(a + 90°)
    np.testing.assert_allclose(turned, np.tile([0.0, -1.0, 0.0], (2, 2, 1)), atol=1e-5)


@pytest.mark.parametrize("family,size", [("nyud", (480, 640)), ("pascal_context", (512, 512))])
def test_mtinet_resizes_to_the_fixed_size_with_unit_normals(family: str, size: tuple[int, int]) -> None:
    raw = make_raw(30, 40)
    raw["normals"][10:20, 10:30] = 0.0  # invalid block
    out = build_transform("mtinet", family=family, train=True)(raw, np.random.default_rng(1))
    assert {key: tuple(t.shape[-2:]) for key, t in out.items()} == dict.fromkeys(out, size)
    assert float(out["normals"].norm(dim=0).max()) <= 1 + 1e-5
    norm = np.linalg.norm(fixed_resize(raw, size)["normals"], axis=-1)  # the FixedResize step alone
    assert float(norm.max()) <= 1 + 1e-5
    centre = norm[size[0] // 2 - 10:size[0] // 2 + 10, size[1] // 2 - 10:size[1] // 2 + 10]
    assert bool((centre == 0).all())  # the invalid block stays exactly zero
    assert bool((np.abs(norm - 1) < 1e-5).mean() > 0.6)


def test_mtinet_eval_resizes_the_image_and_keeps_the_labels_at_the_original_size() -> None:
    """A PASCAL image of 375x500: the network sees 512x512, the labels stay 375x500 as the release scores them
    (SimonVandenhende/Multi-Task-Learning-PyTorch: evaluation/evaluate_utils.py::eval_all_results)."""
    raw = large_raw(375, 500)
    del raw["depth"]
    transform = build_transform("mtinet", family="pascal_context", train=False)
    out = transform(raw, np.random.default_rng(0))
    assert transform.name == "mtinet/eval 512x512 labels original"
    assert out["image"].shape == (3, 512, 512)
    assert {key: tuple(t.shape[-2:]) for key, t in out.items() if key != "image"} == dict.fromkeys(
        ("semseg", "human_parts", "sal", "edge", "normals"), (375, 500))
    for key in ("semseg", "human_parts", "sal"):
        assert torch.equal(out[key], torch.from_numpy(raw[key].astype(np.int64)))
    assert torch.equal(out["edge"][0], torch.from_numpy(raw["edge"]))
    torch.testing.assert_close(out["normals"], torch.from_numpy(raw["normals"]).permute(2, 0, 1))


def test_mtinet_eval_of_a_nyud_sample_is_as_before() -> None:
    """NYUD images are 480x640 already: the eval sample is bit for bit the old one, everything through
    FixedResize to 480x640."""
    raw = {k: v for k, v in large_raw(480, 640).items() if k not in ("sal", "human_parts")}
    out = build_transform("mtinet", family="nyud", train=False)(raw, np.random.default_rng(0))
    before = build_transform(None, family="nyud", train=False)(fixed_resize(raw, (480, 640)), np.random.default_rng(0))
    assert out.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(out[key], value), key


# ---------------------------------------------------------------------------------------- photometric

def test_hsv_matches_opencv_ranges_on_known_colours() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 128, 0], [0, 0, 0]]], np.uint8)
    hsv = rgb_to_hsv(rgb)
    np.testing.assert_array_equal(hsv[0], [[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128],
                                           [15, 255, 255], [0, 0, 0]])
    np.testing.assert_array_equal(hsv_to_rgb(hsv)[0, [0, 1, 2, 3, 5]], rgb[0, [0, 1, 2, 3, 5]])
    np.testing.assert_array_equal(hsv_to_rgb(np.array([[[30, 255, 255]]], np.uint8)), [[[255, 255, 0]]])


def test_photometric_distortion_is_uint8_and_seeded() -> None:
    rgb = make_raw(8, 8)["rgb"]
    outs = [photometric_distortion(rgb, np.random.default_rng(s)) for s in (0, 0, 1, 2, 3)]
    assert all(o.dtype == np.uint8 and o.shape == rgb.shape for o in outs)
    assert np.array_equal(outs[0], outs[1])
    assert any(not np.array_equal(o, rgb) for o in outs)


# ---------------------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("protocol,family", [("atrc", "nyud"), ("mtinet", "pascal_context")])
def test_same_seed_same_sample_and_other_seed_other_sample(protocol: str, family: str) -> None:
    raw = make_raw(24, 30)
    copy = {key: a.copy() for key, a in raw.items()}
    crop = {"crop_size": (20, 24)} if protocol == "atrc" else {}
    transform = build_transform(protocol, family=family, train=True, **crop)
    a, b, c = (transform(raw, np.random.default_rng(s)) for s in (5, 5, 6))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert any(a[key].shape != c[key].shape or not torch.equal(a[key], c[key]) for key in a)
    assert all(np.array_equal(raw[key], copy[key]) for key in raw)  # the raw sample is never modified


# ------------------------------------------------------------------------------------------------ metrics

@pytest.mark.parametrize("task,dataset,channels", [("semseg", "nyud", 40), ("depth", "nyud", 1),
                                                   ("normals", "nyud", 3), ("human_parts", "pascal_context", 7),
                                                   ("sal", "pascal_context", 1)])
def test_padding_never_changes_a_metric(task: str, dataset: str, channels: int) -> None:
    rng = np.random.default_rng(0)
    raw = make_raw(10, 13)
    raw["semseg"] = rng.integers(0, 40, (10, 13)).astype(np.uint8)
    raw["human_parts"] = rng.integers(0, 7, (10, 13)).astype(np.uint8)
    raw["depth"][0, :4] = 0.0  # some invalid depth inside the image
    raw = {"rgb": raw["rgb"], task: raw[task]}
    family = "pascal_context" if dataset == "pascal_context" else "nyud"
    target = build_transform(None, family=family, train=False)(raw, rng)[task][None]
    padded = build_transform("atrc", family=family, train=False, pad_to=(16, 20))(raw, rng)[task][None]
    assert padded.shape[-2:] == (16, 20)
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(1, channels, 10, 13, generator=gen) * 4 - 1
    garbage = torch.rand(1, channels, 16, 20, generator=gen) * 50 + 3
    garbage[..., 3:13, 3:16] = pred  # top = 6 // 2, left = 7 // 2
    plain_meter, padded_meter = build_meter(task, dataset=dataset), build_meter(task, dataset=dataset)
    plain_meter.update(pred, target)
    padded_meter.update(garbage, padded)
    if task == "normals":  # float32 atan2 may differ by an ulp between vectorised and scalar lanes
        assert padded_meter.compute() == pytest.approx(plain_meter.compute(), rel=1e-7)
    else:
        assert padded_meter.compute() == plain_meter.compute()


# ------------------------------------------------------------------------------------------------ config

def test_names_and_defaults() -> None:
    assert build_transform("atrc", family="nyud", train=True).name == "atrc/train 425x560 pad 425x560"
    assert build_transform("atrc", family="nyud", train=True, pad_to=(428, 560)).name == \
        "atrc/train 425x560 pad 428x560"
    assert build_transform("atrc", family="pascal_context", train=False).name == "atrc/eval pad 512x512"
    assert build_transform("atrc", family="nyud", train=False, crop_size=[448, 576]).name == "atrc/eval pad 448x576"
    assert build_transform("mtinet", family="nyud", train=True).name == "mtinet/train 480x640"
    assert build_transform("mtinet", family="pascal_context", train=False).name == "mtinet/eval 512x512 labels original"
    assert build_transform(None, family="nyud", train=True).name == "none"


@pytest.mark.parametrize("kwargs,match", [
    ({"protocol": "invpt", "family": "nyud"}, "valid: None, atrc, mtinet"),
    ({"protocol": "atrc", "family": "nyudv2"}, "valid: nyud, pascal_context"),
    ({"protocol": "atrc", "family": "nyud", "crop_size": (0, 5)}, "positive integers"),
    ({"protocol": "atrc", "family": "nyud", "pad_to": (4.0, 5)}, "positive integers"),
    ({"protocol": "atrc", "family": "nyud", "crop_size": (425,)}, "positive integers"),
    ({"protocol": "mtinet", "family": "nyud", "crop_size": (425, 560)}, "'atrc' protocol only"),
    ({"protocol": "atrc", "family": "nyud", "pad_to": (400, 560)}, "smaller than crop_size"),
])
def test_bad_options_are_user_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(MtbenchError, match=match):
        build_transform(train=True, **kwargs)


def test_protocol_none_only_converts() -> None:
    raw = make_raw(7, 9)
    out = build_transform(None, family="nyud", train=True)(raw, np.random.default_rng(0))
    assert torch.equal(out["image"], normalize_image(raw["rgb"]))
    assert out["semseg"].dtype == torch.long and out["depth"].shape == (1, 7, 9) and out["normals"].shape == (3, 7, 9)
    assert "meta" not in out
