"""odsF wall time: 100 synthetic 480x640 boundary maps at 99 thresholds (raw convention), on 1 and 2 processes.

Run: `python benchmarks/bench_odsf.py [--images 100] [--workers 0 2] [--nms]`. "0 workers" is one process (the
matching runs in the caller); N > 0 spawns N worker processes (their start-up is included in the time).
Besides wall time it prints the CPU time of this process and its workers, which other load on the machine
does not inflate (wall time does).
The maps imitate a trained edge head: blurred, slightly displaced boundaries of random shapes, a missed
object, spurious boundaries, and smooth low-level texture that covers much of the image at low thresholds
(which is what makes the thinning at low thresholds expensive). Outside the test suite: measured, not asserted.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from scipy import ndimage

from mtbench.metrics.boundary import MAX_DIST, NMS_THRESHOLDS, RAW_THRESHOLDS, evaluate_boundaries, seg2bmap


def random_scene(rng: np.random.Generator, h: int, w: int, shapes: int) -> np.ndarray:
    """Return an (h, w) int label map of overlapping random ellipses and rectangles."""
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), dtype=np.int32)
    for k in range(1, shapes + 1):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        labels[inside] = k
    return labels


def synthetic_pair(rng: np.random.Generator, h: int = 480, w: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """Return (probability map, {0, 1} ground-truth boundary map) for one synthetic image."""
    labels = random_scene(rng, h, w, shapes=int(rng.integers(6, 14)))
    gt = seg2bmap(labels)
    # the prediction sees the scene shifted by up to 2 px, misses one object and hallucinates another
    shifted = ndimage.shift(labels, rng.uniform(-2, 2, 2), order=0, mode="nearest")
    shifted[shifted == rng.integers(1, labels.max() + 1)] = 0
    extra = random_scene(rng, h, w, shapes=2)
    edges = seg2bmap(shifted).astype(np.float32) + 0.6 * seg2bmap(extra)
    prob = ndimage.gaussian_filter(edges, rng.uniform(1.0, 2.5))
    prob = 0.9 * prob / max(float(prob.max()), 1e-6)
    texture = ndimage.gaussian_filter(rng.random((h, w)), 8)
    texture = 0.25 * (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)
    noise = rng.normal(0, 0.02, (h, w))
    return np.clip(prob + texture + noise, 0, 1).astype(np.float32), gt.astype(np.float32)


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--nms", action="store_true", help="101 thresholds after NMS (SEISM) instead of raw")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    pairs = [synthetic_pair(rng) for _ in range(args.images)]
    preds, gts = [p for p, _ in pairs], [g for _, g in pairs]
    print(f"generated {args.images} maps of 480x640 in {time.perf_counter() - t0:.1f} s")
    thresholds = NMS_THRESHOLDS if args.nms else RAW_THRESHOLDS
    convention = f"{len(thresholds)} thresholds, " + ("NMS + 8-bit" if args.nms else "raw map")
    reference = None
    for workers in args.workers:
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = evaluate_boundaries(preds, gts, max_dist=MAX_DIST["nyud"], thresholds=thresholds, nms=args.nms,
                                  quantize=args.nms, num_workers=workers)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        processes = 1 if workers == 0 else workers
        print(f"{processes} process(es) ({workers} workers): wall {wall:6.1f} s "
              f"({1e3 * wall / args.images:5.0f} ms/image), CPU {cpu:6.1f} s; {convention}; "
              f"odsF {out['odsF']:.2f} oisF {out['oisF']:.2f} AP {out['AP']:.2f}")
        if reference is None:
            reference = out
        elif out != reference:
            raise SystemExit(f"results differ between worker counts: {out} vs {reference}")


if __name__ == "__main__":
    main()
