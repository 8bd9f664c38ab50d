"""Reference meters against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtbench.errors import MtbenchError
from mtbench.metrics import build_meter, metric_direction, metric_directions
from mtbench.metrics.normals import angular_error_deg
from mtbench.metrics.saliency import max_f
from mtbench.tasks import TASKS

LN2, LN3 = math.log(2.0), math.log(3.0)


def logits_for(labels: list[list[int]], num_classes: int = 6) -> torch.Tensor:
    """(B, C, 1, W) logits whose argmax is `labels` (B lists of W class indices)."""
    return F.one_hot(torch.tensor(labels), num_classes).permute(0, 2, 1).unsqueeze(2).float()


def labels(rows: list[list[int]]) -> torch.Tensor:
    """(B, 1, W) long class map."""
    return torch.tensor(rows).unsqueeze(1)


def row(*values: float) -> torch.Tensor:
    """(1, 1, 1, W) float map."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def vectors(*vs: tuple[float, float, float]) -> torch.Tensor:
    """(1, 3, 1, W) normals map from W vectors."""
    return torch.tensor(vs, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---- segmentation ---------------------------------------------------------------------------------------


def test_semseg_miou_hand_value_absent_classes_count_zero() -> None:
    # synthetic_nyud: 6 classes. target (0, 0, 1, 255), prediction (0, 1, 1, 2); the last pixel is ignored,
    # so its prediction 2 is no false positive. Confusion [target, pred]: (0,0) 1, (0,1) 1, (1,1) 1.
    # IoU0 = 1 / (1 + 0 FP + 1 FN) = 1/2; IoU1 = 1 / (1 + 1 FP + 0 FN) = 1/2; classes 2..5 absent → 0.
    # mIoU = (1/2 + 1/2) / 6 = 1/6; pixel acc = 2 correct / 3 valid.
    meter = build_meter("semseg", dataset="synthetic_nyud")
    meter.update(logits_for([[0, 1, 1, 2]]), labels([[0, 0, 1, 255]]))
    out = meter.compute()
    assert out["semseg/mIoU"] == pytest.approx(100 / 6)
    assert out["semseg/pixel_acc"] == pytest.approx(200 / 3)
    assert meter.state_tensors()["confusion"][:2, :2].tolist() == [[1, 1], [0, 1]]


def test_semseg_is_pooled_over_updates_of_different_sizes() -> None:
    # Update 1 (1 image, 2 px): target (0, 0), pred (0, 0). Update 2 (2 images, 2 px each): target all 1,
    # pred (0, 0) and (0, 1). Pooled confusion: (0,0) 2, (1,0) 3, (1,1) 1.
    # IoU0 = 2 / (2 + 3 + 0) = 0.4; IoU1 = 1 / (1 + 0 + 3) = 0.25 → mIoU = 0.65 / 6.
    # Averaging per-batch mIoUs instead would give (1/6 + 0.25/6) / 2 = 0.625 / 6.
    meter = build_meter("semseg", dataset="synthetic_nyud")
    meter.update(logits_for([[0, 0]]), labels([[0, 0]]))
    meter.update(logits_for([[0, 0], [0, 1]]), labels([[1, 1], [1, 1]]))
    assert meter.compute()["semseg/mIoU"] == pytest.approx(100 * 0.65 / 6)


def test_human_parts_uses_pascal_classes() -> None:
    # 7 classes; the single valid pixel is right: IoU 1 for class 6, 0 for the 6 absent ones → 100/7.
    meter = build_meter("human_parts", dataset="pascal_context")
    meter.update(logits_for([[6, 3]], num_classes=7), labels([[6, 255]]))
    assert meter.compute() == pytest.approx({"human_parts/mIoU": 100 / 7, "human_parts/pixel_acc": 100.0})


def test_semseg_rejects_labels_out_of_range() -> None:
    meter = build_meter("semseg", dataset="synthetic_nyud")
    with pytest.raises(MtbenchError, match="outside 0..5"):
        meter.update(logits_for([[0, 0]]), labels([[0, 6]]))


# ---- depth ----------------------------------------------------------------------------------------------


def test_depth_hand_values_with_clamped_prediction() -> None:
    # pred (1, 3, −1, 7), gt (2, 2, 1, 0): the last pixel is invalid; −1 is clamped to 1e-9.
    # e = (−1, 1, ≈−1): rmse = sqrt(3 / 3) = 1; abs_rel = (1/2 + 1/2 + 1/1) / 3 = 2/3; sq_rel likewise 2/3.
    # log_rmse = sqrt(((ln 2)² + (ln 2 − ln 3)² + (ln 1 − ln 1e-9)²) / 3).
    meter = build_meter("depth", dataset="nyud")
    meter.update(row(1.0, 3.0, -1.0, 7.0), row(2.0, 2.0, 1.0, 0.0))
    out = meter.compute()
    assert out["depth/rmse"] == pytest.approx(1.0)
    assert out["depth/abs_rel"] == pytest.approx(2 / 3)
    assert out["depth/sq_rel"] == pytest.approx(2 / 3)
    log_rmse = math.sqrt((LN2**2 + (LN2 - LN3) ** 2 + math.log(1e-9) ** 2) / 3)
    assert out["depth/log_rmse"] == pytest.approx(log_rmse, rel=1e-6)


def test_depth_is_pooled_over_updates_of_different_sizes() -> None:
    # Update 1: one pixel, error 2. Update 2: two exact pixels. Pooled rmse = sqrt(4 / 3);
    # the mean of per-batch rmses would be (2 + 0) / 2 = 1.
    meter = build_meter("depth")
    meter.update(row(3.0), row(1.0))
    meter.update(row(1.0, 2.0), row(1.0, 2.0))
    assert meter.compute()["depth/rmse"] == pytest.approx(math.sqrt(4 / 3))


# ---- normals --------------------------------------------------------------------------------------------


def test_normals_hand_values_and_zero_norm_ignored() -> None:
    # Angles: (1,0,0)·(0,1,0) → 90°; (2,0,0)·(1,0,0) → 0°; (1,1,0)·(1,0,0) → 45°; (−1,0,0)·(1,0,0) → 180°;
    # the fifth target is the zero vector → ignored. mean = 315 / 4 = 78.75; median = (45 + 90) / 2 = 67.5;
    # rmse = sqrt((8100 + 0 + 2025 + 32400) / 4); one angle in four is under 11.25, 22.5 and 30 → 25 %.
    pred = vectors((1, 0, 0), (2, 0, 0), (1, 1, 0), (-1, 0, 0), (0, 0, 1))
    target = vectors((0, 1, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 0, 0))
    meter = build_meter("normals", dataset="nyud")
    meter.update(pred, target)
    out = meter.compute()
    assert out == pytest.approx({
        "normals/mean": 78.75, "normals/median": 67.5, "normals/rmse": math.sqrt(42525 / 4),
        "normals/11.25": 25.0, "normals/22.5": 25.0, "normals/30": 25.0}, abs=1e-4)


def test_normals_median_is_pooled_and_exact() -> None:
    # Update 1 as above (90, 0, 45, 180), update 2 a single 0°: pooled angles (0, 0, 45, 90, 180) → median 45,
    # mean 63 (the mean of the per-batch means would be (78.75 + 0) / 2).
    meter = build_meter("normals")
    meter.update(vectors((1, 0, 0), (2, 0, 0), (1, 1, 0), (-1, 0, 0)), vectors(*[(0, 1, 0)] + [(1, 0, 0)] * 3))
    meter.update(vectors((0, 0, 5)), vectors((0, 0, 1)))
    out = meter.compute()
    assert out["normals/median"] == pytest.approx(45.0, abs=1e-4)
    assert out["normals/mean"] == pytest.approx(63.0, abs=1e-4)


def test_zero_prediction_reads_ninety_degrees() -> None:
    # F.normalize keeps a zero vector at zero: 2·atan2(|0 − g|, |0 + g|) = 2·atan2(1, 1) = 90°.
    angle = angular_error_deg(vectors((0, 0, 0)), vectors((0, 1, 0)))
    assert angle.item() == pytest.approx(90.0)


# ---- saliency -------------------------------------------------------------------------------------------


def test_max_f_formula() -> None:
    # TP 2, PP 3, AP 4: P = 2/3, R = 1/2, F = 1.3 · (1/3) / (0.3 · 2/3 + 1/2) = 0.43333 / 0.7.
    assert max_f(torch.tensor([2]), torch.tensor([3]), torch.tensor([4])) == pytest.approx(1.3 / 3 / 0.7)


SAL_P = (0.92, 0.62, 0.32, 0.02)
SAL_Y = (1, 0, 1, 0)


@pytest.mark.parametrize("channels", [1, 2])
def test_sal_maxf_hand_case(channels: int) -> None:
    # p = (0.92, 0.62, 0.32, 0.02), target (1, 0, 1, 0), plus a pixel p = 0.99 with target 255 (ignored).
    # AP = 2. t = 0.05..0.30: PP 3, TP 2 → P 2/3, R 1 → F = 1.3·(2/3) / (0.2 + 1) = 0.7222.
    # t = 0.35..0.60: PP 2, TP 1 → P 1/2, R 1/2 → F = 1.3·0.25 / (0.15 + 0.5) = 0.5.
    # t = 0.65..0.90: PP 1, TP 1 → P 1, R 1/2 → F = 1.3·0.5 / (0.3 + 0.5) = 0.8125.
    # t = 0.95: PP 0 → P undefined → F 0. maxF = 81.25 %.
    x = row(*(logit(p) for p in (*SAL_P, 0.99)))
    pred = x if channels == 1 else torch.cat([torch.zeros_like(x), x], dim=1)  # softmax[:, 1] = σ(x)
    meter = build_meter("sal", dataset="pascal_context")
    meter.update(pred, torch.tensor([[[*SAL_Y, 255]]]))
    assert meter.compute() == pytest.approx({"sal/maxF": 81.25})


def test_sal_is_pooled_over_updates_of_different_sizes() -> None:
    # The same pixels in two updates (2 px, then 2 px + 1 ignored) give the pooled 81.25 %; each update
    # alone has maxF 100 %, so averaging per batch would give 100.
    meter = build_meter("sal")
    meter.update(row(logit(0.92), logit(0.62)), torch.tensor([[[1, 0]]]))
    meter.update(row(logit(0.32), logit(0.02), 3.0), torch.tensor([[[1, 0, 255]]]))
    assert meter.compute()["sal/maxF"] == pytest.approx(81.25)


def test_sal_rejects_non_binary_target() -> None:
    with pytest.raises(MtbenchError, match="0, 1 or 255"):
        build_meter("sal").update(row(0.0, 0.0), torch.tensor([[[1, 2]]]))


# ---- edge -----------------------------------------------------------------------------------------------


def test_edge_loss_proxy_is_pooled_per_pixel() -> None:
    # w = 0.95, σ(ln 3) = 3/4. Update 1: one positive pixel, logit ln 3 → 0.95 · ln(4/3).
    # Update 2: negative ln 3 → 0.05 · ln 4; negative 0 → 0.05 · ln 2; 255 → ignored.
    # Pooled: sum / 3 valid pixels (a mean of the two batch means would weigh pixel 1 three times as much).
    meter = build_meter("edge", dataset="nyud")
    meter.update(row(LN3), row(1.0))
    meter.update(row(LN3, 0.0, 9.0), row(0.0, 0.0, 255.0))
    expected = (0.95 * math.log(4 / 3) + 0.05 * math.log(4) + 0.05 * LN2) / 3
    assert meter.compute() == pytest.approx({"edge/loss_bce": expected})


def test_edge_pos_weight_option() -> None:
    # w = 0.8: a positive pixel at logit 0 → 0.8 ln 2, a negative at logit 0 → 0.2 ln 2; mean = ln 2 / 2.
    meter = build_meter("edge", pos_weight=0.8)
    meter.update(row(0.0, 0.0), row(1.0, 0.0))
    assert meter.compute()["edge/loss_bce"] == pytest.approx(LN2 / 2)
    with pytest.raises(MtbenchError, match="Did you mean 'pos_weight'"):
        build_meter("edge", pos_weigth=0.8)


# ---- every meter ----------------------------------------------------------------------------------------

DATASET = {"semseg": "synthetic_pascal", "human_parts": "synthetic_pascal", "sal": "synthetic_pascal",
           "normals": "synthetic_pascal", "edge": "synthetic_pascal", "depth": "synthetic_nyud"}


def random_batch(task: str, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (prediction, target) pair in the Sample conventions, with some ignored pixels."""
    h, w = 3, 4
    c = TASKS[task].num_outputs(DATASET[task])
    pred = torch.randn(batch, c, h, w, generator=gen)
    if task in ("semseg", "human_parts", "sal"):
        target = torch.randint(0, max(c, 2), (batch, h, w), generator=gen)
        target[:, 0, 0] = 255
    elif task == "depth":
        target = torch.rand(batch, 1, h, w, generator=gen) * (torch.rand(batch, 1, h, w, generator=gen) > 0.2)
    elif task == "normals":
        target = torch.randn(batch, 3, h, w, generator=gen)
        target[:, :, 0, 0] = 0.0
    else:
        target = torch.randint(0, 2, (batch, 1, h, w), generator=gen).float()
        target[:, :, 0, 0] = 255.0
    return pred, target


@pytest.mark.parametrize("task", sorted(DATASET))
def test_merged_states_equal_one_meter(task: str) -> None:
    # Two "processes" each see part of the split; summing (or concatenating) their states, as DDP would,
    # gives the metrics of one meter that saw everything.
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(task, b, gen) for b in (1, 2, 3)]
    whole, part_a, part_b = (build_meter(task, dataset=DATASET[task]) for _ in range(3))
    for i, (pred, target) in enumerate(batches):
        whole.update(pred, target)
        (part_a if i == 0 else part_b).update(pred, target)
    sa, sb = part_a.state_tensors(), part_b.state_tensors()
    merged = {k: torch.cat([sa[k], sb[k]]) if k in part_a.concat_states else sa[k] + sb[k] for k in sa}
    part_a.load_state_tensors(merged)
    assert part_a.compute() == pytest.approx(whole.compute())
    assert set(whole.compute()) <= set(metric_directions([task]))


@pytest.mark.parametrize("task", sorted(DATASET))
def test_nan_prediction_and_bad_shapes_are_user_errors(task: str) -> None:
    gen = torch.Generator().manual_seed(1)
    pred, target = random_batch(task, 2, gen)
    meter = build_meter(task, dataset=DATASET[task])
    bad = pred.clone()
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(MtbenchError, match=f"{task}: the prediction contains NaN"):
        meter.update(bad, target)
    with pytest.raises(MtbenchError, match=f"{task}: the target"):
        meter.update(pred, target[:1])
    with pytest.raises(MtbenchError, match=f"{task}: the prediction"):
        meter.update(pred[:, :, 0], target)


@pytest.mark.parametrize("task", sorted(DATASET))
def test_compute_needs_valid_pixels_and_reset_forgets(task: str) -> None:
    meter = build_meter(task, dataset=DATASET[task])
    with pytest.raises(MtbenchError, match="no valid pixel"):
        meter.compute()
    pred, target = random_batch(task, 2, torch.Generator().manual_seed(2))
    meter.update(pred, target)
    first = meter.compute()
    assert all(t.device == pred.device for t in meter.state_tensors().values())
    meter.reset()
    with pytest.raises(MtbenchError, match="no valid pixel"):
        meter.compute()
    meter.update(pred, target)
    assert meter.compute() == pytest.approx(first)


def test_build_meter_errors_and_variant_name() -> None:
    with pytest.raises(MtbenchError, match="valid: reference"):
        build_meter("sal", variant="no_such_variant")
    with pytest.raises(MtbenchError, match="unknown task"):
        build_meter("segsem")
    with pytest.raises(MtbenchError, match="needs `dataset`"):
        build_meter("semseg")
    with pytest.raises(MtbenchError, match="not defined on dataset"):
        build_meter("depth", dataset="pascal_context")
    assert build_meter("depth", variant="reference").variant == "reference"


def test_primary_metric_directions_match_tasks() -> None:
    for spec in TASKS.values():
        assert metric_direction(spec.primary_metric) is spec.higher_is_better


def test_only_the_final_tests_boundary_meter_takes_the_trials_workers(tmp_path) -> None:
    """`build` hands train.num_workers to the test meters: edge's odsF matches in that many processes."""
    from mtbench.config import expand_trials, load_experiment
    from mtbench.engine import distributed
    from mtbench.engine.trial import build

    path = tmp_path / "e.yaml"
    path.write_text("name: e\ndataset: {name: synthetic_nyud, options: {height: 32, width: 40, num_train: 8, "
                    "num_val: 4, num_test: 4}}\nmodel: {name: shared_encoder, backbone: tiny}\n"
                    "train: {steps: 2, num_workers: 3}\n")
    cfg = expand_trials(load_experiment(path))[0]
    trial = build(cfg, distributed.env_from(), torch.device("cpu"), tmp_path / "t")
    workers = {key: getattr(m, "num_workers", None) for key, m in trial.test_meters.items()}
    assert workers["edge:odsf_nms"] == 3 and trial.meters["edge"] is trial.test_meters["edge"]
    assert not hasattr(trial.meters["edge"], "num_workers")  # validation's edge loss proxy runs no workers
