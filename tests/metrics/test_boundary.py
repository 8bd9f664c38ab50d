"""Boundary odsF / oisF / AP (SEISM protocol) on hand-built maps with hand-computed expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtbench.data.edge_sets import edge_eval_ids
from mtbench.errors import MtbenchError
from mtbench.metrics import build_meter
from mtbench.metrics.boundary import (
    NMS_THRESHOLDS,
    RAW_THRESHOLDS,
    BoundaryProtocol,
    edge_nms,
    edge_orientation,
    evaluate_boundaries,
    image_counts,
    match_boundaries,
    scores_from_counts,
    seg2bmap,
    thin,
)

# 60 x 80 images have a diagonal of exactly 100 px, so max_dist 0.03 is a 3-pixel radius.
H, W, MAX_DIST = 60, 80, 0.03


def vline(col: int, rows: range, value: float = 1.0, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    out[rows.start:rows.stop, col] = value
    return out


def box_outline(shape: tuple[int, int] = (H, W), top: int = 10, left: int = 12, bottom: int = 45,
                right: int = 65) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    out[top, left:right + 1] = out[bottom, left:right + 1] = 1
    out[top:bottom + 1, left] = out[top:bottom + 1, right] = 1
    return out


def from_text(text: str) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in text.split()], dtype=bool)


# --------------------------------------------------------------------------------------- whole protocol

@pytest.mark.parametrize("nms", [False, True])
def test_perfect_prediction_scores_100(nms: bool) -> None:
    gt = box_outline()
    out = evaluate_boundaries([gt.copy()], [gt], max_dist=MAX_DIST, nms=nms, quantize=nms,
                              thresholds=NMS_THRESHOLDS if nms else RAW_THRESHOLDS)
    assert out["odsF"] == pytest.approx(100.0)
    assert out["oisF"] == pytest.approx(100.0)
    assert (out["ods_precision"], out["ods_recall"]) == (pytest.approx(100.0), pytest.approx(100.0))
    # SEISM's AP needs two distinct recalls: a map that is 1 everywhere it fires has a one-point curve -> 0.
    assert out["AP"] == 0.0


def test_perfect_curve_ap_is_101_as_seism_divides_101_samples_by_100() -> None:
    gt = box_outline()
    out = evaluate_boundaries([0.5 * gt], [gt], max_dist=MAX_DIST)
    # recall 1 (P 1) up to t = 0.5, then nothing predicted (R 0, P 1): P = 1 at all 101 recall samples
    assert out["odsF"] == pytest.approx(100.0)
    assert out["AP"] == pytest.approx(101.0)


@pytest.mark.parametrize(("shift", "matched"), [(2, 30), (3, 30), (4, 0)])
def test_shifted_line_matches_only_within_the_tolerance(shift: int, matched: int) -> None:
    gt = vline(30, range(10, 40))
    pred = np.roll(gt, shift, axis=1)  # radius 3 px: a shift of 3 is inside (d^2 <= r^2), 4 outside
    assert match_boundaries(pred > 0, gt > 0, MAX_DIST) == matched
    out = evaluate_boundaries([pred], [gt], max_dist=MAX_DIST)
    assert out["ods_recall"] == pytest.approx(100 * matched / 30)
    assert out["odsF"] == pytest.approx(100 * matched / 30)  # precision = recall: both have 30 pixels


@pytest.mark.parametrize(("shift", "inside"), [((2, 2), True), ((1, 3), False), ((3, 3), False)])
def test_isolated_pixels_match_within_the_euclidean_radius(shift: tuple[int, int], inside: bool) -> None:
    gt = np.zeros((H, W), dtype=bool)
    gt[10:50:10, 10:70:10] = True  # 24 isolated pixels, 10 px apart
    pred = np.roll(gt, shift, axis=(0, 1))  # (2, 2) is 2.83 px away, (1, 3) 3.16, (3, 3) 4.24
    assert match_boundaries(pred, gt, MAX_DIST) == (24 if inside else 0)


def test_thick_prediction_lowers_precision_unless_thinned() -> None:
    gt = vline(30, range(10, 40))
    band = gt + np.roll(gt, 1, axis=1) + np.roll(gt, -1, axis=1)  # 3 px wide, centred on the GT
    # matcher alone (no thinning): every GT pixel matched once, 2 of 3 predicted pixels left over
    assert match_boundaries(band > 0, gt > 0, MAX_DIST) == 30
    precision = 30 / int((band > 0).sum())
    assert precision == pytest.approx(1 / 3)
    # the protocol thins the binarised map first (bwmorph 'thin'), so the band scores as a line on the GT
    counts = image_counts(band, gt, BoundaryProtocol(MAX_DIST, (0.5,), nms=False))
    cnt_r, sum_r, cnt_p, sum_p = counts[0]
    assert sum_r == 30 and cnt_p == sum_p  # all thinned pixels matched: precision 1
    assert sum_p < 45 and cnt_r >= 28  # the 90-pixel band became a line (ends shortened by at most 1 px)


def test_two_images_ods_and_ois_differ_as_computed_by_hand() -> None:
    gt = vline(20, range(10, 30))  # 20 GT pixels in each image
    false_line = vline(60, range(10, 30), 0.3)  # 20 px far from any GT: fires at t = 0.25 only
    pred_a = vline(20, range(10, 30), 0.5) + false_line
    pred_b = vline(20, range(10, 20), 0.9) + false_line
    # t = 0.25: A (cntR, sumR, cntP, sumP) = (20, 20, 20, 40), B = (10, 20, 10, 30)
    # t = 0.75: A = (0, 20, 0, 0),                        B = (10, 20, 10, 10)
    # ODS: t=0.25 sums (30, 40, 30, 70): R 3/4, P 3/7 -> F 6/11; t=0.75 (10, 40, 10, 10): F 0.4
    # OIS: A at 0.25 (F 2/3), B at 0.75 (F 2/3) -> (30, 40, 30, 50): R 3/4, P 3/5 -> F 2/3
    out = evaluate_boundaries([pred_a, pred_b], [gt, gt], max_dist=MAX_DIST, thresholds=(0.25, 0.75))
    assert out["odsF"] == pytest.approx(100 * 6 / 11)
    assert out["oisF"] == pytest.approx(100 * 2 / 3)
    assert out["ods_threshold"] == 0.25
    assert (out["ods_precision"], out["ods_recall"]) == (pytest.approx(100 * 3 / 7), pytest.approx(75.0))
    # AP: points (R 0.75, P 3/7) and (R 0.25, P 1); 51 recall samples 0.25..0.75 on the line between them
    r = np.arange(25, 76) / 100
    assert out["AP"] == pytest.approx(100 * np.sum(1 - (r - 0.25) * (4 / 7) / 0.5) / 100)


def test_scores_from_counts_worked_example() -> None:
    counts = np.array([[[8, 10, 8, 10], [4, 10, 4, 4]],
                       [[2, 10, 2, 20], [6, 10, 6, 6]]])
    out = scores_from_counts(counts, (0.3, 0.6))
    assert out["odsF"] == pytest.approx(100 * 2 / 3)
    assert out["oisF"] == pytest.approx(100 * 2 * 0.875 * 0.7 / (0.875 + 0.7))


def test_ap_interpolates_the_curve_and_keeps_the_first_of_duplicate_recalls() -> None:
    # points (R, P): (1, 0.5), (0.5, 1), (0, 1): 51 samples of 1 up to R 0.5, then P = 1.5 - R
    curve = np.array([[[10, 10, 10, 20], [5, 10, 5, 5], [0, 10, 0, 0]]])
    expected = (51 + sum(1.5 - k / 100 for k in range(51, 101))) / 100
    assert scores_from_counts(curve, (0.1, 0.5, 0.9))["AP"] == pytest.approx(100 * expected)
    # recall 1 twice: MATLAB's unique (R2013a+) keeps the lowest threshold's point (P 0.5), not (P 1)
    dup = np.array([[[10, 10, 10, 20], [10, 10, 10, 10], [0, 10, 0, 0]]])
    expected = sum(1 - 0.5 * k / 100 for k in range(101)) / 100
    assert scores_from_counts(dup, (0.1, 0.5, 0.9))["AP"] == pytest.approx(100 * expected)


def test_empty_maps_follow_seism_conventions() -> None:
    gt = vline(20, range(10, 30))
    # nothing predicted: R 0, P 1 (F 0) at every threshold
    out = evaluate_boundaries([np.zeros((H, W), np.float32)], [gt], max_dist=MAX_DIST)
    assert (out["odsF"], out["oisF"], out["AP"]) == (0.0, 0.0, 0.0)
    assert (out["ods_precision"], out["ods_recall"]) == (100.0, 0.0)
    # no GT pixel: R 1, P 0; at t = 0.75 nothing is predicted either, and for the summed counts
    # "nothing predicted" wins (gather_measure.m): R 0, P 1. AP on the points (1, 0), (0, 1): 50.5.
    out = evaluate_boundaries([vline(20, range(10, 30), 0.5)], [np.zeros((H, W), np.float32)],
                              max_dist=MAX_DIST, thresholds=(0.25, 0.75))
    assert (out["odsF"], out["oisF"]) == (0.0, 0.0)
    assert (out["ods_precision"], out["ods_recall"]) == (0.0, 100.0)
    assert out["AP"] == pytest.approx(50.5)
    # per image, "no GT" is checked first (eval_cont.m): both empty gives R 1, P 0 for oisF
    both_empty = np.zeros((1, 1, 4), dtype=np.int64)
    out = scores_from_counts(both_empty, (0.5,))
    assert (out["ods_precision"], out["ods_recall"], out["oisF"]) == (100.0, 0.0, 0.0)


def test_padding_is_cropped_so_the_diagonal_is_the_images() -> None:
    gt = vline(30, range(10, 40))
    pred = np.roll(gt, 3, axis=1)  # 3 px: inside the 3-px radius of the 60x80 image only
    padded_pred = np.zeros((H + 40, W + 60), np.float32)
    padded_gt = np.full((H + 40, W + 60), 255, np.float32)
    padded_pred[20:20 + H, 30:30 + W] = pred
    padded_gt[20:20 + H, 30:30 + W] = gt
    padded_pred[0, 0] = 1.0  # a response in the padding never counts
    plain = evaluate_boundaries([pred], [gt], max_dist=MAX_DIST)
    assert plain["odsF"] == pytest.approx(100.0)
    assert evaluate_boundaries([padded_pred], [padded_gt], max_dist=MAX_DIST) == plain


def test_nyud_ground_truth_as_seism_reads_it() -> None:
    edge = np.zeros((20, 30), np.float32)
    edge[:, 10:12] = 1  # a 2-px-wide edge: SEISM's seg2bmap marks both of its sides (columns 9 and 11)
    seism = image_counts(np.zeros_like(edge), edge, BoundaryProtocol(0.05, (0.5,), False, gt_as_segmentation=True))
    plain = image_counts(np.zeros_like(edge), edge, BoundaryProtocol(0.05, (0.5,), False))
    assert seism[0, 1] == 40
    assert plain[0, 1] == 19  # the band thinned to one line, one pixel shorter


# --------------------------------------------------------------------------------------------- pieces

def test_seg2bmap_by_hand() -> None:
    seg = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    assert seg2bmap(seg).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 0, 0]]


def test_thin_reduces_a_thick_band_to_one_pixel_and_keeps_lines() -> None:
    band = np.zeros((30, 40), dtype=bool)
    band[10:15, 5:35] = True  # 5 px thick
    thinned = thin(band)
    assert thinned.sum(axis=0)[8:32].tolist() == [1] * 24 and not (thinned & ~band).any()
    line = vline(7, range(3, 25), shape=(30, 40)) > 0
    assert np.array_equal(thin(line), line)


def test_thin_matches_bwmorph_thin_on_a_fixture() -> None:
    # Expected output from skimage.morphology.thin, the same Guo-Hall algorithm as bwmorph 'thin', Inf.
    image = from_text("""
        1...111111...1.. 11..1111111..... 1111111111.1.... 111111111.1..... 1.1111111111....
        11111...11111... 11111..11111.... 11111.11111...11 1111.11111....11 .111....1111.111
        1.1.....11111.11 ..11...1111111.1""")
    expected = from_text("""
        1............1.. 1.........1..... .1...11111.1.... .1..1...1.1..... 1.11.....1......
        .1.......1...... ..1......1...... ..111..11....... .1...11.1.....1. .1.......1...1..
        1.1......1111.1. ...1...11....1.1""")
    assert np.array_equal(thin(image), expected)


def reference_nms(edge: np.ndarray, orient: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01) -> np.ndarray:
    """Scalar transcription of edgesNmsMex.cpp (x = column, y = row), for comparison."""
    f32 = np.float32
    h, w = edge.shape
    out = edge.copy()

    def interp(x: np.float32, y: np.float32) -> np.float32:
        x = f32(0) if x < 0 else (f32(w - 1.001) if x > w - 1.001 else x)
        y = f32(0) if y < 0 else (f32(h - 1.001) if y > h - 1.001 else y)
        x0, y0 = int(x), int(y)
        dx0, dy0 = f32(x - x0), f32(y - y0)
        dx1, dy1 = f32(1) - dx0, f32(1) - dy0
        return (edge[y0, x0] * dx1 * dy1 + edge[y0, x0 + 1] * dx0 * dy1
                + edge[y0 + 1, x0] * dx1 * dy0 + edge[y0 + 1, x0 + 1] * dx0 * dy0)

    for x in range(w):
        for y in range(h):
            e = edge[y, x]
            if not e:
                continue
            e = e * f32(m)
            c, sn = np.cos(orient[y, x]), np.sin(orient[y, x])
            for d in range(-r, r + 1):
                if d and e < interp(f32(x) + f32(d) * c, f32(y) + f32(d) * sn):
                    out[y, x] = 0
                    break
    s = min(s, w // 2, h // 2)
    for x in range(s):
        out[:, x] *= f32(x / s)
        out[:, w - 1 - x] *= f32(x / s)
    for y in range(s):
        out[y, :] *= f32(y / s)
        out[h - 1 - y, :] *= f32(y / s)
    return out


def test_nms_matches_a_scalar_transcription_of_edgesnmsmex() -> None:
    rng = np.random.default_rng(0)
    from scipy import ndimage

    edge = ndimage.gaussian_filter(rng.random((24, 30)), 1.5).astype(np.float32)
    edge = (edge - edge.min()) / np.ptp(edge)
    expected = reference_nms(edge, edge_orientation(edge))
    np.testing.assert_allclose(edge_nms(edge), expected, rtol=0, atol=1e-6)
    assert ((edge_nms(edge) > 0) == (expected > 0)).all()


def test_nms_thins_a_thick_ridge_to_one_pixel() -> None:
    cols = np.arange(40, dtype=np.float32)
    ridge = np.tile(0.9 * np.exp(-((cols - 20) ** 2) / (2 * 2.0**2)), (30, 1)).astype(np.float32)
    assert ((ridge > 0.3).sum(axis=1) >= 5).all()  # about 6 px above 0.3 before NMS
    out = edge_nms(ridge)
    inner = out[5:-5]  # rows away from the 5-px border ramp
    assert ((inner > 0).sum(axis=1) == 1).all()
    assert (inner.argmax(axis=1) == 20).all()
    assert out[0].max() == 0 and out[-1].max() == 0  # the border ramp starts at 0


# ---------------------------------------------------------------------------------------------- meter

def random_batch(gen: torch.Generator, b: int, h: int = 24, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    target = (torch.rand((b, 1, h, w), generator=gen) < 0.08).float()
    logits = 3 * (target - 0.5) + torch.randn((b, 1, h, w), generator=gen)
    target[:, :, :2, :] = 255.0  # an ignored band
    return logits, target


def test_meter_variants_metric_names_and_max_dist() -> None:
    nms = build_meter("edge", dataset="pascal_context", variant="odsf_nms")
    raw = build_meter("edge", dataset="synthetic_nyud", variant="odsf_raw")
    assert (nms.protocol.max_dist, nms.protocol.gt_as_segmentation, len(nms.protocol.thresholds)) == (0.0075, False,
                                                                                                      101)
    assert (raw.protocol.max_dist, raw.protocol.gt_as_segmentation, len(raw.protocol.thresholds)) == (0.011, True, 99)
    gen = torch.Generator().manual_seed(0)
    logits, target = random_batch(gen, 2)
    raw.update(logits, target)
    nms.update(logits, target)
    assert set(raw.compute()) == {"edge/odsF-odsf_raw", "edge/oisF-odsf_raw", "edge/AP-odsf_raw"}
    assert set(nms.compute()) == {"edge/odsF", "edge/oisF", "edge/AP"}
    with pytest.raises(MtbenchError, match="max_dist"):
        build_meter("edge", variant="odsf_raw")
    with pytest.raises(MtbenchError, match="unknown option 'max_dst'"):
        build_meter("edge", dataset="nyud", variant="odsf_raw", max_dst=0.01)


def test_meter_equals_the_function_on_sigmoid_probabilities() -> None:
    gen = torch.Generator().manual_seed(1)
    logits, target = random_batch(gen, 3)
    meter = build_meter("edge", dataset="nyud", variant="odsf_raw", max_dist=0.05, gt_as_segmentation=False)
    meter.update(logits, target)
    probs = [p[0].numpy() for p in torch.sigmoid(logits)]
    gts = [t[0].numpy() for t in target]
    out = evaluate_boundaries(probs, gts, max_dist=0.05)
    got = meter.compute()
    assert got["edge/odsF-odsf_raw"] == pytest.approx(out["odsF"])
    assert got["edge/oisF-odsf_raw"] == pytest.approx(out["oisF"])
    assert got["edge/AP-odsf_raw"] == pytest.approx(out["AP"])


def test_merged_states_equal_one_meter_and_workers_equal_serial() -> None:
    gen = torch.Generator().manual_seed(2)
    batches = [random_batch(gen, b) for b in (1, 2, 2)]
    options = {"dataset": "synthetic_pascal", "variant": "odsf_nms", "max_dist": 0.05}
    whole = build_meter("edge", **options)
    part_a, part_b = build_meter("edge", **options), build_meter("edge", **options, num_workers=2)
    for i, (pred, target) in enumerate(batches):
        whole.update(pred, target)
        (part_a if i == 0 else part_b).update(pred, target)
    sa, sb = part_a.state_tensors(), part_b.state_tensors()
    assert sb["counts"].shape == (4, 101, 4)
    assert part_b._pool is None  # workers stop once the state is read
    merged = {k: torch.cat([sa[k], sb[k]]) if k in part_a.concat_states else sa[k] + sb[k] for k in sa}
    part_a.load_state_tensors(merged)
    assert torch.equal(part_a.state_tensors()["counts"], whole.state_tensors()["counts"])
    assert part_a.compute() == whole.compute()


def test_bad_inputs_are_user_errors() -> None:
    gen = torch.Generator().manual_seed(3)
    logits, target = random_batch(gen, 1)
    meter = build_meter("edge", dataset="nyud", variant="odsf_raw")
    bad = target.clone()
    bad[0, 0, 5, 5] = 0.5
    with pytest.raises(MtbenchError, match="edge: the target must hold 0, 1 or 255"):
        meter.update(logits, bad)
    with pytest.raises(MtbenchError, match="edge: the target"):
        meter.update(logits, target[:, :, :10])
    with pytest.raises(MtbenchError, match="no valid pixel"):
        meter.compute()
    with pytest.raises(MtbenchError, match="probability map in \\[0, 1\\]"):
        evaluate_boundaries([np.full((8, 8), 2.0)], [np.zeros((8, 8))], max_dist=0.01)
    with pytest.raises(MtbenchError, match="NaN"):
        evaluate_boundaries([np.full((8, 8), np.nan)], [np.zeros((8, 8))], max_dist=0.01)
    with pytest.raises(MtbenchError, match="strictly increasing"):
        evaluate_boundaries([np.zeros((8, 8))], [np.zeros((8, 8))], max_dist=0.01, thresholds=(0.5, 0.2))
    with pytest.raises(MtbenchError, match="every pixel of every image is ignored"):
        evaluate_boundaries([np.zeros((8, 8))], [np.full((8, 8), 255)], max_dist=0.01)


def test_edge_eval_ids_ship_with_the_package() -> None:
    pascal, nyud = edge_eval_ids("pascal_context"), edge_eval_ids("nyud")
    assert (len(pascal), len(set(pascal)), pascal[0]) == (2498, 2498, "2008_000003")
    assert (len(nyud), len(set(nyud)), nyud[0]) == (654, 654, "0001")
    with pytest.raises(MtbenchError, match="no boundary evaluation list"):
        edge_eval_ids("synthetic_pascal")


def test_thresholds_are_the_published_ones() -> None:
    assert len(RAW_THRESHOLDS) == 99 and RAW_THRESHOLDS[0] == 0.01 and RAW_THRESHOLDS[-1] == 0.99
    assert len(NMS_THRESHOLDS) == 101 and NMS_THRESHOLDS[:2] == (0.001, 0.01) and NMS_THRESHOLDS[-1] == 0.999
    assert math.isclose(sum(NMS_THRESHOLDS), 0.001 + 49.5 + 0.999)
