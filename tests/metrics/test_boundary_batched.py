"""The boundary evaluation's batched paths (all thresholds of an image thinned and matched together) against
one-map-at-a-time references: thinning map by map, and networkx's Hopcroft-Karp for the matching."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
from scipy import ndimage

from mtbench.metrics import boundary
from mtbench.metrics.boundary import (
    MAX_DIST,
    NMS_THRESHOLDS,
    RAW_THRESHOLDS,
    BoundaryProtocol,
    _disk_offsets,
    _GroundTruthIndex,
    image_counts,
    seg2bmap,
)
from mtbench.thinning import thin, thin_stack


def blurred_maps(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w) float maps of smoothed noise: thick blobs and bands, foreground touching the borders."""
    return np.stack([ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.8, 2.5)) for _ in range(n)])


def hopcroft_karp_count(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """Maximum matching size between the pixels of two binary maps within `radius` (dy^2 + dx^2 <= r^2)."""
    graph = nx.Graph()
    left = [("p", int(y), int(x)) for y, x in zip(*np.nonzero(pred), strict=True)]
    graph.add_nodes_from(left)
    dy, dx = _disk_offsets(radius)
    h, w = gt.shape
    for _, y, x in left:
        for oy, ox in zip(dy, dx, strict=True):
            yy, xx = y + int(oy), x + int(ox)
            if 0 <= yy < h and 0 <= xx < w and gt[yy, xx]:
                graph.add_edge(("p", y, x), ("g", yy, xx))
    return len(nx.bipartite.hopcroft_karp_matching(graph, top_nodes=left)) // 2


def test_a_stack_thins_each_map_as_alone() -> None:
    rng = np.random.default_rng(0)
    maps = blurred_maps(rng, 6, 23, 31)
    masks = maps > np.quantile(maps, np.linspace(0.2, 0.8, 6))[:, None, None]
    masks[0] = True  # all foreground, touching every border (and so the gap rows of the stack)
    masks[1] = False
    stacked = thin_stack(masks)
    assert stacked.shape == masks.shape and stacked.dtype == bool
    for mask, out in zip(masks, stacked, strict=True):
        assert np.array_equal(out, thin(mask))
    assert not np.array_equal(stacked[2], masks[2])  # the maps did thin


@pytest.mark.parametrize("network_edges", [1, 200, 10**9], ids=["one map per network", "some", "all together"])
def test_match_counts_of_a_stack_equal_hopcroft_karp_map_by_map(monkeypatch: pytest.MonkeyPatch,
                                                                network_edges: int) -> None:
    monkeypatch.setattr(boundary, "NETWORK_EDGES", network_edges)
    rng = np.random.default_rng(1)
    h, w = 40, 52
    halves = np.broadcast_to(np.arange(w) > 25, (h, w)).astype(np.int32)
    gt = thin(blurred_maps(rng, 1, h, w)[0] > 0.5) | seg2bmap(halves)  # blob skeletons and a straight boundary
    radius = 2.3
    maps = blurred_maps(rng, 8, h, w)
    preds = thin_stack(maps > np.quantile(maps, np.linspace(0.3, 0.95, 8))[:, None, None])
    preds[3] = False  # an empty map between non-empty ones
    preds[5] = np.roll(gt, 1, axis=1)  # a chain: each pixel has several candidates along the line
    counts = _GroundTruthIndex(gt, radius).match_counts(preds)
    expected = [hopcroft_karp_count(p, gt, radius) for p in preds]
    assert counts.tolist() == expected
    assert counts[3] == 0 and counts[5] > 0 and len(set(expected)) > 3


@pytest.mark.parametrize("nms", [False, True], ids=["raw", "nms"])
def test_image_counts_equal_thresholds_scored_one_at_a_time(monkeypatch: pytest.MonkeyPatch, nms: bool) -> None:
    """Grouped thresholds (several groups forced) give the counts of the plain per-threshold loop."""
    monkeypatch.setattr(boundary, "STACK_PIXELS", 7 * 48 * 60)
    monkeypatch.setattr(boundary, "NETWORK_EDGES", 500)
    rng = np.random.default_rng(2)
    prob = np.clip(blurred_maps(rng, 1, 48, 60)[0] * 1.6 - 0.3, 0, 1).astype(np.float32)
    labels = (np.arange(60)[None, :] // 17 + np.arange(48)[:, None] // 19).astype(np.int32)
    gt = seg2bmap(labels).astype(np.uint8)
    thresholds = NMS_THRESHOLDS if nms else RAW_THRESHOLDS
    protocol = BoundaryProtocol(max_dist=MAX_DIST["nyud"] * 3, thresholds=thresholds, nms=nms, quantize=nms)
    counts = image_counts(prob, gt, protocol)

    score_map = boundary.edge_nms(np.floor(prob * np.float32(255)) / np.float32(255)) if nms else prob
    gt_thin = thin(gt == 1)
    radius = protocol.max_dist * math.hypot(48, 60)
    for k, t in enumerate(thresholds):
        binary = thin(score_map > np.float32(t) if nms else score_map >= np.float32(t))
        matched = hopcroft_karp_count(binary, gt_thin, radius) if k % 10 == 0 else None
        assert counts[k, 3] == binary.sum() and counts[k, 1] == gt_thin.sum()
        if matched is not None:
            assert counts[k, 0] == counts[k, 2] == matched
    assert counts[:, 0].max() > 0 and len(np.unique(counts[:, 3])) > 10
