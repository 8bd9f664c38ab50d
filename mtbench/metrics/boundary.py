"""Boundary detection evaluation (odsF, oisF, AP) with the SEISM / BSDS protocol, in Python.

Every published multi-task codebase scores edges with SEISM (Pont-Tuset & Marques), run in MATLAB through
prismformore/Boundary-Detection-Evaluation-Tools (`eval_edge_{nyud,pascal}.py` + `pr_curves_base.m`). Per
image and threshold t (SEISM `scripts/eval_method.m`, `measures/eval_cont.m`, `piotr_edges/edgesEvalImg.m`):

1. binarise the prediction at t and thin it (`bwmorph(E, 'thin', Inf)`);
2. take the ground-truth boundary (SEISM: `bwmorph(seg2bmap(G), 'thin', Inf)`);
3. match predicted to ground-truth boundary pixels one-to-one within maxDist x image diagonal
   (`correspondPixels`; maxDist 0.011 NYUD, 0.0075 PASCAL-Context) and record
   cntR = matched GT pixels, sumR = GT pixels, cntP = matched predicted pixels, sumP = predicted pixels.

Over the split (`scripts/gather_measure.m`, `general_ods.m`, `general_ois.m`, `general_ap.m`):
odsF = max_t F(Σ_images counts_t); oisF = F of the counts summed over images, each image taken at its own
best threshold (the one maximising its own F, first on ties; SEISM writes per-image F with `%f`, so ties
are judged on F rounded to 6 decimals, as here); AP = Σ of the PR curve linearly interpolated at recall
0, 0.01, ..., 1 (points outside the curve's recall range skipped), divided by 100, with duplicate recalls
resolved to their lowest threshold (MATLAB's `unique` since R2013a). F = 2PR / (P + R), 0 when P + R = 0.
Empty maps follow SEISM: no GT pixel -> R = 1, P = 0; nothing predicted -> R = 0, P = 1 (for the summed
counts, nothing predicted wins when both are empty, as in `gather_measure.m`); F is 0 in all of these.

Two IO conventions (`evaluate_boundaries(..., thresholds, nms)`):
- raw (`RAW_THRESHOLDS`, nms=False): 99 thresholds 0.01..0.99, positive if p >= t (edgesEvalImg's default
  and the BSDS benchmark's `evaluation_bdry_image`), then thinning.
- nms (`NMS_THRESHOLDS`, nms=True): SEISM's `read_one_cont_png`, the published protocol: the map is read
  from an 8-bit PNG (`quantize=True`: floor(255 p) / 255, the `astype(np.uint8)` of ATRC/InvPT's
  `save_predictions`), orientation from second derivatives of the triangle-smoothed map, structured-edge
  NMS (`edgesNmsMex(E, O, 1, 5, 1.01)`), 101 thresholds {0.001, 0.01..0.99, 0.999} (`parameters/HED.txt`),
  positive if p > t, then thinning.

Matcher. correspondPixels solves a min-cost perfect assignment (CSA) on a graph of pixel pairs within the
radius (cost = distance) plus outlier nodes (cost 100 x radius, far above any distance). Every extra
matched pair lowers that cost, so its optimum is a maximum-cardinality matching that, among those, has the
least total distance. The counts only depend on the cardinality, so mtbench computes a maximum-cardinality
matching directly on the same pairs (squared distance <= radius^2, correspondPixels' test): a unit-capacity
max flow solved with Dinic's algorithm (`scipy.sparse.csgraph.maximum_flow`), exact and deterministic.
The thresholds of one image are thinned as one stack (`thin_stack`) and matched together: small networks of
several thresholds are solved in one max-flow call, each threshold's count read from its own component.
(scipy's `maximum_bipartite_matching` is avoided: it takes exponential time on chain-like pixel graphs,
scipy#26147.) Where counts differ: correspondPixels connects each node to only 6 random outlier nodes,
time-seeded, so on some graphs its cheapest assignment has fewer real pairs than the maximum; its counts
are then lower than ours, never higher, and change from call to call. Measured against pyEdgeEval's
compiled port of correspondPixels on 8 synthetic 480x640 maps x 50 thresholds (NYUD radius): 0 to 12 fewer
matches per map (0.05% of 795k), odsF 0.14, oisF 0.17 and AP 0.07 points lower than ours; ours ran
about 60x faster. Which pixels are paired may differ too (it does not change the counts).

AP as SEISM computes it: a curve with a single distinct recall (e.g. a map that is 1 wherever it fires)
has AP 0, and a perfect curve scores 101 (101 samples divided by 100).

Known differences to SEISM:
- Thinning is Guo & Hall's two-subiteration algorithm with the conditions G1, G2, G3/G3' that MATLAB's
  `bwmorph(..., 'thin', Inf)` documents (Lam, Lee & Suen 1992, p. 879), zero outside the image, repeated
  until an iteration removes nothing; it equals `skimage.morphology.thin` on random and hand-built maps.
- NMS and the orientation are computed in float32 like the MEX code, with numpy's operation order; values
  that tie with a neighbour to the last bit may be kept or suppressed differently.
- Ground truth: SEISM turns a label map into boundaries with `seg2bmap`. For NYUD it passes the edge PNG
  itself as the label map (so a 2-pixel-wide edge becomes two parallel boundaries); `gt_as_segmentation=True`
  reproduces that from the edge target. For PASCAL-Context it uses the LabelMap of `pascal-context/trainval`,
  which a meter does not see: the meter's default scores the edge target (thinned) instead, whose pixels lie
  within one pixel of SEISM's; pass the LabelMaps to `evaluate_boundaries(gt_as_segmentation=True)` for
  SEISM's exact ground truth.
- Ignored pixels (IGNORE) and padding: each image is cropped to the bounding box of its non-ignored pixels
  (the image before centred padding, as ATRC's `save_predictions` crops), the diagonal is that crop's, and
  ignored pixels left inside it are removed from both maps after NMS. SEISM has no ignore label.
- The split-level numbers are not rounded (SEISM prints `%0.3f`).
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow

from mtbench.errors import MtbenchError
from mtbench.tasks import IGNORE
from mtbench.thinning import thin, thin_stack

# maxDist per dataset family (SEISM `scripts/eval_method.m`), as a fraction of the image diagonal.
MAX_DIST: dict[str, float] = {"nyud": 0.011, "pascal_context": 0.0075}
# edgesEvalImg's default K = 99: linspace(1/(K+1), 1 - 1/(K+1), K).
RAW_THRESHOLDS: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 100))
# SEISM `parameters/HED.txt`, read by `pr_curves_base.m` for every method.
NMS_THRESHOLDS: tuple[float, ...] = (0.001, *RAW_THRESHOLDS, 0.999)
# Column order of the count arrays: SEISM's cntR, sumR, cntP, sumP.
COUNT_COLUMNS = ("cntR", "sumR", "cntP", "sumP")
# Pixels of the threshold maps thinned and matched together (about 11 bytes each while thinning).
STACK_PIXELS = 8_000_000
# Edges of the matching network up to which several maps are solved in one max-flow call (see match_counts).
NETWORK_EDGES = 20_000


# ------------------------------------------------------------------------------------ ground truth, NMS

def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Return SEISM's / BSDS's boundary map of a label map: pixels whose east, south or south-east neighbour
    differs (`misc/seg2bmap.m` at the label map's own size)."""
    seg = np.asarray(seg)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg != e) | (seg != s) | (seg != se)
    b[-1, :] = seg[-1, :] != e[-1, :]
    b[:, -1] = seg[:, -1] != s[:, -1]
    b[-1, -1] = False
    return b


def conv_tri(image: np.ndarray, r: int) -> np.ndarray:
    """Smooth with Piotr Dollar's `convTri(I, r)` for integer r >= 2: the separable triangle filter
    [1 .. r, r+1, r .. 1] / (r+1)^2 with symmetric padding."""
    f = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float32) / np.float32((r + 1) ** 2)
    out = ndimage.correlate1d(image, f, axis=0, mode="reflect")
    return ndimage.correlate1d(out, f, axis=1, mode="reflect")


def edge_orientation(edge: np.ndarray) -> np.ndarray:
    """Return the edge normal orientation in [0, pi) from second derivatives, as SEISM's
    `io/read_one_cont_png.m`: O = mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi) on convTri(E, 4)."""
    smooth = conv_tri(edge.astype(np.float32), 4)
    oy, ox = np.gradient(smooth)  # gradient2: central differences, one-sided at the borders
    _, oxx = np.gradient(ox)
    oyy, oxy = np.gradient(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + np.float32(1e-5))), np.float32(np.pi))


def _interp(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation with edgesNmsMex's clamping (x, y float32 column and row coordinates)."""
    h, w = image.shape
    x = np.clip(x, 0, np.float32(w - 1.001))
    y = np.clip(y, 0, np.float32(h - 1.001))
    x0 = x.astype(np.intp)
    y0 = y.astype(np.intp)
    dx0 = x - x0
    dy0 = y - y0
    dx1 = 1 - dx0
    dy1 = 1 - dy0
    return (image[y0, x0] * dx1 * dy1 + image[y0, x0 + 1] * dx0 * dy1
            + image[y0 + 1, x0] * dx1 * dy0 + image[y0 + 1, x0 + 1] * dx0 * dy0)


def edge_nms(edge: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01) -> np.ndarray:
    """Suppress non-maximal edge responses across the edge, as `edgesNmsMex(E, O, r, s, m)` of Dollar's
    Structured Edge toolbox with SEISM's orientation (`edge_orientation`).

    A pixel is zeroed if m x its value is below the bilinearly interpolated map at distance d = ±1..±r along
    its normal; then values within s pixels of the image border are ramped down linearly (0 on the border).
    Returns a float32 map.
    """
    e0 = np.ascontiguousarray(edge, dtype=np.float32)
    h, w = e0.shape
    orient = edge_orientation(e0)
    cos_o, sin_o = np.cos(orient), np.sin(orient)
    out = e0.copy()
    ys, xs = np.nonzero(e0)
    e = e0[ys, xs] * np.float32(m)
    c, sn = cos_o[ys, xs], sin_o[ys, xs]
    xf, yf = xs.astype(np.float32), ys.astype(np.float32)
    keep = np.ones(ys.size, dtype=bool)
    for d in range(-r, r + 1):
        if d:
            keep &= ~(e < _interp(e0, xf + np.float32(d) * c, yf + np.float32(d) * sn))
    out[ys[~keep], xs[~keep]] = 0
    s = min(s, w // 2, h // 2)
    for i in range(s):
        ramp = np.float32(i / s)
        out[:, i] *= ramp
        out[:, w - 1 - i] *= ramp
    for i in range(s):
        ramp = np.float32(i / s)
        out[i, :] *= ramp
        out[h - 1 - i, :] *= ramp
    return out


# ------------------------------------------------------------------------------------------- matching

def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the (dy, dx) offsets with dy^2 + dx^2 <= radius^2 (correspondPixels' window test)."""
    r = math.ceil(radius)
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = dy * dy + dx * dx <= radius * radius
    return dy[inside], dx[inside]


class _GroundTruthIndex:
    """One image's ground-truth boundary pixels, indexed for matching the binary maps of many thresholds."""

    def __init__(self, gt: np.ndarray, radius: float) -> None:
        h, w = gt.shape
        self.pad = math.ceil(radius)
        self.stride = w + 2 * self.pad
        index = np.full((h + 2 * self.pad, self.stride), -1, dtype=np.int32)
        ys, xs = np.nonzero(gt)
        index[ys + self.pad, xs + self.pad] = np.arange(ys.size, dtype=np.int32)
        self.index = index.ravel()
        self.size = int(ys.size)
        dy, dx = _disk_offsets(radius)
        self.offsets = (dy * self.stride + dx).astype(np.intp)
        # A predicted pixel farther than the radius from every GT pixel cannot match: skip it early.
        if self.size:
            self.near = ndimage.distance_transform_edt(~gt.astype(bool)) <= radius + 1e-6
        else:
            self.near = np.zeros_like(gt, dtype=bool)

    def match_count(self, pred: np.ndarray) -> int:
        """Return the size of a maximum one-to-one matching of `pred`'s pixels to the GT pixels within the
        radius (the number of matched predicted pixels, which equals the number of matched GT pixels)."""
        return int(self.match_counts(pred[None])[0])

    def match_counts(self, preds: np.ndarray) -> np.ndarray:
        """Return `match_count` of each map of an (N, H, W) stack, as int64.

        Each predicted pixel's neighbourhood is looked up once however many maps hold it. Maps whose graphs
        are small are solved together, as one network whose components are the maps (right node = (map, GT
        pixel)); a map's count is then the flow leaving the source into its pixels. Large graphs are solved
        one map at a time: Dinic's phases run over the whole network, so one map that needs many phases would
        make the others pay for them.
        """
        n = preds.shape[0]
        counts = np.zeros(n, dtype=np.int64)
        if self.size == 0:
            return counts
        ks, ys, xs = np.nonzero(preds & self.near)  # sorted by map
        if ks.size == 0:
            return counts
        pixels, which = np.unique((ys + self.pad) * self.stride + (xs + self.pad), return_inverse=True)
        degree_u, neighbours_u = self._neighbourhoods(pixels)
        degree = degree_u[which]
        keep = degree > 0
        ks, which, degree = ks[keep], which[keep], degree[keep]
        starts = np.zeros(degree_u.size + 1, dtype=np.int64)
        np.cumsum(degree_u, out=starts[1:])
        # neighbours of each kept (map, pixel) entry, consecutively: row `which` of the distinct pixels' lists
        first_edge = np.zeros(degree.size + 1, dtype=np.int64)
        np.cumsum(degree, out=first_edge[1:])
        pos = np.arange(int(first_edge[-1])) + np.repeat(starts[which] - first_edge[:-1], degree)
        right = neighbours_u[pos] + np.repeat(ks, degree) * self.size  # right node id of (map, GT pixel)
        map_entries = np.searchsorted(ks, np.arange(n + 1))  # entries of map k: map_entries[k]:map_entries[k+1]
        map_edges = first_edge[map_entries]
        lo = 0
        while lo < n:
            hi = lo + 1  # add maps while the network stays under the edge budget
            while hi < n and map_edges[hi + 1] - map_edges[lo] <= NETWORK_EDGES:
                hi += 1
            e0, e1 = map_entries[lo], map_entries[hi]
            block_right = right[first_edge[e0]:first_edge[e1]] - lo * self.size
            counts[lo:hi] = _max_matching_per_block(degree[e0:e1], block_right, (hi - lo) * self.size,
                                                    ks[e0:e1] - lo, hi - lo)
            lo = hi
        return counts

    def _neighbourhoods(self, pixels: np.ndarray, rows: int = 32768) -> tuple[np.ndarray, np.ndarray]:
        """Return (degree, GT ids listed row after row) of padded flat pixel positions, in chunks of `rows`."""
        degrees, lists = [], []
        for i in range(0, pixels.size, rows):
            cand = self.index[pixels[i:i + rows, None] + self.offsets[None, :]]
            hit = cand >= 0
            degrees.append(hit.sum(axis=1))
            lists.append(cand[hit])
        return np.concatenate(degrees), np.concatenate(lists)


def _max_matching_per_block(degree: np.ndarray, neighbours: np.ndarray, n_right: int, block: np.ndarray,
                            n_blocks: int) -> np.ndarray:
    """Return the size of a maximum matching of a bipartite graph, per block of left nodes.

    Left node i has `degree[i]` neighbours, listed consecutively in `neighbours` (right node ids), and belongs
    to `block[i]` (blocks share no right node). Solved as a unit-capacity max flow source -> left -> right ->
    sink with Dinic's algorithm, which is Hopcroft-Karp on this network; a block's matching size is the flow
    on its source edges. (scipy's `maximum_bipartite_matching` is not used: its depth-first search does not
    mark dead ends and takes exponential time on chain-like graphs such as pixel boundaries, scipy#26147.)
    """
    n_left = degree.size
    if n_left == 0 or n_right == 0:
        return np.zeros(n_blocks, dtype=np.int64)
    source, sink = n_left + n_right, n_left + n_right + 1
    indices = np.concatenate([neighbours + n_left, np.full(n_right, sink), np.arange(n_left)]).astype(np.int32)
    row_sizes = np.concatenate([degree, np.ones(n_right, dtype=degree.dtype), [n_left, 0]])
    indptr = np.zeros(row_sizes.size + 1, dtype=np.int32)
    np.cumsum(row_sizes, out=indptr[1:])
    graph = csr_array((np.ones(indices.size, dtype=np.int32), indices, indptr), shape=(sink + 1, sink + 1))
    flow = maximum_flow(graph, source, sink, method="dinic").flow
    row = slice(flow.indptr[source], flow.indptr[source + 1])
    used = flow.indices[row][flow.data[row] > 0]
    return np.bincount(block[used], minlength=n_blocks).astype(np.int64)


def match_boundaries(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> int:
    """Return how many pixels of binary map `pred` a maximum one-to-one matching pairs with pixels of binary
    map `gt` at most `max_dist` x the image diagonal away (correspondPixels' cardinality)."""
    radius = max_dist * math.hypot(*gt.shape)
    return _GroundTruthIndex(gt != 0, radius).match_count(pred != 0)


# ---------------------------------------------------------------------------------------- one image

@dataclass(frozen=True)
class BoundaryProtocol:
    """How one image is scored; see the module docstring for each setting's source."""

    max_dist: float
    thresholds: tuple[float, ...]
    nms: bool
    quantize: bool = False
    thin_gt: bool = True
    gt_as_segmentation: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.max_dist < 1.0:
            raise MtbenchError(f"edge odsF: max_dist is a fraction of the image diagonal in (0, 1); "
                               f"got {self.max_dist!r}.")
        t = np.asarray(self.thresholds, dtype=np.float64)
        if t.ndim != 1 or t.size == 0 or not np.all(np.diff(t) > 0) or t[0] < 0 or t[-1] > 1:
            raise MtbenchError("edge odsF: thresholds must be a non-empty, strictly increasing sequence in "
                               f"[0, 1]; got {self.thresholds!r}.")


def _check_pair(pred: np.ndarray, gt: np.ndarray, i: int) -> None:
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise MtbenchError(f"edge odsF: image {i}: the prediction and the ground truth must be 2-D maps of one "
                           f"shape; got {pred.shape} and {gt.shape}.")
    if not np.issubdtype(pred.dtype, np.floating):
        raise MtbenchError(f"edge odsF: image {i}: the prediction must be a float probability map; got "
                           f"{pred.dtype} (divide an 8-bit PNG by 255).")
    if not np.all(np.isfinite(pred)):
        raise MtbenchError(f"edge odsF: image {i}: the prediction contains NaN or inf values.")
    if pred.size and (pred.min() < 0 or pred.max() > 1):
        raise MtbenchError(f"edge odsF: image {i}: the prediction must be a probability map in [0, 1]; got "
                           f"values in [{pred.min():.4g}, {pred.max():.4g}] (pass sigmoid(logits)).")


def image_counts(pred: np.ndarray, gt: np.ndarray, protocol: BoundaryProtocol) -> np.ndarray | None:
    """Return the (T, 4) int64 counts (cntR, sumR, cntP, sumP) of one image at each threshold.

    `pred`: (H, W) float probabilities in [0, 1]. `gt`: (H, W) boundary map in {0, 1} with IGNORE = ignore
    (a label map when `protocol.gt_as_segmentation`, with IGNORE still meaning ignore). Returns None when every
    pixel is ignored.
    """
    valid = gt != IGNORE
    if not valid.any():
        return None
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    pred, gt, valid = pred[crop], gt[crop], valid[crop]
    inside = None if valid.all() else valid

    if protocol.gt_as_segmentation:
        gt_map = seg2bmap(np.where(valid, gt, 0))
    else:
        gt_map = gt == 1
    if inside is not None:
        gt_map &= inside
    if protocol.thin_gt:
        gt_map = thin(gt_map)

    prob = pred.astype(np.float32)
    if protocol.quantize:
        prob = np.floor(prob * np.float32(255.0)) / np.float32(255.0)
    if protocol.nms:
        prob = edge_nms(prob)
    if inside is not None:
        prob = np.where(inside, prob, np.float32(0))

    matcher = _GroundTruthIndex(gt_map, protocol.max_dist * math.hypot(*gt_map.shape))
    thresholds = np.asarray(protocol.thresholds, dtype=np.float64)
    if not protocol.nms:  # edgesEvalImg's E >= max(eps, t); nms: read_one_cont_png's E > t
        thresholds = np.maximum(np.finfo(np.float64).eps, thresholds)
    thresholds = thresholds.astype(prob.dtype)  # compared in float32, as a Python float against the map
    counts = np.zeros((thresholds.size, 4), dtype=np.int64)
    counts[:, 1] = matcher.size
    # Thresholds in groups of at most STACK_PIXELS pixels: thinned and matched a group at a time.
    group = max(1, STACK_PIXELS // max(prob.size, 1))
    for lo in range(0, thresholds.size, group):
        ts = thresholds[lo:lo + group, None, None]
        binary = thin_stack(prob > ts if protocol.nms else prob >= ts)
        matched = matcher.match_counts(binary)
        counts[lo:lo + group, 0] = matched
        counts[lo:lo + group, 2] = matched
        counts[lo:lo + group, 3] = binary.sum(axis=(1, 2))
    return counts


def _image_counts_job(args: tuple[np.ndarray, np.ndarray, BoundaryProtocol]) -> np.ndarray | None:
    return image_counts(*args)


# ---------------------------------------------------------------------------------------------- scores

def _f_measure(prec: np.ndarray, rec: np.ndarray) -> np.ndarray:
    total = prec + rec
    return np.where(total > 0, 2 * prec * rec / np.where(total > 0, total, 1), 0.0)


def _pr_image_rule(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of count rows with SEISM's per-image rule (`eval_cont.m`, `general_ois.m`)."""
    cnt_r, sum_r, cnt_p, sum_p = (c[..., i].astype(np.float64) for i in range(4))
    rec = np.where(sum_r == 0, 1.0, np.where(sum_p == 0, 0.0, cnt_r / np.maximum(sum_r, 1)))
    prec = np.where(sum_r == 0, 0.0, np.where(sum_p == 0, 1.0, cnt_p / np.maximum(sum_p, 1)))
    return prec, rec


def _pr_split_rule(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of summed count rows with SEISM's split rule (`gather_measure.m`)."""
    cnt_r, sum_r, cnt_p, sum_p = (c[..., i].astype(np.float64) for i in range(4))
    rec = np.zeros_like(cnt_r)
    prec = np.zeros_like(cnt_r)
    no_gt = (sum_r == 0) & (cnt_p == 0)
    rec[no_gt], prec[no_gt] = 1.0, 0.0
    no_pred = (sum_p == 0) & (cnt_r == 0)  # applied second: it wins when both are empty
    rec[no_pred], prec[no_pred] = 0.0, 1.0
    ok = (sum_p != 0) & (cnt_r != 0)
    rec[ok] = cnt_r[ok] / sum_r[ok]
    prec[ok] = cnt_p[ok] / sum_p[ok]
    return prec, rec


def average_precision(prec: np.ndarray, rec: np.ndarray) -> float:
    """Return SEISM's AP (`general_ap.m`) of a PR curve given per threshold, thresholds ascending.

    Duplicate recalls keep their first (lowest-threshold) point, as MATLAB's `unique` since R2013a; the curve
    is interpolated linearly at recall 0, 0.01, ..., 1, points outside its recall range are skipped, and the
    sum is divided by 100. A curve with fewer than two distinct recalls has AP 0.
    """
    rec_u, first = np.unique(rec, return_index=True)
    if rec_u.size < 2:
        return 0.0
    grid = np.linspace(0.0, 1.0, 101)
    values = np.interp(grid, rec_u, prec[first])
    inside = (grid >= rec_u[0]) & (grid <= rec_u[-1])
    return float(values[inside].sum() / 100.0)


def scores_from_counts(counts: np.ndarray, thresholds: Sequence[float]) -> dict[str, float]:
    """Return odsF, oisF, AP (percent), and the ODS threshold, precision and recall (percent), from
    per-image counts of shape (N, T, 4) (columns cntR, sumR, cntP, sumP; thresholds ascending).

    Worked example (two images, thresholds t1 < t2; one GT pixel count per image, single GT):
        image A: t1 (cntR, sumR, cntP, sumP) = (8, 10, 8, 10) -> F 0.8;  t2 = (4, 10, 4, 4) -> F 0.571
        image B: t1 = (2, 10, 2, 20) -> F 0.133;  t2 = (6, 10, 6, 6) -> F 0.75
        ODS: t1 sums (10, 20, 10, 30) -> P 1/3, R 1/2, F 0.4; t2 sums (10, 20, 10, 10) -> P 1, R 1/2, F 0.667
             -> odsF = 66.67 at t2.
        OIS: A at t1, B at t2 -> sums (14, 20, 14, 16): P 0.875, R 0.7, F 0.7778 -> oisF = 77.78.
    """
    counts = np.asarray(counts)
    if counts.ndim != 3 or counts.shape[2] != 4 or counts.shape[1] != len(thresholds) or counts.shape[0] == 0:
        raise MtbenchError(f"edge odsF: counts must have shape (N >= 1, {len(thresholds)}, 4); got {counts.shape}.")
    prec, rec = _pr_split_rule(counts.sum(axis=0))
    f = _f_measure(prec, rec)
    ods = int(np.argmax(f))

    img_prec, img_rec = _pr_image_rule(counts)
    img_f = np.round(_f_measure(img_prec, img_rec), 6)  # SEISM writes per-image F with %f
    best = np.argmax(img_f, axis=1)
    ois_counts = counts[np.arange(counts.shape[0]), best].sum(axis=0)
    ois_prec, ois_rec = _pr_image_rule(ois_counts)
    ois_f = float(_f_measure(ois_prec, ois_rec))
    return {
        "odsF": 100.0 * float(f[ods]),
        "oisF": 100.0 * ois_f,
        "AP": 100.0 * average_precision(prec, rec),
        "ods_threshold": float(thresholds[ods]),
        "ods_precision": 100.0 * float(prec[ods]),
        "ods_recall": 100.0 * float(rec[ods]),
    }


# ------------------------------------------------------------------------------------------- the split

def worker_pool(num_workers: int) -> ProcessPoolExecutor:
    """Return a process pool for boundary matching ('spawn': safe in a process that runs torch or CUDA)."""
    return ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context("spawn"))


def _pairs(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
           protocol: BoundaryProtocol) -> Iterator[tuple[np.ndarray, np.ndarray, BoundaryProtocol]]:
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        p, g = np.asarray(p), np.asarray(g)
        _check_pair(p, g, i)
        yield p, g, protocol


def evaluate_boundaries(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], *, max_dist: float,
                        thresholds: Sequence[float] = RAW_THRESHOLDS, nms: bool = False, num_workers: int = 0,
                        quantize: bool = False, thin_gt: bool = True,
                        gt_as_segmentation: bool = False,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Score boundary maps with the SEISM protocol; return odsF, oisF, AP (percent) and the ODS point.

    `preds`: (H, W) float probability maps in [0, 1] (sigmoid of the logits). `gts`: (H, W) boundary maps in
    {0, 1} with IGNORE = ignore, or label maps with `gt_as_segmentation=True`. `max_dist`: fraction of the
    diagonal (`MAX_DIST[family]`). Raw convention: `thresholds=RAW_THRESHOLDS, nms=False`; published SEISM
    convention: `thresholds=NMS_THRESHOLDS, nms=True, quantize=True`. `num_workers` > 0 matches images in
    that many processes; 0 runs here. To score a subset (PASCAL-Context `test_new`), pass only its images,
    e.g. those whose id is in `mtbench.data.edge_sets.edge_eval_ids("pascal_context")`. `progress(done, total)`
    is called after each image is matched, in order (e.g. to advance a bar of `mtbench.progress`).

    The result also holds `num_images` (images with at least one non-ignored pixel).
    """
    if len(preds) != len(gts):
        raise MtbenchError(f"edge odsF: {len(preds)} predictions but {len(gts)} ground-truth maps.")
    if num_workers < 0:
        raise MtbenchError(f"edge odsF: num_workers must be >= 0; got {num_workers}.")
    protocol = BoundaryProtocol(max_dist=max_dist, thresholds=tuple(float(t) for t in thresholds), nms=nms,
                                quantize=quantize, thin_gt=thin_gt, gt_as_segmentation=gt_as_segmentation)
    jobs = _pairs(preds, gts, protocol)
    results: list[np.ndarray | None] = []
    if num_workers == 0:
        for job in jobs:
            results.append(image_counts(*job))
            if progress is not None:
                progress(len(results), len(preds))
    else:
        pool: Executor
        with worker_pool(num_workers) as pool:
            for counts in pool.map(_image_counts_job, jobs, chunksize=1):  # in order, as each image is done
                results.append(counts)
                if progress is not None:
                    progress(len(results), len(preds))
    per_image = [c for c in results if c is not None]
    if not per_image:
        raise MtbenchError("edge odsF: every pixel of every image is ignored; nothing to score.")
    out = scores_from_counts(np.stack(per_image), protocol.thresholds)
    out["num_images"] = float(len(per_image))
    return out
