"""Named meter variants against hand-computed values, above all where the published definitions disagree."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F

import mtbench.metrics
from mtbench import protocols
from mtbench.errors import MtbenchError
from mtbench.metrics import (
    build_meter,
    meter_variants,
    metric_direction,
    metric_directions,
    split_metric_name,
    variant_metric_name,
)
from mtbench.metrics.meter import VARIANT_SEPARATOR
from mtbench.metrics.normals import quantize_png
from mtbench.metrics.saliency import count_thresholds, mtinet_thresholds, thresholds
from mtbench.registry import METERS
from mtbench.tasks import IGNORE, TASKS

LN3 = math.log(3.0)
F_HALF_PRECISION = 1.3 * 0.5 / (0.3 * 0.5 + 1.0)  # β² = 0.3, P = 1/2, R = 1 → 0.65 / 1.15 = 0.565217

DATASET = {"semseg": "synthetic_pascal", "human_parts": "synthetic_pascal", "sal": "synthetic_pascal",
           "normals": "synthetic_pascal", "edge": "synthetic_pascal", "depth": "synthetic_nyud"}
# Every (task, variant) registered for the tasks this file covers (edge's odsF lives in boundary.py).
VARIANTS = [(t, v) for t in ("semseg", "human_parts", "depth", "normals", "sal") for v in meter_variants(t)]


def logits_for(rows: list[list[int]], num_classes: int = 6) -> torch.Tensor:
    """(B, C, 1, W) logits whose argmax is `rows` (B lists of W class indices)."""
    return F.one_hot(torch.tensor(rows), num_classes).permute(0, 2, 1).unsqueeze(2).float()


def labels(rows: list[list[int]]) -> torch.Tensor:
    """(B, 1, W) long class map."""
    return torch.tensor(rows).unsqueeze(1)


def rows(*batch: tuple[float, ...]) -> torch.Tensor:
    """(B, 1, 1, W) float map, one tuple per image."""
    return torch.tensor(batch, dtype=torch.float32).view(len(batch), 1, 1, -1)


def vectors(*vs: tuple[float, float, float]) -> torch.Tensor:
    """(1, 3, 1, W) normals map from W vectors."""
    return torch.tensor(vs, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def sal_logits(*batch: tuple[float, ...]) -> torch.Tensor:
    """(B, 2, 1, W) two-channel logits (InvPT's layout) whose softmax[:, 1] is the given probabilities."""
    x = torch.logit(torch.tensor(batch, dtype=torch.float64)).float().view(len(batch), 1, 1, -1)
    return torch.cat([torch.zeros_like(x), x], dim=1)


def sal_target(*batch: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(batch).view(len(batch), 1, -1)


def random_batch(task: str, batch: int, gen: torch.Generator, h: int = 3, w: int = 4,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (prediction, target) pair in the Sample conventions, with some ignored pixels."""
    c = TASKS[task].num_outputs(DATASET[task])
    if task == "sal":
        c = 2
    pred = torch.randn(batch, c, h, w, generator=gen)
    if task in ("semseg", "human_parts", "sal"):
        target = torch.randint(0, c, (batch, h, w), generator=gen)
        target[:, 0, 0] = 255
    elif task == "depth":
        target = torch.rand(batch, 1, h, w, generator=gen) * (torch.rand(batch, 1, h, w, generator=gen) > 0.2)
        target[:, :, 0, 0] = 0.5  # every image keeps a valid pixel
    else:
        target = torch.randn(batch, 3, h, w, generator=gen)
        target[:, :, 0, 0] = 0.0
    return pred, target


def pad_centred(x: torch.Tensor, top: int, bottom: int, left: int, right: int, value: float) -> torch.Tensor:
    """Pad the last two dims as ATRC's centred padding does (value 255 for labels, 0 for depth/normals)."""
    return F.pad(x, (left, right, top, bottom), value=value)


# ---- names -------------------------------------------------------------------------------------------------


def test_variant_names_are_listed_and_unknown_ones_refused() -> None:
    assert meter_variants("semseg") == ["reference", "libmtl"]
    assert meter_variants("human_parts") == ["reference", "libmtl"]
    assert meter_variants("depth") == ["reference", "astmt", "mtan"]
    assert meter_variants("normals") == ["reference", "mtinet_png"]
    assert meter_variants("sal") == ["reference", "atrc", "invpt", "mtinet"]
    with pytest.raises(MtbenchError, match=r"unknown sal metric variant 'invtp' \(did you mean 'invpt'\?\); "
                                           r"valid: reference, atrc, invpt, mtinet"):
        build_meter("sal", variant="invtp")
    with pytest.raises(MtbenchError, match="unknown depth metric variant 'per_image'"):
        build_meter("depth", variant="per_image")
    assert build_meter("sal", variant="invpt").variant == "invpt"
    assert build_meter("sal").variant == "reference"


def test_variant_names_never_hold_the_separator() -> None:
    for key in METERS.names():
        task, _, variant = key.partition(":")
        assert VARIANT_SEPARATOR not in task and VARIANT_SEPARATOR not in variant, key


def test_metric_name_helpers() -> None:
    assert variant_metric_name("sal/maxF", "invpt") == "sal/maxF-invpt"
    assert variant_metric_name("sal/maxF", None) == "sal/maxF"
    assert split_metric_name("normals/11.25-mtinet_png") == ("normals/11.25", "mtinet_png")
    assert split_metric_name("depth/log_rmse") == ("depth/log_rmse", None)


@pytest.mark.parametrize(("task", "variant"), VARIANTS)
def test_every_logged_name_says_its_variant_and_has_a_direction(task: str, variant: str) -> None:
    meter = build_meter(task, dataset=DATASET[task], variant=variant)
    meter.update(*random_batch(task, 2, torch.Generator().manual_seed(3)))
    names = meter.compute()
    alias_of_reference = variant in ("reference", "atrc")
    for name in names:
        key, suffix = split_metric_name(name)
        assert key.startswith(f"{task}/")
        assert suffix == (None if alias_of_reference else variant)
        assert metric_direction(name) is metric_direction(key)


def edge_batch(gen: torch.Generator, b: int = 2, h: int = 8, w: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge logits and a {0, 1} target with an ignored row, in the Sample conventions."""
    target = (torch.rand(b, 1, h, w, generator=gen) < 0.2).float()
    target[:, :, 0] = IGNORE
    return torch.randn(b, 1, h, w, generator=gen), target


@pytest.mark.parametrize("key", METERS.names())
def test_every_registered_meter_builds_satisfies_the_protocol_and_declares_its_directions(key: str) -> None:
    # Every METERS entry, edge's included: built under its own name, a `protocols.Meter`, and every name its
    # compute() logs resolves through metric_direction; its plain keys are exactly those it declares.
    task, _, variant = key.partition(":")
    name = variant or "reference"
    entry = METERS.get(key)
    meter = entry.build(dataset=DATASET[task], variant=name)
    assert isinstance(meter, protocols.Meter)
    assert meter.task == task and meter.variant == name
    assert build_meter(task, dataset=DATASET[task], variant=name).variant == name
    gen = torch.Generator().manual_seed(10)
    meter.update(*(edge_batch(gen) if task == "edge" else random_batch(task, 2, gen)))
    logged = meter.compute()
    assert {split_metric_name(n) for n in logged} == {(k, meter.metric_variant) for k in entry.directions}
    for n in logged:
        assert metric_direction(n) is entry.directions[split_metric_name(n)[0]]


# Today's METRIC_DIRECTIONS before directions moved to the registrations: its 21 plain keys, and every one of
# a task's keys under each named variant of that task (aliases of the reference, such as sal's atrc, excluded).
OLD_DIRECTIONS = {
    "semseg/mIoU": True, "semseg/pixel_acc": True, "human_parts/mIoU": True, "human_parts/pixel_acc": True,
    "sal/maxF": True, "sal/mIoU": True,
    "depth/rmse": False, "depth/log_rmse": False, "depth/abs_rel": False, "depth/sq_rel": False,
    "depth/abs_err": False,
    "normals/mean": False, "normals/median": False, "normals/rmse": False,
    "normals/11.25": True, "normals/22.5": True, "normals/30": True,
    "edge/loss_bce": False, "edge/odsF": True, "edge/oisF": True, "edge/AP": True,
}
OLD_VARIANTS = {"semseg": ("libmtl",), "human_parts": ("libmtl",), "sal": ("invpt", "mtinet"),
                "depth": ("astmt", "mtan"), "normals": ("mtinet_png",), "edge": ("odsf_nms", "odsf_raw")}


def old_metric_directions() -> dict[str, bool]:
    out = dict(OLD_DIRECTIONS)
    for key, higher in OLD_DIRECTIONS.items():
        out.update({variant_metric_name(key, v): higher for v in OLD_VARIANTS[key.split("/")[0]]})
    return out


def test_metric_direction_keeps_the_old_metric_directions_exactly() -> None:
    old = old_metric_directions()
    assert len(old) == 53
    assert metric_directions() == OLD_DIRECTIONS
    assert metric_directions(["depth", "sal"]) == {k: v for k, v in OLD_DIRECTIONS.items()
                                                   if k.startswith(("depth/", "sal/"))}
    for name, higher in old.items():
        assert metric_direction(name) is higher, name
    # Every plain key under every variant name of any task (and under a few others): resolves iff it did.
    suffixes = {v for vs in OLD_VARIANTS.values() for v in vs} | {"atrc", "reference", "nope"}
    for key in OLD_DIRECTIONS:
        for name in (variant_metric_name(key, v) for v in suffixes):
            if name in old:
                continue
            with pytest.raises(MtbenchError, match="unknown metric"):
                metric_direction(name)


@pytest.mark.parametrize(("name", "why"), [
    ("semseg/foo", r"no registered meter declares 'semseg/foo'"),
    ("depth/rmsee", r"did you mean 'depth/rmse'"),
    ("sal/maxF-atrc", r"'atrc' is not a named metric variant of sal \(those are: invpt, mtinet\)"),
    ("depth/rmse-libmtl", r"'libmtl' is not a named metric variant of depth"),
    ("sal/maxF-invpt-x", r"'invpt-x' is not a named metric variant"),
    ("nothing", r"no registered meter declares 'nothing'"),
])
def test_unknown_metric_names_list_the_known_ones(name: str, why: str) -> None:
    with pytest.raises(MtbenchError, match=rf"unknown metric '{name}': .*{why}.*Known metrics: .*depth/rmse"):
        metric_direction(name)


def module_dicts() -> dict[str, str]:
    """The repr of every module-level mapping of mtbench.metrics.*, mtbench.registry and mtbench.tasks, and of
    the meter registry's entries (a snapshot of their contents, nested ones included)."""
    out: dict[str, str] = {}
    for mod_name, module in list(sys.modules.items()):
        if mod_name.startswith("mtbench.metrics") or mod_name in ("mtbench.registry", "mtbench.tasks"):
            for attr, value in vars(module).items():
                if isinstance(value, Mapping) and not attr.startswith("__"):
                    out[f"{mod_name}.{attr}"] = repr(dict(value))
    out["METERS"] = repr({k: METERS.get(k) for k in METERS.names()})
    return out


def test_importing_and_asking_directions_mutates_no_module_dict() -> None:
    before = module_dicts()
    assert not any(k.endswith("METRIC_DIRECTIONS") for k in before)
    importlib.import_module("mtbench.metrics")
    importlib.reload(mtbench.metrics)  # re-runs the package body: nothing there may change a dict
    for name in old_metric_directions():
        metric_direction(name)
    with pytest.raises(MtbenchError):
        metric_direction("semseg/foo")
    listed = metric_directions()
    listed["semseg/mIoU"] = False  # a caller's copy
    assert metric_direction("semseg/mIoU") is True
    assert module_dicts() == before


def test_atrc_is_the_reference_under_its_own_name() -> None:
    gen = torch.Generator().manual_seed(4)
    pred, target = random_batch("sal", 3, gen)
    ref, atrc = build_meter("sal"), build_meter("sal", variant="atrc")
    ref.update(pred, target)
    atrc.update(pred, target)
    assert atrc.compute() == ref.compute()
    assert list(atrc.compute()) == ["sal/maxF"]
    assert atrc.variant == "atrc"


# ---- segmentation ------------------------------------------------------------------------------------------


def test_absent_class_counts_zero_in_the_reference_and_nan_in_libmtl() -> None:
    # synthetic_pascal: 6 classes. target (0, 0, 1, 255), prediction (0, 1, 1, 2); the 255 pixel is ignored,
    # so its prediction 2 is no false positive. IoU0 = 1 / (1 + 0 + 1) = 1/2, IoU1 = 1 / (1 + 1 + 0) = 1/2,
    # classes 2..5 absent from both maps. Reference: (1/2 + 1/2 + 0 · 4) / 6 = 1/6 → 16.667 %.
    # LibMTL: IoU 0/0 = NaN for classes 2..5 and torch.mean propagates it → NaN. Pixel acc 2/3 in both.
    pred, target = logits_for([[0, 1, 1, 2]]), labels([[0, 0, 1, 255]])
    ref = build_meter("semseg", dataset="synthetic_pascal")
    libmtl = build_meter("semseg", dataset="synthetic_pascal", variant="libmtl")
    ref.update(pred, target)
    libmtl.update(pred, target)
    assert ref.compute() == pytest.approx({"semseg/mIoU": 100 / 6, "semseg/pixel_acc": 200 / 3})
    out = libmtl.compute()
    assert set(out) == {"semseg/mIoU-libmtl", "semseg/pixel_acc-libmtl"}
    assert math.isnan(out["semseg/mIoU-libmtl"])
    assert out["semseg/pixel_acc-libmtl"] == pytest.approx(200 / 3)


def test_libmtl_equals_the_reference_when_every_class_is_present() -> None:
    # human_parts, 7 classes, each once in the target; the prediction swaps classes 0 and 1.
    # IoU0 = 0 / (0 + 1 FP + 1 FN) = 0, IoU1 = 0, IoU2..6 = 1 → mIoU = 5/7 in both; pixel acc 5/7.
    pred, target = logits_for([[1, 0, 2, 3, 4, 5, 6]], num_classes=7), labels([[0, 1, 2, 3, 4, 5, 6]])
    for variant in ("reference", "libmtl"):
        meter = build_meter("human_parts", dataset="pascal_context", variant=variant)
        meter.update(pred, target)
        suffix = "" if variant == "reference" else "-libmtl"
        assert meter.compute() == pytest.approx({f"human_parts/mIoU{suffix}": 500 / 7,
                                                 f"human_parts/pixel_acc{suffix}": 500 / 7})


def test_segmentation_out_of_range_labels_are_refused() -> None:
    meter = build_meter("semseg", dataset="synthetic_pascal", variant="libmtl")
    with pytest.raises(MtbenchError, match=r"semseg: the target holds labels outside 0..5"):
        meter.update(logits_for([[0, 0, 0]]), labels([[0, 7, 255]]))
    with pytest.raises(MtbenchError, match=r"semseg: the target holds labels outside 0..5 .*min -1"):
        meter.update(logits_for([[0, 0]]), labels([[0, -1]]))
    with pytest.raises(MtbenchError, match=r"semseg: the target holds labels outside 0..5 .*max 300"):
        meter.update(logits_for([[0, 0]]), labels([[0, 300]]))


def test_segmentation_argmax_takes_the_first_of_tied_maxima() -> None:
    # All logits equal → class 0 (torch.max's and numpy argmax's first maximal index, as InvPT's get_output).
    meter = build_meter("semseg", dataset="synthetic_pascal")
    meter.update(torch.zeros(1, 6, 1, 2), labels([[0, 1]]))
    assert meter.state_tensors()["confusion"][:2, 0].tolist() == [1, 1]


# ---- depth -------------------------------------------------------------------------------------------------


def test_per_batch_mtan_against_pooled_on_batches_of_different_valid_counts() -> None:
    # Batch 1: pred 3, gt 1 → one valid pixel, |e| = 2, |e|/gt = 2.
    # Batch 2: pred (1, 2, 5, 9), gt (1, 2, 4, 0) → three valid pixels, |e| = (0, 0, 1), |e|/gt = (0, 0, 1/4);
    #   batch means: abs_err 1/3, abs_rel 1/12.
    # mtan (plain mean over the two batches): abs_err = (2 + 1/3) / 2 = 7/6; abs_rel = (2 + 1/12) / 2 = 25/24.
    # Pooled over the 4 valid pixels: abs_rel = (2 + 0 + 0 + 1/4) / 4 = 9/16; rmse = sqrt((4 + 1) / 4).
    batches = [(rows((3.0,)), rows((1.0,))), (rows((1.0, 2.0, 5.0, 9.0)), rows((1.0, 2.0, 4.0, 0.0)))]
    mtan, ref = build_meter("depth", variant="mtan"), build_meter("depth", dataset="nyud")
    for pred, target in batches:
        mtan.update(pred, target)
        ref.update(pred, target)
    assert mtan.compute() == pytest.approx({"depth/abs_err-mtan": 7 / 6, "depth/abs_rel-mtan": 25 / 24})
    out = ref.compute()
    assert out["depth/abs_rel"] == pytest.approx(9 / 16)
    assert out["depth/rmse"] == pytest.approx(math.sqrt(5 / 4))


def test_mtan_skips_a_batch_without_valid_pixels() -> None:
    # The all-invalid batch would divide by 0 in MTAN; it is left out, so the result is batch 1's alone.
    meter = build_meter("depth", variant="mtan")
    meter.update(rows((3.0,)), rows((1.0,)))
    meter.update(rows((5.0, 5.0)), rows((0.0, 0.0)))
    assert meter.compute() == pytest.approx({"depth/abs_err-mtan": 2.0, "depth/abs_rel-mtan": 2.0})


def test_per_image_astmt_against_pooled() -> None:
    # One batch of three 1x4 images (gt 0 = invalid):
    #   image 1: pred (3, 7, 7, 7), gt (1, 0, 0, 0) → 1 valid pixel, e = 2 → rmse 2; log_rmse |ln 1 − ln 3| = ln 3.
    #   image 2: pred (1, 2, 5, 1), gt (1, 2, 4, 0) → 3 valid pixels, e = (0, 0, 1) → rmse sqrt(1/3);
    #            log_rmse sqrt((ln 4 − ln 5)² / 3) = ln(5/4) / sqrt(3).
    #   image 3: no valid pixel → left out.
    # astmt: rmse = (2 + sqrt(1/3)) / 2 = 1.288675; log_rmse = median of two = (ln 3 + ln(1.25)/sqrt(3)) / 2.
    # Pooled: rmse = sqrt((4 + 0 + 0 + 1) / 4) = 1.118034.
    pred = rows((3.0, 7.0, 7.0, 7.0), (1.0, 2.0, 5.0, 1.0), (1.0, 1.0, 1.0, 1.0))
    target = rows((1.0, 0.0, 0.0, 0.0), (1.0, 2.0, 4.0, 0.0), (0.0, 0.0, 0.0, 0.0))
    astmt, ref = build_meter("depth", variant="astmt"), build_meter("depth")
    astmt.update(pred, target)
    ref.update(pred, target)
    assert astmt.compute() == pytest.approx({
        "depth/rmse-astmt": (2 + math.sqrt(1 / 3)) / 2,
        "depth/log_rmse-astmt": (LN3 + math.log(1.25) / math.sqrt(3)) / 2})
    assert ref.compute()["depth/rmse"] == pytest.approx(math.sqrt(5 / 4))
    assert astmt.state_tensors()["images"].item() == 2


def test_astmt_median_is_over_images_across_updates() -> None:
    # Three single-pixel images in two updates, log errors ln 2, ln 3, ln 5 (pred 1, gt 2 / 3 / 5):
    # median = ln 3; rmse = mean(1, 2, 4) = 7/3.
    meter = build_meter("depth", variant="astmt")
    meter.update(rows((1.0,), (1.0,)), rows((2.0,), (5.0,)))
    meter.update(rows((1.0,)), rows((3.0,)))
    assert meter.compute() == pytest.approx({"depth/rmse-astmt": 7 / 3, "depth/log_rmse-astmt": LN3})


def test_depth_nan_target_is_refused() -> None:
    with pytest.raises(MtbenchError, match="depth: the target contains NaN"):
        build_meter("depth", variant="astmt").update(rows((1.0, 1.0)), rows((1.0, math.nan)))


# ---- normals -----------------------------------------------------------------------------------------------


def test_quantize_png_truncates_like_astype_uint8() -> None:
    # (1, 0, 0): (1 + 1) · 255 / 2 = 255 → 2·255/255 − 1 = 1; (0 + 1) · 255 / 2 = 127.5 → uint8 127 (rounding
    # would give 128) → 2·127/255 − 1 = −1/255.
    out = quantize_png(vectors((1.0, 0.0, 0.0)))
    assert out.flatten().tolist() == pytest.approx([1.0, -1 / 255, -1 / 255], abs=1e-7)


def test_quantize_png_is_bit_exact_against_the_uint8_round_trip() -> None:
    # MTI-Net's path: F.normalize over channels, (n + 1) · 255 / 2, uint8, then 2q / 255 − 1 (all float32).
    x = torch.randn(2, 3, 40, 50, generator=torch.Generator().manual_seed(9))
    x[0, :, 0, 0] = 0.0
    q = ((F.normalize(x, p=2, dim=1) + 1.0) * 255 / 2.0).to(torch.uint8)
    assert torch.equal(quantize_png(x), 2.0 * q.float() / 255.0 - 1.0)


def test_mtinet_png_quantisation_changes_angles_and_zero_norm_is_ignored() -> None:
    # Pixel 1: pred (1, 0, 0), target (1, 0, 0): reference 0°; PNG reads back (1, −1/255, −1/255), whose angle to
    #   the x axis is atan(sqrt(2)/255) = 0.317755°.
    # Pixel 2: pred = zero vector, target (0, 0, 1): reference reads 90° (a zero vector stays zero); the PNG
    #   stores 127 in every channel → (−1/255, −1/255, −1/255) → −(1, 1, 1)/√3, at acos(−1/√3) = 125.264°.
    # Pixel 3: target is the zero vector → ignored by both.
    pred = vectors((1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    target = vectors((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0))
    small, zero = math.degrees(math.atan(math.sqrt(2) / 255)), math.degrees(math.acos(-1 / math.sqrt(3)))
    ref, png = build_meter("normals"), build_meter("normals", dataset="nyud", variant="mtinet_png")
    ref.update(pred, target)
    png.update(pred, target)
    # Reference: mean (0 + 90) / 2 = 45, median 45, rmse sqrt(8100 / 2), 50 % under each threshold.
    assert ref.compute() == pytest.approx({
        "normals/mean": 45.0, "normals/median": 45.0, "normals/rmse": math.sqrt(8100 / 2),
        "normals/11.25": 50.0, "normals/22.5": 50.0, "normals/30": 50.0}, abs=1e-4)
    assert png.compute() == pytest.approx({
        "normals/mean-mtinet_png": (small + zero) / 2, "normals/median-mtinet_png": (small + zero) / 2,
        "normals/rmse-mtinet_png": math.sqrt((small**2 + zero**2) / 2),
        "normals/11.25-mtinet_png": 50.0, "normals/22.5-mtinet_png": 50.0, "normals/30-mtinet_png": 50.0},
        abs=2e-3)


def test_normals_nan_target_is_refused() -> None:
    with pytest.raises(MtbenchError, match="normals: the target contains NaN"):
        build_meter("normals", variant="mtinet_png").update(vectors((1, 0, 0)), vectors((math.nan, 0, 0)))


# ---- saliency ----------------------------------------------------------------------------------------------


def test_threshold_grids_match_the_reference_code() -> None:
    # ATRC/InvPT: torch.arange(0.05, 1, 0.05) in float32 (19 values); MTI-Net: np.linspace(0.2, 0.9, 15).
    assert torch.equal(thresholds(), torch.arange(0.05, 1, 0.05))
    assert thresholds().numel() == 19
    assert mtinet_thresholds().tolist() == pytest.approx([0.2 + 0.05 * k for k in range(15)], abs=1e-7)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("table", [thresholds(), mtinet_thresholds()], ids=["atrc", "mtinet"])
def test_count_thresholds_equals_bucketize_at_the_boundaries(table: torch.Tensor, strict: bool) -> None:
    # Every threshold itself, its float32 neighbours on both sides, the ends, and random probabilities.
    up, down = torch.tensor(2.0), torch.tensor(-1.0)
    probs = torch.cat([table, table.nextafter(up), table.nextafter(down), torch.tensor([0.0, 1.0, 0.5]),
                       torch.rand(10_000, generator=torch.Generator().manual_seed(8))])
    expected = torch.bucketize(probs, table, right=not strict)
    assert torch.equal(count_thresholds(probs, table, strict=strict).long(), expected)


def test_invpt_double_sigmoid_under_reports() -> None:
    # Foreground p = 0.96, background p = 0.91, plus an ignored pixel (255) at p = 0.5.
    # atrc: at t = 0.95 only the foreground pixel is positive → P = R = 1 → maxF 100 %.
    # invpt: σ(0.96) = 0.7231 and σ(0.91) = 0.7130: every t <= 0.70 keeps both (TP 1, PP 2, AP 1 → P = 1/2,
    # R = 1, F = 0.65 / 1.15 = 0.565217) and every t >= 0.75 keeps none (F 0) → maxF 56.52 %.
    pred, target = sal_logits((0.96, 0.91, 0.5)), sal_target((1, 0, 255))
    atrc, invpt = build_meter("sal", variant="atrc"), build_meter("sal", variant="invpt")
    atrc.update(pred, target)
    invpt.update(pred, target)
    assert atrc.compute() == pytest.approx({"sal/maxF": 100.0})
    assert invpt.compute() == pytest.approx({"sal/maxF-invpt": 100 * F_HALF_PRECISION})


def test_mtinet_per_image_against_atrc_pooled_on_two_images() -> None:
    # Image 1: foreground p = 0.83, background p = 0.12. Image 2: two background pixels, p = 0.62 and 0.12.
    # mtinet (p > t, t = 0.20..0.90):
    #   image 1: t <= 0.80 → TP 1, FP 0 → P = R = IoU = 1; t = 0.85, 0.90 → nothing positive → P = R = IoU = 0.
    #   image 2 (no foreground, so R = 0): t <= 0.60 → FP 1 → P = 0, IoU = 0/1 = 0; t >= 0.65 → nothing
    #            positive → P = 0, IoU = 1 (both empty).
    #   mean over images: t <= 0.60: mP = mR = 1/2, mIoU = 1/2; 0.65..0.80: mP = mR = 1/2, mIoU = 1;
    #   0.85, 0.90: 0, mIoU 1/2. F = 2·(1/2)(1/2) / (1/2 + 1/2) = 1/2 → maxF 50 %, mIoU 100 %.
    # atrc pooled over the 4 pixels (AP 1): t = 0.65..0.80 keeps only 0.83 → P = R = 1 → maxF 100 %.
    pred, target = sal_logits((0.83, 0.12), (0.62, 0.12)), sal_target((1, 0), (0, 0))
    mtinet, atrc = build_meter("sal", variant="mtinet"), build_meter("sal", variant="atrc")
    mtinet.update(pred, target)
    atrc.update(pred, target)
    assert mtinet.compute() == pytest.approx({"sal/maxF-mtinet": 50.0, "sal/mIoU-mtinet": 100.0})
    assert atrc.compute() == pytest.approx({"sal/maxF": 100.0})


def test_mtinet_is_strict_and_per_image_across_updates() -> None:
    # One image per update. Image 1: foreground pixel at p = 0.5 exactly (logit 0) and a 255 pixel.
    # Image 2: foreground p = 0.3, background p = 0.27.
    # t = 0.20, 0.25: image 1 P = R = 1; image 2 TP 1, FP 1 → P 1/2, R 1 → mP 3/4, mR 1 → F = 1.5/1.75 = 6/7.
    # t = 0.30..0.45: image 2 has nothing positive (0.3 > 0.3 is false in float32) → P = R = 0, IoU 0;
    #   image 1 P = R = 1 → mP = mR = 1/2 → F 1/2.
    # t = 0.50: image 1's 0.5 > 0.5 is false → 0 everywhere. maxF = 6/7 = 85.714 %.
    # mIoU: t = 0.20, 0.25: (1 + 1/2) / 2 = 3/4; t = 0.30..0.45: 1/2 → 75 %.
    meter = build_meter("sal", variant="mtinet")
    meter.update(torch.tensor([[[[0.0, 9.0]]]]), sal_target((1, 255)))
    x = torch.logit(torch.tensor([0.3, 0.27])).view(1, 1, 1, 2)
    meter.update(x, sal_target((1, 0)))
    assert meter.compute() == pytest.approx({"sal/maxF-mtinet": 600 / 7, "sal/mIoU-mtinet": 75.0})


# ---- every variant -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "variant"), VARIANTS)
def test_centred_padding_never_counts(task: str, variant: str) -> None:
    # The same images padded to a larger canvas, centred (1 row above, 2 below, 2 columns left, 1 right), with
    # 255 labels / zero depth / zero normals on the border and garbage predictions there: identical metrics.
    gen = torch.Generator().manual_seed(5)
    pred, target = random_batch(task, 2, gen)
    pad = (1, 2, 2, 1)
    fill = 255 if task in ("semseg", "human_parts", "sal") else 0.0
    big_target = pad_centred(target, *pad, value=fill)
    big_pred = pad_centred(pred, *pad, value=0.0)
    border = pad_centred(torch.zeros_like(pred), *pad, value=1.0).bool()
    big_pred = torch.where(border, torch.randn(big_pred.shape, generator=gen) * 5, big_pred)
    plain, padded = (build_meter(task, dataset=DATASET[task], variant=variant) for _ in range(2))
    plain.update(pred, target)
    padded.update(big_pred, big_target)
    assert padded.compute() == pytest.approx(plain.compute(), nan_ok=True)


@pytest.mark.parametrize(("task", "variant"), VARIANTS)
def test_merged_states_equal_one_meter(task: str, variant: str) -> None:
    # Two "processes" see parts of the split; summing (or concatenating) their states, as DDP would, gives
    # the metrics of one meter that saw everything, per-image and per-batch variants included.
    gen = torch.Generator().manual_seed(6)
    batches = [random_batch(task, b, gen) for b in (1, 2, 3)]
    whole, part_a, part_b = (build_meter(task, dataset=DATASET[task], variant=variant) for _ in range(3))
    for i, (pred, target) in enumerate(batches):
        whole.update(pred, target)
        (part_a if i == 0 else part_b).update(pred, target)
    sa, sb = part_a.state_tensors(), part_b.state_tensors()
    merged = {k: torch.cat([sa[k], sb[k]]) if k in part_a.concat_states else sa[k] + sb[k] for k in sa}
    part_a.load_state_tensors(merged)
    assert part_a.compute() == pytest.approx(whole.compute(), nan_ok=True)
    assert all(t.device == batches[0][0].device for t in whole.state_tensors().values())


@pytest.mark.parametrize(("task", "variant"), VARIANTS)
def test_bad_input_names_the_task_and_the_tensor(task: str, variant: str) -> None:
    pred, target = random_batch(task, 2, torch.Generator().manual_seed(7))
    meter = build_meter(task, dataset=DATASET[task], variant=variant)
    bad = pred.clone()
    bad[1, 0, 2, 3] = float("nan")
    with pytest.raises(MtbenchError, match=f"{task}: the prediction contains NaN"):
        meter.update(bad, target)
    with pytest.raises(MtbenchError, match=f"{task}: the target must be .* got .* shape"):
        meter.update(pred, target[:1])
    with pytest.raises(MtbenchError, match=f"{task}: the target must be"):
        meter.update(pred, target.double() if task in ("semseg", "human_parts", "sal") else target.long())
    with pytest.raises(MtbenchError, match=f"{task}: the prediction"):
        meter.update(pred.long(), target)
    with pytest.raises(MtbenchError, match="no valid pixel"):
        meter.compute()
