"""Training/evaluation transforms of the real datasets: raw arrays in, a Sample out (PROTOCOLS.md "Datasets").

A raw sample is `dict[str, np.ndarray]`: the image, uint8 `rgb` (H, W, 3), and one map per task in its raw
convention (class maps uint8 with the task's ignore value, `depth` float32 metres with 0 = invalid, `normals`
float32 (H, W, 3) with the zero vector = invalid, `edge` float32 in [0, 1] with the ignore value). How a task's
map moves (interpolation, depth scaling, normals' sign and rotation, pad fill, crop balance, the human-parts
ignore rule) is read from its `mtbench.tasks.TaskSpec`. The output is a Sample without `meta` (DESIGN.md "Core
contracts"); the loader adds `meta`.

Presets (`build_transform`):
- None: normalise and convert only, at the original size (what loaders are tested on).
- `atrc` (ATRC, DeMT, InvPT; brdav/atrc src/data/transforms.py, order of src/data/pl_data.py): train =
  RandomScaling [0.5, 2] -> RandomCrop (cat_max_ratio 0.75) -> RandomHorizontalFlip -> PhotoMetricDistortion
  -> Normalize -> PadImage (centred) -> AddIgnoreRegions; eval = Normalize -> PadImage -> AddIgnoreRegions.
- `mtinet` (SimonVandenhende/Multi-Task-Learning-PyTorch utils/common_config.py::get_transformations): train =
  RandomHorizontalFlip -> ScaleNRotate -> FixedResize -> AddIgnoreRegions -> Normalize; eval = FixedResize of the
  image only -> AddIgnoreRegions -> Normalize, every label kept at the image's original size: the release scores
  its predictions resized back to the original size against the original labels
  (evaluation/evaluate_utils.py::save_model_predictions, eval_all_results), which mtbench.engine.evaluate does
  (`TaskSpec.resize_back`). NYUD's images already have the resize size, so nothing changes there.

All randomness comes from the `rng` passed to the call, so a sample is a pure function of (raw, rng state),
which exact resume relies on. Resizing uses torch's `interpolate` (nearest = OpenCV INTER_NEAREST's floor
mapping; bilinear/bicubic with align_corners=False = INTER_LINEAR/INTER_CUBIC's half-pixel centres); labels
are only ever resampled with nearest, so no value between a class and the ignore label can appear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mtbench.data.dataset import normalize_image, to_sample_tensor
from mtbench.errors import MtbenchError
from mtbench.tasks import TASK_NAMES, TaskSpec, get_task

Arrays = dict[str, np.ndarray]
Size = tuple[int, int]

IMAGE = "rgb"  # the raw sample's image key; every other key is a task
PROTOCOLS = ("atrc", "mtinet")
FAMILIES = ("nyud", "pascal_context")

# ATRC `image_dims` (train crop = eval pad); InvPT uses (448, 576) for NYUD, passed as crop_size.
ATRC_CROP: dict[str, Size] = {"nyud": (425, 560), "pascal_context": (512, 512)}
# MTI-Net `TRAIN.SCALE = TEST.SCALE` (FixedResize, aspect ratio not kept).
MTINET_SIZE: dict[str, Size] = {"nyud": (480, 640), "pascal_context": (512, 512)}
CAT_MAX_RATIO = 0.75
CROP_TRIES = 10


# ---------------------------------------------------------------------------------------------- geometry

def _resize(a: np.ndarray, size: Size, mode: str) -> np.ndarray:
    """Resize an (H, W[, C]) array to `size` with torch interpolate; the result is float32."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    t = t[None, None] if a.ndim == 2 else t.permute(2, 0, 1)[None]
    align = None if mode == "nearest" else False
    out = F.interpolate(t, size=size, mode=mode, align_corners=align)[0]
    return (out[0] if a.ndim == 2 else out.permute(1, 2, 0)).numpy()


def _restore(spec: TaskSpec, resampled: np.ndarray, original: np.ndarray, zoom: float) -> np.ndarray:
    """A resampled label back in its raw convention: a class map in its dtype, a zoom-scaled value (depth)
    divided by the zoom factor, other dense maps as resampled (float32)."""
    if spec.is_class_map:
        return resampled.astype(original.dtype)
    return resampled / zoom if spec.scales_with_zoom else resampled


def _is_unit_vectors(key: str) -> bool:
    """Whether `key` holds direction vectors (normals: `TaskSpec.unit_vectors`); the image does not."""
    return key != IMAGE and get_task(key).unit_vectors


def rescale(arrays: Arrays, scale: float) -> Arrays:
    """ATRC RandomScaling for one factor: size floor(H·s) x floor(W·s), image bilinear, every label nearest
    (normals not renormalised, edges not re-thinned, as the reference), depth divided by `scale`."""
    if scale == 1.0:
        return arrays
    h, w = arrays[IMAGE].shape[:2]
    size = (int(h * scale), int(w * scale))
    out = {}
    for key, a in arrays.items():
        if key == IMAGE:
            out[key] = _resize(a, size, "bilinear")
        else:
            out[key] = _restore(get_task(key), _resize(a, size, "nearest"), a, scale)
    return out


def _crop_loc(shape: tuple[int, ...], size: Size, rng: np.random.Generator) -> tuple[int, int] | None:
    """ATRC RandomCrop.get_random_crop_loc: uniform offsets, None when the map already has the crop size."""
    h, w = shape[:2]
    if (h, w) == size:
        return None
    return int(rng.integers(0, max(h - size[0], 0) + 1)), int(rng.integers(0, max(w - size[1], 0) + 1))


def _crop(a: np.ndarray, loc: tuple[int, int] | None, size: Size) -> np.ndarray:
    # A dimension smaller than the crop is taken whole (the slice stops at its end); PadImage fills it later.
    return a if loc is None else a[loc[0]:loc[0] + size[0], loc[1]:loc[1] + size[1]]


def _balanced_key(arrays: Arrays) -> str | None:
    """The map whose classes the random crop balances (the first task with `balances_crop`), if present."""
    return next((key for key in arrays if key != IMAGE and get_task(key).balances_crop), None)


def _is_balanced(labels: np.ndarray, ignore: int | None, cat_max_ratio: float) -> bool:
    """More than one class, the largest (ignored pixels excluded) under `cat_max_ratio` of the labelled pixels."""
    values, counts = np.unique(labels, return_counts=True)
    if ignore is not None:
        counts = counts[values != ignore]
    return bool(len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio)


def random_crop(arrays: Arrays, size: Size, rng: np.random.Generator,
                cat_max_ratio: float = CAT_MAX_RATIO) -> Arrays:
    """ATRC RandomCrop: one location for every key, re-drawn up to 10 times until the crop of the balanced map
    (semseg, `TaskSpec.balances_crop`) holds more than one class and its largest class (ignored pixels
    excluded) is under `cat_max_ratio` of the labelled pixels.

    As in the reference, after 10 rejected locations the 11th drawn one is used without being checked.
    Without a balanced map there is nothing to check (ATRC always loads semseg; a loader that wants the
    reference crop for other tasks must pass semseg too).
    """
    loc = _crop_loc(arrays[IMAGE].shape, size, rng)
    key = _balanced_key(arrays)
    if key is not None and cat_max_ratio < 1.0:
        ignore = get_task(key).ignore
        for _ in range(CROP_TRIES):
            if _is_balanced(_crop(arrays[key], loc, size), ignore, cat_max_ratio):
                break
            loc = _crop_loc(arrays[IMAGE].shape, size, rng)
    return {k: _crop(a, loc, size) for k, a in arrays.items()}


def hflip(arrays: Arrays) -> Arrays:
    """Mirror every map left-right; the normals' x component changes sign (both references)."""
    out = {key: a[:, ::-1].copy() for key, a in arrays.items()}
    for key, a in out.items():
        if _is_unit_vectors(key):
            a[..., 0] *= -1
    return out


def pad_offsets(shape: Sequence[int], size: Size) -> tuple[int, int]:
    """(top, left) of ATRC's centred PadImage: half of the missing rows/columns (floored), 0 if none miss."""
    return max(size[0] - shape[0], 0) // 2, max(size[1] - shape[1], 0) // 2


def centre_pad(a: np.ndarray, size: Size, fill: float) -> np.ndarray:
    """ATRC PadImage: pad the dimensions smaller than `size` around the centre with `fill`; never crop."""
    h, w = a.shape[:2]
    top, left = pad_offsets(a.shape, size)
    out = np.full((max(h, size[0]), max(w, size[1]), *a.shape[2:]), fill, dtype=a.dtype)
    out[top:top + h, left:left + w] = a
    return out


def scale_rotate(arrays: Arrays, angle: float, scale: float) -> Arrays:
    """MTI-Net ScaleNRotate for one draw: cv2.warpAffine with getRotationMatrix2D((w/2, h/2), angle, scale)
    at the same size, border 0 for every key; image and normals bicubic, labels nearest.

    The normals' in-plane component is rotated by `angle` first (reference: a = atan2(nx, ny),
    nx = r·sin(a + θ), ny = r·cos(a + θ), written here in its closed form); depth is divided by `scale`.
    """
    if angle == 0.0 and scale == 1.0:
        return arrays
    h, w = arrays[IMAGE].shape[:2]
    cx, cy = w / 2, h / 2
    theta = math.radians(angle)
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    # Source pixel of each destination pixel: the inverse of dst - c = s·[[cos, sin], [-sin, cos]]·(src - c).
    sx = cx + cos * (xs - cx) - sin * (ys - cy)
    sy = cy + sin * (xs - cx) + cos * (ys - cy)
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1)[None].float()
    out = {}
    for key, a in arrays.items():
        smooth = key == IMAGE or _is_unit_vectors(key)
        if _is_unit_vectors(key):
            nx, ny = a[..., 0], a[..., 1]
            a = np.stack([nx * math.cos(theta) + ny * math.sin(theta),
                          ny * math.cos(theta) - nx * math.sin(theta), a[..., 2]], axis=-1)
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        t = t[None, None] if a.ndim == 2 else t.permute(2, 0, 1)[None]
        r = F.grid_sample(t, grid, mode="bicubic" if smooth else "nearest", padding_mode="zeros",
                          align_corners=False)[0]
        r = (r[0] if a.ndim == 2 else r.permute(1, 2, 0)).numpy()
        out[key] = r if smooth else _restore(get_task(key), r, a, scale)
    return out


def fixed_resize(arrays: Arrays, size: Size, *, label_size: Size | None = None) -> Arrays:
    """MTI-Net FixedResize to exactly `size` (aspect ratio not kept): image bicubic, clipped to [0, 255] and
    truncated to uint8 (the reference casts without clipping, which wraps overshoot around); labels nearest;
    normals bicubic, then n / (|n| + eps) as the reference, so zero vectors stay zero.

    The labels go to `label_size` instead when given: the eval keeps them at the original size, where this is
    the identity but for the normals' n / (|n| + eps), so a NYUD sample (480x640 already) is as before."""
    out = {}
    for key, a in arrays.items():
        if key == IMAGE:
            out[key] = np.clip(_resize(a, size, "bicubic"), 0, 255).astype(np.uint8)
        elif _is_unit_vectors(key):
            n = _resize(a, label_size or size, "bicubic")
            out[key] = n / (np.linalg.norm(n, axis=-1, keepdims=True) + np.finfo(np.float32).eps)
        else:  # FixedResize leaves depth values as they are: no zoom
            out[key] = _restore(get_task(key), _resize(a, label_size or size, "nearest"), a, 1.0)
    return out


# ------------------------------------------------------------------------------------------- photometric

def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV as OpenCV's COLOR_RGB2HSV: H in [0, 180) (degrees / 2), S and V in [0, 255],
    rounded half up like OpenCV's fixed-point arithmetic."""
    c = rgb.astype(np.int32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    v = c.max(-1)
    diff = v - c.min(-1)
    s = np.floor(255.0 * diff / np.maximum(v, 1) + 0.5)
    h_raw = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = np.floor(30.0 * h_raw / np.maximum(diff, 1) + 0.5)
    h = np.where(h < 0, h + 180, h) % 180
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV (OpenCV ranges) -> uint8 RGB as OpenCV's COLOR_HSV2RGB (float sectors, rounded)."""
    h = hsv[..., 0].astype(np.float32) * (6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) / 255.0
    v = hsv[..., 2].astype(np.float32) / 255.0
    sector = np.floor(h)
    f = h - sector
    sector = sector.astype(np.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(sector, [v, q, p, p, t, v])
    g = np.choose(sector, [t, v, v, q, p, p])
    b = np.choose(sector, [p, p, t, v, v, q])
    return np.clip(np.rint(np.stack([r, g, b], axis=-1) * 255.0), 0, 255).astype(np.uint8)


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg PhotoMetricDistortion.convert: affine change, clip, truncate to uint8.
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ATRC PhotoMetricDistortion (an mmseg port, no channel swap): each step with p = 0.5, brightness
    ±32, contrast x[0.5, 1.5] before or after (p = 0.5) saturation x[0.5, 1.5] and hue shift -18..17 on
    OpenCV's 180-step scale. The input is truncated to uint8 first, as the reference; returns uint8."""
    img = rgb.astype(np.uint8)
    if rng.random() < 0.5:
        img = _convert(img, beta=rng.uniform(-32, 32))
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        img = _convert(img, alpha=rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        hsv = rgb_to_hsv(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        img = hsv_to_rgb(hsv)
    if rng.random() < 0.5:
        hsv = rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(rng.integers(-18, 18))) % 180
        img = hsv_to_rgb(hsv)
    if not contrast_first and rng.random() < 0.5:
        img = _convert(img, alpha=rng.uniform(0.5, 1.5))
    return img


# ----------------------------------------------------------------------------------------------- presets

def _ignore_without_foreground(arrays: Arrays, padded: bool) -> Arrays:
    """AddIgnoreRegions for the tasks with `ignored_without_foreground` (human_parts): the whole map becomes
    the ignore value when it holds no foreground pixel, i.e. only background (0) and, where padding added it
    (ATRC), the ignore value; MTI-Net never pads. Depth 0 and zero normals already mean invalid in the
    Sample contract, so they need no rewriting."""
    out = dict(arrays)
    for key, a in arrays.items():
        spec = None if key == IMAGE else get_task(key)
        if spec is None or not spec.ignored_without_foreground or spec.ignore is None:
            continue
        if np.isin(a, (0, spec.ignore) if padded else (0,)).all():
            out[key] = np.full_like(a, spec.ignore)
    return out


def _to_sample(arrays: Arrays, pad_to: Size | None) -> dict[str, torch.Tensor]:
    """Normalise the image (ImageNet statistics), centred-pad every map to `pad_to` (the image with 0, the
    mean colour; a label with its task's `fill`), convert to tensors."""
    image = normalize_image(arrays[IMAGE])
    if pad_to is not None:
        image = torch.from_numpy(centre_pad(image.permute(1, 2, 0).numpy(), pad_to, 0.0)).permute(2, 0, 1)
    sample = {"image": image.contiguous()}
    for key, a in arrays.items():
        if key != IMAGE:
            fill = get_task(key).fill
            sample[key] = to_sample_tensor(key, a if pad_to is None else centre_pad(a, pad_to, fill))
    return sample


@dataclass(frozen=True)
class Transform:
    """A preset bound to a family, split kind and sizes; call it with a raw sample and the sample's rng."""

    protocol: str | None
    family: str
    train: bool
    crop_size: Size | None = None  # atrc: the train crop
    pad_to: Size | None = None     # atrc: the centred pad target
    resize_to: Size | None = None  # mtinet: the FixedResize size

    @property
    def name(self) -> str:
        """The preset as logged, e.g. 'atrc/train 425x560 pad 425x560'."""
        split = "train" if self.train else "eval"
        if self.protocol is None:
            return "none"
        if self.protocol == "mtinet":
            return f"mtinet/{split} {_fmt(self.resize_to)}" + ("" if self.train else " labels original")
        crop = f"{_fmt(self.crop_size)} " if self.train else ""
        return f"atrc/{split} {crop}pad {_fmt(self.pad_to)}"

    def __call__(self, raw: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if IMAGE not in raw:
            raise ValueError(f"a raw sample needs {IMAGE!r}; it holds {sorted(raw)}")
        unknown = set(raw) - {IMAGE, *TASK_NAMES}
        if unknown:
            raise ValueError(f"no transform for keys {sorted(unknown)}; known: {IMAGE}, {', '.join(TASK_NAMES)}")
        arrays = {key: np.asarray(a) for key, a in raw.items()}
        if self.protocol is None:
            return _to_sample(arrays, None)
        if self.protocol == "atrc":
            assert self.crop_size is not None and self.pad_to is not None
            if self.train:
                arrays = rescale(arrays, float(rng.uniform(0.5, 2.0)))
                arrays = random_crop(arrays, self.crop_size, rng)
                if rng.random() < 0.5:
                    arrays = hflip(arrays)
                arrays[IMAGE] = photometric_distortion(arrays[IMAGE], rng)
            # Padding happens in _to_sample; the parts rule accepts the ignore value as ATRC's after PadImage.
            return _to_sample(_ignore_without_foreground(arrays, padded=True), self.pad_to)
        assert self.resize_to is not None
        if self.train:
            if rng.random() < 0.5:
                arrays = hflip(arrays)
            if self.family == "nyud":
                angle, scale = 0.0, float(rng.choice([1.0, 1.2, 1.5]))
            else:
                angle, scale = float(rng.uniform(-20.0, 20.0)), float(rng.uniform(0.75, 1.25))
            arrays = scale_rotate(arrays, angle, scale)
        # Eval labels stay at the original size: predictions are resized back to it (mtbench.engine.evaluate).
        h, w = arrays[IMAGE].shape[:2]
        arrays = fixed_resize(arrays, self.resize_to, label_size=None if self.train else (h, w))
        return _to_sample(_ignore_without_foreground(arrays, padded=False), None)


def _fmt(size: Size | None) -> str:
    return "-" if size is None else f"{size[0]}x{size[1]}"


def _check_size(option: str, value: Sequence[int] | None) -> Size | None:
    if value is None:
        return None
    ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        raise MtbenchError(f"transform option {option!r} must be two positive integers (height, width), "
                           f"got {value!r}.")
    return int(value[0]), int(value[1])


def build_transform(protocol: str | None, *, family: str, train: bool, crop_size: Sequence[int] | None = None,
                    pad_to: Sequence[int] | None = None) -> Transform:
    """Return the `protocol` preset for dataset `family` ('nyud' or 'pascal_context').

    `crop_size` (atrc train crop) defaults to ATRC's image_dims: 425x560 NYUD, 512x512 PASCAL; `pad_to`
    (atrc pad target, train and eval) defaults to the crop size. Both apply to `atrc` only; `mtinet` resizes
    to 480x640 / 512x512 (eval: the image only, labels keep the original size) and None keeps the original size.
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise MtbenchError(f"unknown transform protocol {protocol!r}; valid: None, {', '.join(PROTOCOLS)}.")
    if family not in FAMILIES:
        raise MtbenchError(f"unknown dataset family {family!r} for transforms; valid: {', '.join(FAMILIES)}.")
    crop, pad = _check_size("crop_size", crop_size), _check_size("pad_to", pad_to)
    if protocol != "atrc":
        if crop is not None or pad is not None:
            raise MtbenchError(f"crop_size and pad_to apply to the 'atrc' protocol only, not to {protocol!r}.")
        resize = MTINET_SIZE[family] if protocol == "mtinet" else None
        return Transform(protocol, family, train, resize_to=resize)
    crop = crop or ATRC_CROP[family]
    pad = pad or crop
    if train and (pad[0] < crop[0] or pad[1] < crop[1]):
        raise MtbenchError(f"pad_to {pad} is smaller than crop_size {crop}: training samples would not share "
                           f"one size.")
    return Transform(protocol, family, train, crop_size=crop, pad_to=pad)
