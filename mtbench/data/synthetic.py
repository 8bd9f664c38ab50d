"""Procedural ray-cast scenes: the generator behind the embedded synthetic datasets (pure numpy).

A scene is a room (floor, back wall, optional side walls) holding boxes, spheres, vertical
cylinders and articulated figures. Every pixel casts one ray from a pinhole camera and the nearest
analytic hit wins, so depth, normals, semantics, parts, saliency and boundaries all come from the
same geometry: the labels are physically consistent, which is what makes multi-task learning matter.

Conventions (documented once, relied on by tests and the Dataset):
- World frame: metres; x right, y up, z forward (away from a camera at yaw 0); the floor is y = 0,
  the camera sits at (0, camera.height, 0), the back wall at z = room_depth.
- Camera frame of the normals: x right, y up, z towards the camera (right-handed, OpenGL style),
  so visible surfaces have n_z > 0, a level camera sees the floor as (0, 1, 0) and a horizontal
  flip negates n_x. Invalid pixels (no hit) have the zero vector.
- Depth: camera-space z (distance along the optical axis, not along the ray) in metres; 0 = invalid.
- `render` returns image-like arrays (H, W[, C]), as files on disk hold them: `rgb` uint8 (H, W, 3),
  `depth` float32, `normals` float32 (H, W, 3), `semseg`/`human_parts`/`sal`/`edge` uint8 (IGNORE =
  ignore), and `instance` int32 (0 floor, 1-3 back/left/right wall, 4+ objects in scene order).

Randomness comes only from `scene_rng(preset, split, index, seed)`, so a sample is a pure function
of (preset, seed, split, index) and never depends on access order.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from mtbench.tasks import HUMAN_PART_CLASSES, IGNORE, SYNTHETIC_SEMSEG_CLASSES

FLOOR, WALL, BOX, SPHERE, CYLINDER, FIGURE = (SYNTHETIC_SEMSEG_CLASSES.index(c) for c in (
    "floor", "wall", "box", "sphere", "cylinder", "figure"))
HEAD, TORSO, UPPER_ARM, LOWER_ARM, UPPER_LEG, LOWER_LEG = (HUMAN_PART_CLASSES.index(c) for c in (
    "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg"))
FOREGROUND_CLASSES = (BOX, SPHERE, CYLINDER, FIGURE)
SPLITS = ("train", "val", "test")
GENERATOR_VERSION = 1  # bump whenever a change alters rendered samples, so fingerprints change
# Room surfaces come first in the surface table; object instances are numbered after them.
ROOM_SURFACES = ("floor", "back_wall", "left_wall", "right_wall")
PLAIN, CHECKER, STRIPES_X, STRIPES_Y, STRIPES_Z = range(5)
_EPS = 1e-6

Vec3 = tuple[float, float, float]
Range = tuple[float, float]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at (0, height, 0): pitch > 0 looks down, yaw > 0 turns right (radians)."""

    height: float
    pitch: float
    yaw: float
    focal: float  # focal length in units of the image width (Kinect: 518 / 640 ≈ 0.81)


@dataclass(frozen=True)
class Material:
    """Albedo plus a world-space pattern (PLAIN, CHECKER, STRIPES_*) of period `scale` metres."""

    colour: Vec3
    pattern: int = PLAIN
    scale: float = 1.0
    contrast: float = 0.0
    phase: float = 0.0


@dataclass(frozen=True)
class Primitive:
    """One analytic solid.

    `sphere`: centre `a`, `radius`; `capsule`: segment `a`-`b` swept by `radius`; `cylinder`:
    capped, axis `a` (bottom) to `b` (top); `box`: centre `a`, half extents `half`, rotated by `yaw`
    about the vertical axis. `part` is the HUMAN_PART_CLASSES index on figures, else 0.
    """

    shape: str
    a: Vec3
    material: Material
    b: Vec3 = (0.0, 0.0, 0.0)
    radius: float = 0.0
    half: Vec3 = (0.0, 0.0, 0.0)
    yaw: float = 0.0
    part: int = 0


@dataclass(frozen=True)
class SceneObject:
    """One instance: a semantic class and the primitives it is made of."""

    semantic: int
    primitives: tuple[Primitive, ...]


@dataclass(frozen=True)
class SceneParams:
    """Everything `render` needs; sampled by `sample_scene`, editable with dataclasses.replace."""

    camera: Camera
    room_depth: float
    room_half_width: float
    side_walls: bool
    floor: Material
    wall: Material
    light: Vec3
    ambient: float
    objects: tuple[SceneObject, ...]
    noise_seed: int
    noise_std: float  # standard deviation of the pixel noise, in uint8 units


@dataclass(frozen=True)
class Preset:
    """Sampling ranges of one synthetic dataset; counts are probabilities of 0, 1, 2, ... objects."""

    stream: int  # distinct per preset, mixed into the seed so presets never share random streams
    camera_height: Range
    pitch_deg: Range
    yaw_deg: Range
    focal: float
    room_depth: Range
    room_half_width: Range
    side_wall_prob: float
    distance: Range  # object distance from the camera (metres, on the floor)
    boxes: tuple[float, ...]
    spheres: tuple[float, ...]
    cylinders: tuple[float, ...]
    figures: tuple[float, ...]
    wall_saturation: Range


PRESETS: dict[str, Preset] = {
    # An indoor room seen from head height, looking down a little, mostly furniture-like solids.
    "synthetic_nyud": Preset(
        stream=1, camera_height=(1.3, 1.8), pitch_deg=(8.0, 22.0), yaw_deg=(-15.0, 15.0), focal=0.81,
        room_depth=(4.5, 8.0), room_half_width=(2.0, 4.0), side_wall_prob=0.8, distance=(1.8, 8.0),
        boxes=(0.0, 0.3, 0.35, 0.25, 0.1), spheres=(0.35, 0.45, 0.2), cylinders=(0.35, 0.45, 0.2),
        figures=(0.5, 0.35, 0.15), wall_saturation=(0.05, 0.25)),
    # Closer, level shots with more people, so parts and saliency are common (PASCAL-Context-like).
    "synthetic_pascal": Preset(
        stream=2, camera_height=(1.2, 1.7), pitch_deg=(-2.0, 10.0), yaw_deg=(-20.0, 20.0), focal=0.9,
        room_depth=(6.0, 12.0), room_half_width=(2.5, 5.0), side_wall_prob=0.3, distance=(1.6, 5.5),
        boxes=(0.3, 0.4, 0.3), spheres=(0.45, 0.4, 0.15), cylinders=(0.45, 0.4, 0.15),
        figures=(0.15, 0.4, 0.3, 0.15), wall_saturation=(0.1, 0.6)),
}


def scene_rng(preset: str, split: str, index: int, seed: int = 0) -> np.random.Generator:
    """Return the generator of one scene, derived from (seed, preset, split, index) only."""
    return np.random.default_rng(np.random.SeedSequence(
        [seed, PRESETS[preset].stream, SPLITS.index(split), index]))


def render_scene(preset: str, split: str, index: int, *, seed: int = 0, height: int = 96,
                 width: int = 128) -> dict[str, np.ndarray]:
    """Sample and render scene `index` of `split`: the one entry point the Dataset uses."""
    return render(sample_scene(scene_rng(preset, split, index, seed), preset), height, width)


# ----------------------------------------------------------------------------------------------
# Scene sampling


def _colour(rng: np.random.Generator, sat: Range = (0.3, 0.9), val: Range = (0.35, 0.95)) -> Vec3:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
    return (r, g, b)


def _material(rng: np.random.Generator, colour: Vec3, patterns: tuple[int, ...],
              scale: Range, contrast: Range) -> Material:
    s = float(rng.uniform(*scale))
    return Material(colour, int(rng.choice(patterns)), s, float(rng.uniform(*contrast)),
                    float(rng.uniform(0.1, 0.9)) * s)


def _object_material(rng: np.random.Generator) -> Material:
    return _material(rng, _colour(rng), (PLAIN, PLAIN, CHECKER, STRIPES_Y, STRIPES_X),
                     (0.08, 0.4), (0.1, 0.35))


def _rotate_y(v: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (..., 3) vectors by `angle` about the vertical axis (x towards -z for angle > 0)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([c * v[..., 0] + s * v[..., 2], v[..., 1], -s * v[..., 0] + c * v[..., 2]], -1)


def _limb_dir(side: float, swing: float, spread: float) -> np.ndarray:
    """Unit direction of a limb hanging down, swung forward by `swing` and out by `spread`."""
    return np.array([side * math.sin(spread), -math.cos(spread) * math.cos(swing),
                     math.cos(spread) * math.sin(swing)])


def _figure(rng: np.random.Generator, x: float, z: float, stature: float) -> SceneObject:
    """Build an articulated person standing at (x, z): head, torso, arms and legs in a random pose."""
    h = stature
    skin = Material(colorsys.hsv_to_rgb(rng.uniform(0.02, 0.1), rng.uniform(0.25, 0.6),
                                        rng.uniform(0.35, 0.95)))
    shirt = _object_material(rng)
    trousers = _material(rng, _colour(rng, (0.2, 0.8), (0.15, 0.7)), (PLAIN, PLAIN, STRIPES_Y),
                         (0.05, 0.2), (0.05, 0.25))
    forearm = skin if rng.uniform() < 0.5 else shirt
    prims: list[tuple[str, np.ndarray, np.ndarray, float, int, Material]] = []

    def limb(start: np.ndarray, d1: np.ndarray, d2: np.ndarray, lengths: Vec3, radii: Range,
             parts: tuple[int, int], mats: tuple[Material, Material]) -> None:
        joint = start + lengths[0] * d1
        prims.append(("capsule", start, joint, radii[0], parts[0], mats[0]))
        prims.append(("capsule", joint, joint + lengths[1] * d2, radii[1], parts[1], mats[1]))

    hip_y, shoulder_y = 0.52 * h, 0.81 * h
    lean = rng.uniform(-0.1, 0.15)
    neck = np.array([0.0, shoulder_y - 0.03 * h, 0.0])
    neck[2] += math.sin(lean) * (neck[1] - hip_y)
    prims.append(("capsule", np.array([0.0, hip_y + 0.03 * h, 0.0]), neck, 0.09 * h, TORSO, shirt))
    prims.append(("sphere", neck + [0.0, 0.125 * h, 0.02 * h], neck, 0.065 * h, HEAD, skin))
    raised = rng.uniform() < 0.25
    for side in (-1.0, 1.0):
        swing = rng.uniform(1.2, 2.6) if raised and side > 0 else rng.uniform(-0.6, 0.9)
        spread, bend = rng.uniform(0.05, 0.9), rng.uniform(0.0, 1.9)
        shoulder = neck + [side * 0.125 * h, -0.01 * h, 0.0]
        limb(shoulder, _limb_dir(side, swing, spread), _limb_dir(side, swing + bend, spread),
             (0.17 * h, 0.16 * h), (0.032 * h, 0.027 * h), (UPPER_ARM, LOWER_ARM), (shirt, forearm))
    stride = rng.uniform(-0.5, 0.5)
    for side in (-1.0, 1.0):
        swing = side * stride + rng.uniform(-0.1, 0.1)
        spread, knee = rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.9)
        hip = np.array([side * 0.06 * h, hip_y, 0.0])
        limb(hip, _limb_dir(side, swing, spread), _limb_dir(side, swing - knee, spread),
             (0.245 * h, 0.245 * h), (0.05 * h, 0.04 * h), (UPPER_LEG, LOWER_LEG), (trousers, trousers))
    # Stand on the floor: shift so the lowest point of the body touches y = 0.
    lowest = min(min(a[1], b[1]) - r for _, a, b, r, _, _ in prims)
    heading = rng.uniform(-math.pi, math.pi)
    offset = np.array([x, -lowest, z])
    out = []
    for shape, a, b, r, part, mat in prims:
        wa = _rotate_y(a, heading) + offset
        wb = _rotate_y(b, heading) + offset
        out.append(Primitive(shape, _vec(wa), mat, _vec(wb), float(r), part=part))
    return SceneObject(FIGURE, tuple(out))


def _vec(v: np.ndarray) -> Vec3:
    return (float(v[0]), float(v[1]), float(v[2]))


def _count(rng: np.random.Generator, probs: tuple[float, ...]) -> int:
    return int(rng.choice(len(probs), p=np.asarray(probs) / sum(probs)))


def sample_scene(rng: np.random.Generator, preset: str | Preset) -> SceneParams:
    """Sample a room, camera, light and non-overlapping objects placed inside the camera's view."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    cam = Camera(float(rng.uniform(*p.camera_height)), math.radians(rng.uniform(*p.pitch_deg)),
                 math.radians(rng.uniform(*p.yaw_deg)), p.focal)
    depth, half_width = float(rng.uniform(*p.room_depth)), float(rng.uniform(*p.room_half_width))
    floor = _material(rng, _colour(rng, (0.1, 0.5), (0.3, 0.7)), (CHECKER, STRIPES_X, STRIPES_Z, PLAIN),
                      (0.25, 1.0), (0.1, 0.4))
    wall = _material(rng, _colour(rng, p.wall_saturation, (0.55, 0.95)), (PLAIN, PLAIN, STRIPES_X, STRIPES_Y),
                     (0.2, 0.8), (0.03, 0.15))
    kinds = (["figure"] * _count(rng, p.figures) + ["box"] * _count(rng, p.boxes)
             + ["sphere"] * _count(rng, p.spheres) + ["cylinder"] * _count(rng, p.cylinders))
    half_fov = math.atan(0.5 / p.focal)
    placed: list[tuple[float, float, float]] = []  # footprint circles (x, z, radius)
    objects: list[SceneObject] = []
    for kind in kinds:
        stature = float(rng.uniform(1.45, 1.9))
        size = rng.uniform(0.15, 0.6, size=3)
        radius = {"figure": 0.3 * stature, "box": float(np.hypot(size[0], size[2])),
                  "sphere": float(size[0] * 0.8), "cylinder": float(size[0] * 0.6)}[kind]
        for _ in range(30):  # rejection sampling of a free spot in view
            angle = cam.yaw + rng.uniform(-0.85, 0.85) * half_fov
            dist = rng.uniform(p.distance[0], min(p.distance[1], depth - 0.5))
            x, z = dist * math.sin(angle), dist * math.cos(angle)
            if (abs(x) + radius < half_width and z + radius < depth
                    and all(math.hypot(x - u, z - w) > radius + r for u, w, r in placed)):
                break
        else:
            continue
        placed.append((x, z, radius))
        mat = _object_material(rng)
        if kind == "figure":
            objects.append(_figure(rng, x, z, stature))
        elif kind == "box":
            yaw = float(rng.uniform(0, math.pi / 2)) if rng.uniform() < 0.6 else 0.0
            objects.append(SceneObject(BOX, (Primitive(
                "box", (x, float(size[1]), z), mat, half=_vec(size), yaw=yaw),)))
        elif kind == "sphere":
            r = radius
            objects.append(SceneObject(SPHERE, (Primitive("sphere", (x, r, z), mat, radius=r),)))
        else:
            tall = float(rng.uniform(0.3, 1.3))
            objects.append(SceneObject(CYLINDER, (Primitive(
                "cylinder", (x, 0.0, z), mat, (x, tall, z), radius),)))
    light = (float(rng.uniform(-half_width, half_width) * 0.7), float(rng.uniform(2.3, 3.2)),
             float(rng.uniform(0.5, depth - 0.5)))
    return SceneParams(cam, depth, half_width, bool(rng.uniform() < p.side_wall_prob), floor, wall,
                       light, float(rng.uniform(0.25, 0.45)), tuple(objects),
                       int(rng.integers(2**31)), float(rng.uniform(1.0, 4.0)))


# ----------------------------------------------------------------------------------------------
# Ray casting


def camera_basis(camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the camera's (right, up, forward) unit vectors in world coordinates."""
    cp, sp, cy, sy = math.cos(camera.pitch), math.sin(camera.pitch), math.cos(camera.yaw), math.sin(camera.yaw)
    forward = np.array([sy * cp, -sp, cy * cp])
    right = np.array([cy, 0.0, -sy])
    return right, np.cross(forward, right), forward


def ray_directions(camera: Camera, height: int, width: int) -> np.ndarray:
    """Return (3, H*W) world ray directions through pixel centres, scaled so d·forward = 1.

    With that scaling the ray parameter of a hit is its camera-space depth. Vectors are stored
    component-major, (3, M), throughout the caster: numpy is several times faster on that layout.
    """
    right, up, forward = camera_basis(camera)
    f = camera.focal * width
    u = (np.arange(width) + 0.5 - width / 2) / f
    v = (np.arange(height) + 0.5 - height / 2) / f
    d = forward[:, None, None] + u[None, None, :] * right[:, None, None] - v[None, :, None] * up[:, None, None]
    return d.reshape(3, -1)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products of component-major (3, M) vectors."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _apply(matrix: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Return matrix (3, 3) @ v (3, M), without BLAS, which is many times slower on this shape."""
    return matrix[:, 0:1] * v[0] + matrix[:, 1:2] * v[1] + matrix[:, 2:3] * v[2]


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Select columns (last axis); np.take is several times faster than a[:, idx] here."""
    return np.take(a, idx, axis=-1)


def _put(dst: np.ndarray, idx: np.ndarray, src: np.ndarray) -> None:
    """Assign columns dst[:, idx] = src, row by row (faster than 2-D fancy assignment)."""
    for row in range(dst.shape[0]):
        dst[row, idx] = src[row]


# The hit functions take the origin o (3, 1), one ray per pair d (3, M), per-primitive parameters
# (3, P) / (P,) and each pair's primitive k (M,). They return the entry distance t (M,), inf where
# the ray misses, and the outward unit normal there (3, M). The camera is outside every solid, so
# the first hit of a union of convex pieces is the minimum of the pieces' entry hits.


def _hit_spheres(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: np.ndarray, k: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Entry into spheres of centre c and radius r."""
    oc = _take(o - c, k)
    rk = r[k]
    b, cc = _dot(d, oc), (_dot(o - c, o - c) - r * r)[k]
    a = _dot(d, d)
    disc = b * b - a * cc
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    ok = (disc >= 0) & (t > _EPS)
    return np.where(ok, t, np.inf), (oc + np.where(ok, t, 0.0) * d) / rk


def _hit_tubes(o: np.ndarray, d: np.ndarray, a: np.ndarray, b: np.ndarray, r: np.ndarray,
               k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry into the open side of finite cylinders a-b; their ends are closed by caps or spheres."""
    length = np.sqrt(_dot(b - a, b - a))
    u = (b - a) / length
    w = o - a
    wu = _dot(w, u)
    wp = w - wu * u  # origin offset perpendicular to the axis, per primitive
    qc = (_dot(wp, wp) - r * r)[k]
    u, wp, wu, length, rk = _take(u, k), _take(wp, k), _take(wu, k), _take(length, k), _take(r, k)
    du = _dot(d, u)
    dp = d - du * u
    qa, qb = _dot(dp, dp), _dot(dp, wp)
    disc = qb * qb - qa * qc
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-qb - np.sqrt(np.maximum(disc, 0.0))) / qa
        s = wu + t * du
        ok = (disc >= 0) & (qa > 1e-12) & (t > _EPS) & (s >= 0) & (s <= length)
    return np.where(ok, t, np.inf), (wp + np.where(ok, t, 0.0) * dp) / rk


def _hit_discs(o: np.ndarray, d: np.ndarray, c: np.ndarray, normal: np.ndarray, r: np.ndarray,
               k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hits on discs of centre c, outward unit normal `normal` and radius r (cylinder caps)."""
    num = _dot(c - o, normal)[k]
    normal, c = _take(normal, k), _take(c, k)
    dn = _dot(d, normal)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / dn
    tz = np.where(np.isfinite(t), t, 0.0)
    q = o + tz * d - c
    ok = np.isfinite(t) & (t > _EPS) & (_dot(q, q) <= (r * r)[k])
    return np.where(ok, t, np.inf), normal


def _hit_boxes(o: np.ndarray, d: np.ndarray, c: np.ndarray, half: np.ndarray, yaw: np.ndarray,
               k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab-test entry into boxes of centre c and half extents `half`, rotated by `yaw` (_rotate_y)."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    oc = o - c
    ol = _take(np.stack([cy * oc[0] - sy * oc[2], oc[1], sy * oc[0] + cy * oc[2]]), k)  # box frame
    cy, sy, hk = _take(cy, k), _take(sy, k), _take(half, k)
    dl = np.stack([cy * d[0] - sy * d[2], d[1], sy * d[0] + cy * d[2]])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-hk - ol) / dl, (hk - ol) / dl
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    tn = np.maximum(np.maximum(near[0], near[1]), near[2])
    tf = np.minimum(np.minimum(far[0], far[1]), far[2])
    # The entry face is the slab entered last; its outward normal opposes the ray there.
    nl = np.where(near == tn, -np.sign(dl), 0.0)
    nl[1] *= near[0] != tn  # break exact ties (edges) in favour of the first axis
    nl[2] *= (near[0] != tn) & (near[1] != tn)
    n = np.stack([cy * nl[0] + sy * nl[2], nl[1], -sy * nl[0] + cy * nl[2]])
    return np.where((tn <= tf) & (tn > _EPS), tn, np.inf), n


def _screen_rects(centres: np.ndarray, radii: np.ndarray, origin: np.ndarray, camera: Camera,
                  height: int, width: int) -> np.ndarray:
    """Conservative pixel rectangles (y0, y1, x0, x1) covering each bounding sphere's projection.

    For a sphere of radius R at camera coordinates (x, y, z), |x'/z' - x/z| <= R·hypot(x, z) /
    (z (z - R)) over its points, so the rectangle never clips the primitive.
    """
    right, up, forward = camera_basis(camera)
    rel = centres - origin[:, None]
    xc, yc, zc = _apply(np.stack([right, up, forward]), rel)
    f = camera.focal * width
    near = zc - radii
    zs, ns = np.maximum(zc, 1e-3), np.maximum(near, 1e-3)
    ex = f * radii * np.hypot(zc, xc) / (zs * ns) + 1.5
    ey = f * radii * np.hypot(zc, yc) / (zs * ns) + 1.5
    uc, vc = width / 2 + f * xc / zs, height / 2 - f * yc / zs
    rects = np.stack([np.floor(vc - ey), np.ceil(vc + ey), np.floor(uc - ex), np.ceil(uc + ex)], 1)
    rects[near <= 0.05] = (0, height, 0, width)  # the sphere reaches the camera plane: test all
    rects[:, :2] = np.clip(rects[:, :2], 0, height)
    rects[:, 2:] = np.clip(rects[:, 2:], 0, width)
    return rects.astype(np.int64)


def _pixel_pairs(rects: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Expand per-primitive pixel rectangles into flat (primitive index, pixel index) pairs."""
    hs, ws = rects[:, 1] - rects[:, 0], rects[:, 3] - rects[:, 2]
    counts = np.maximum(hs, 0) * np.maximum(ws, 0)
    owner = np.repeat(np.arange(len(rects)), counts)
    local = np.arange(int(counts.sum())) - (np.cumsum(counts) - counts)[owner]
    w = ws[owner]
    return owner, (rects[owner, 0] + local // w) * width + rects[owner, 2] + local % w


_SHAPES = ("sphere", "capsule", "cylinder", "box")
_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64).T


def _cast_primitives(prims: list[Primitive], origin: np.ndarray, rays: np.ndarray, camera: Camera,
                     height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Intersect each primitive with the rays of its screen rectangle.

    Returns the hits as flat arrays: pixel index, depth t, world normal (3, M), primitive index.
    """
    geom = np.array([(*p.a, *p.b, *p.half, p.radius, p.yaw, _SHAPES.index(p.shape)) for p in prims]).T
    a, b, half, r, yaw, shape = geom[0:3], geom[3:6], geom[6:9], geom[9], geom[10], geom[11]
    # Each primitive lies in the convex hull of a few spheres (itself; the end spheres of a capsule
    # or cylinder; the corners of a box), so the union of their rectangles bounds its projection.
    boxes, rounds = np.flatnonzero(shape == 3), np.flatnonzero(shape != 3)
    corners = half[:, boxes, None] * _CORNERS[:, None, :]  # (3, boxes, 8), box frame
    cy, sy = np.cos(yaw[boxes])[:, None], np.sin(yaw[boxes])[:, None]
    corners = np.stack([cy * corners[0] + sy * corners[2], corners[1], -sy * corners[0] + cy * corners[2]])
    centres = np.concatenate([a[:, rounds], np.where(shape == 0, a, b)[:, rounds],
                              (corners + a[:, boxes, None]).reshape(3, -1)], 1)
    radii = np.concatenate([r[rounds], r[rounds], np.zeros(8 * len(boxes))])
    hull_owner = np.concatenate([rounds, rounds, np.repeat(boxes, 8)])
    hull = _screen_rects(centres, radii, origin, camera, height, width)
    rects = np.tile(np.array([height, 0, width, 0]), (len(r), 1))
    for col, reduce in enumerate((np.minimum, np.maximum, np.minimum, np.maximum)):
        reduce.at(rects[:, col], hull_owner, hull[:, col])
    owner, pix = _pixel_pairs(rects, width)
    t = np.full(len(pix), np.inf)
    n = np.zeros((3, len(pix)))
    o = origin[:, None]
    pair_shape = shape[owner]

    def keep(sel: np.ndarray, tt: np.ndarray, nn: np.ndarray) -> None:
        better = np.flatnonzero(tt < t[sel])
        idx = sel[better]
        t[idx] = tt[better]
        _put(n, idx, _take(nn, better))

    for code, kind in enumerate(_SHAPES):
        sel = np.flatnonzero(pair_shape == code)
        if not len(sel):
            continue
        k, d = _take(owner, sel), _take(rays, _take(pix, sel))
        if kind == "box":
            keep(sel, *_hit_boxes(o, d, a, half, yaw, k))
        elif kind == "sphere":
            keep(sel, *_hit_spheres(o, d, a, r, k))
        else:
            keep(sel, *_hit_tubes(o, d, a, b, r, k))
            if kind == "capsule":
                keep(sel, *_hit_spheres(o, d, a, r, k))
                keep(sel, *_hit_spheres(o, d, b, r, k))
            else:
                u = (b - a) / np.sqrt(_dot(b - a, b - a))
                keep(sel, *_hit_discs(o, d, b, u, r, k))
                keep(sel, *_hit_discs(o, d, a, -u, r, k))
    hit = np.flatnonzero(np.isfinite(t))
    n = _take(n, hit)
    n /= np.sqrt(_dot(n, n))  # analytic normals are unit up to rounding; make them exact
    return pix[hit], t[hit], n, owner[hit]


_SALIENCY = np.zeros(256, dtype=np.uint8)  # semseg value -> sal value
_SALIENCY[list(FOREGROUND_CLASSES)] = 1
_SALIENCY[IGNORE] = IGNORE
# World normals of the room surfaces, one column each: floor, back wall, left wall, right wall.
_PLANE_NORMALS = np.array([[0.0, 0.0, 1.0, -1.0], [1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
# Which world axes each pattern sums before taking the parity: PLAIN, CHECKER, STRIPES_X/Y/Z.
_PATTERN_AXES = ((0, 0, 0), (1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1))


def render(scene: SceneParams, height: int, width: int) -> dict[str, np.ndarray]:
    """Ray-cast `scene` at (height, width) and return the image and all labels (see module doc)."""
    cam = scene.camera
    origin = np.array([0.0, cam.height, 0.0])
    rays = ray_directions(cam, height, width)
    npix = height * width
    # Room planes, evaluated densely: floor, back wall, left and right walls (nearest positive hit).
    dx, dy, dz = rays
    hw = scene.room_half_width if scene.side_walls else np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        candidates = (-cam.height / dy, scene.room_depth / dz, -hw / dx, hw / dx)
    t = np.full(npix, np.inf)
    surface = np.zeros(npix, dtype=np.int64)
    for k, tk in enumerate(candidates):
        closer = (tk > 0) & (tk < t)
        t = np.where(closer, tk, t)
        surface[closer] = k
    normal = np.take(_PLANE_NORMALS, surface, axis=1)

    # Surface table: the four room surfaces, then one row per primitive.
    prims = [p for obj in scene.objects for p in obj.primitives]
    rows = [(FLOOR, 0, 0, scene.floor), (WALL, 1, 0, scene.wall), (WALL, 2, 0, scene.wall),
            (WALL, 3, 0, scene.wall)]
    rows += [(o.semantic, len(ROOM_SURFACES) + i, p.part, p.material)
             for i, o in enumerate(scene.objects) for p in o.primitives]
    if prims:
        pix, tp, n_p, owner = _cast_primitives(prims, origin, rays, cam, height, width)
        owner = owner + len(ROOM_SURFACES)
        closer = np.flatnonzero(tp < t[pix])
        pix, tp, n_p, owner = _take(pix, closer), _take(tp, closer), _take(n_p, closer), _take(owner, closer)
        np.minimum.at(t, pix, tp)
        win = tp == t[pix]
        # Exact ties (e.g. shared joints): the lowest surface index wins, deterministically.
        first = np.full(npix, np.iinfo(np.int64).max)
        np.minimum.at(first, pix[win], owner[win])
        win = np.flatnonzero(win & (owner == first[pix]))
        surface[pix[win]] = owner[win]
        _put(normal, pix[win], _take(n_p, win))

    valid = np.isfinite(t)
    labels = np.take(np.array([row[:3] for row in rows], dtype=np.int32).T.copy(), surface, axis=1)
    sem, inst, parts = labels[0].astype(np.uint8), labels[1], labels[2].astype(np.uint8)
    sem[~valid], parts[~valid], inst[~valid] = IGNORE, IGNORE, -1
    if not (sem == FIGURE).any():
        parts[:] = IGNORE  # no person visible: parts are ignored for the whole image (PASCAL rule)

    right, up, forward = camera_basis(cam)
    cam_normal = _apply(np.stack([right, up, -forward]), normal)
    cam_normal[:, ~valid] = 0.0
    depth = np.where(valid, t, 0.0)
    rgb = _shade(scene, origin[:, None] + depth * rays, normal, surface, [row[3] for row in rows], valid)

    size = (height, width)
    inst = inst.reshape(size)
    return {
        "rgb": rgb.T.reshape(height, width, 3),
        "depth": depth.astype(np.float32).reshape(size),
        "normals": cam_normal.astype(np.float32).T.reshape(height, width, 3),
        "semseg": sem.reshape(size),
        "instance": inst,
        "human_parts": parts.reshape(size),
        "sal": _SALIENCY[sem].reshape(size),
        "edge": boundaries(inst).astype(np.uint8),
    }


def _shade(scene: SceneParams, points: np.ndarray, normal: np.ndarray, surface: np.ndarray,
           materials: list[Material], valid: np.ndarray) -> np.ndarray:
    """Lambertian point light + ambient on patterned albedo, plus pixel noise; (3, N) uint8."""
    table = np.array([(*m.colour, m.scale, m.contrast, m.phase, *_PATTERN_AXES[m.pattern])
                      for m in materials], dtype=np.float32).T.copy()
    px = np.take(table, surface, axis=1)  # per-pixel material, (9, N)
    p32 = points.astype(np.float32)
    cells = np.floor((p32 + (px[5] + 0.013)) / px[3])
    summed = _dot(cells, px[6:9])
    dark = summed - 2.0 * np.floor(summed / 2.0)  # parity of the summed cells: checker or stripes
    to_light = np.asarray(scene.light, dtype=np.float32)[:, None] - p32
    dist2 = _dot(to_light, to_light)
    lambert = np.maximum(_dot(normal.astype(np.float32), to_light), 0.0) / np.sqrt(dist2)
    light = scene.ambient + (1.0 - scene.ambient) * 1.3 * lambert / (1.0 + dist2 / 36.0)
    # Uniform noise of standard deviation noise_std: cheaper to draw than Gaussian, just as useful.
    noise = np.random.default_rng(scene.noise_seed).random((3, len(surface)), dtype=np.float32) - 0.5
    rgb = px[:3] * (255.0 * light * (1.0 - px[4] * dark)) + (scene.noise_std * math.sqrt(12.0)) * noise
    rgb[:, ~valid] = 0.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Return a one-pixel-thin boundary map (bool) of a label map.

    A pixel is on a boundary where its right or lower neighbour differs, which puts the line on
    one side of each change (PASCAL-Context's edges are likewise label changes thinned to 1 px).
    Where lines meet or a region is one pixel wide that fills 2x2 blocks; each is broken by
    dropping its lower-right pixel, in raster order, so that the other three stay and every label
    change keeps a boundary pixel within one pixel of it.
    """
    e = np.zeros(labels.shape, dtype=bool)
    e[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    e[:-1, :] |= labels[:-1, :] != labels[1:, :]
    block = e[:-1, :-1] & e[:-1, 1:] & e[1:, :-1] & e[1:, 1:]
    for i, j in zip(*np.nonzero(block), strict=True):  # rare: junctions and 1-px-wide regions
        if e[i, j] and e[i, j + 1] and e[i + 1, j] and e[i + 1, j + 1]:
            e[i + 1, j + 1] = False
    return e
