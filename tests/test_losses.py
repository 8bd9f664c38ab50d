"""Per-task losses against hand-computed values on tiny tensors (balancers: tests/test_balancing.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtbench.errors import MtbenchError
from mtbench.losses import build_task_loss

LN2, LN3 = math.log(2.0), math.log(3.0)


def row(*values: float) -> torch.Tensor:
    """A (1, 1, 1, W) float map."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


# ---- cross-entropy -------------------------------------------------------------------------------------


def test_cross_entropy_hand_value_ignores_255() -> None:
    # synthetic_nyud has 6 classes. Pixel 0: logits (ln 5, 0, 0, 0, 0, 0), target 0 → p = 5/10, loss ln 2.
    # Pixel 1: all-zero logits, target 3 → p = 1/6, loss ln 6. Pixel 2: target 255 → ignored, whatever
    # its logits. Mean over the 2 valid pixels: (ln 2 + ln 6) / 2 = ln(12) / 2.
    pred = torch.zeros(1, 6, 1, 3)
    pred[0, 0, 0, 0] = math.log(5.0)
    pred[0, 2, 0, 2] = 100.0
    target = torch.tensor([[[0, 3, 255]]])
    loss = build_task_loss("semseg", dataset="synthetic_nyud")(pred, target)
    assert loss.item() == pytest.approx(math.log(12.0) / 2)


def test_cross_entropy_all_ignored_is_zero_with_a_graph() -> None:
    # A human_parts map of an image without parts is all 255: the loss is 0, not NaN, and backward works.
    pred = torch.randn(2, 7, 2, 2, requires_grad=True)
    loss = build_task_loss("human_parts", dataset="pascal_context")(pred, torch.full((2, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(pred.grad, torch.zeros_like(pred))


# ---- depth and normals ----------------------------------------------------------------------------------


def test_depth_l1_only_counts_gt_above_zero() -> None:
    # gt 0 is invalid: |1 − 2| + |5 − 3| = 3 over 2 valid pixels = 1.5 (the 2 against gt 0 does not count).
    loss = build_task_loss("depth", dataset="nyud")(row(1.0, 2.0, 5.0), row(2.0, 0.0, 3.0))
    assert loss.item() == pytest.approx(1.5)


def test_normals_l1_normalises_prediction_and_divides_by_pixels() -> None:
    # Pixel 0: (2, 0, 0) → (1, 0, 0) against (0, 1, 0): 1 + 1 + 0 = 2.
    # Pixel 1: (0, 3, 4) → (0, 0.6, 0.8) against (0, 0, 1): 0 + 0.6 + 0.2 = 0.8.
    # Pixel 2: zero target → ignored. (2 + 0.8) / 2 valid pixels = 1.4 (ATRC; MTI-Net's / 6 elements differs).
    pred = torch.tensor([[2.0, 0, 0], [0, 3, 4], [5, 5, 5]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[0.0, 1, 0], [0, 0, 1], [0, 0, 0]]).T.reshape(1, 3, 1, 3)
    loss = build_task_loss("normals", dataset="nyud")(pred, target)
    assert loss.item() == pytest.approx(1.4)


def test_normals_l1_per_element_divides_by_three_per_valid_pixel() -> None:
    # The same pixels as above: 2 + 0.8 = 2.8 over 2 valid pixels x 3 components = 6 elements (MTI-Net's
    # NormalsLoss), i.e. the per-pixel loss 1.4 / 3; the ignored pixel's 3 elements do not count.
    pred = torch.tensor([[2.0, 0, 0], [0, 3, 4], [5, 5, 5]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[0.0, 1, 0], [0, 0, 1], [0, 0, 0]]).T.reshape(1, 3, 1, 3)
    per_element = build_task_loss("normals", dataset="nyud", normalize_by="elements")(pred, target)
    assert per_element.item() == pytest.approx(2.8 / 6)
    per_pixel = build_task_loss("normals", dataset="nyud", normalize_by="pixels")(pred, target)
    assert per_element.item() == pytest.approx(per_pixel.item() / 3)
    with pytest.raises(MtbenchError, match="normalize_by must be one of pixels, elements; got 'voxels'"):
        build_task_loss("normals", dataset="nyud", normalize_by="voxels")


# ---- balanced BCE ---------------------------------------------------------------------------------------


def test_edge_balanced_bce_fixed_weight_hand_value() -> None:
    # w = 0.95. σ(ln 3) = 3/4. Pixel 0: positive, logit ln 3 → 0.95 · ln(4/3).
    # Pixel 1: negative, logit ln 3 → 0.05 · −ln(1/4) = 0.05 · ln 4. Pixel 2: negative, logit 0 → 0.05 · ln 2.
    # Pixel 3: 255 → ignored. Mean over 3 valid pixels.
    pred, target = row(LN3, LN3, 0.0, 5.0), row(1.0, 0.0, 0.0, 255.0)
    expected = (0.95 * math.log(4 / 3) + 0.05 * math.log(4) + 0.05 * LN2) / 3
    assert build_task_loss("edge", dataset="nyud")(pred, target).item() == pytest.approx(expected)


def test_edge_balanced_bce_equals_atrc_pos_weight_form() -> None:
    # ATRC: BCEWithLogits(pos_weight = w / (1 − w)) on valid pixels, divided by 1 / (1 − w); w = 0.8 (NYUD).
    torch.manual_seed(0)
    pred = torch.randn(2, 1, 4, 4)
    target = torch.randint(0, 2, (2, 1, 4, 4)).float()
    target[0, 0, 0] = 255.0
    w = 0.8
    valid = target != 255
    atrc = F.binary_cross_entropy_with_logits(pred[valid], target[valid], pos_weight=torch.tensor(w / (1 - w)))
    atrc = atrc / (1 / (1 - w))
    ours = build_task_loss("edge", dataset="nyud", pos_weight=w)(pred, target)
    assert ours.item() == pytest.approx(atrc.item(), rel=1e-6)


def test_sal_automatic_weight_is_fraction_of_negatives() -> None:
    # Valid targets (1, 0, 0), the fourth is 255 → w = 2 negatives / 3 valid = 2/3.
    # Pixel 0: positive, logit 0 → (2/3) ln 2. Pixel 1: negative, logit 0 → (1/3) ln 2.
    # Pixel 2: negative, logit ln 3 → (1/3) ln 4. Sum = (5/3) ln 2; over 3 valid pixels: 5 ln 2 / 9.
    pred = row(0.0, 0.0, LN3, -7.0)
    target = torch.tensor([[[1, 0, 0, 255]]])
    loss = build_task_loss("sal", dataset="pascal_context")
    assert loss(pred, target).item() == pytest.approx(5 * LN2 / 9)
    # A 2-channel head is scored on z1 − z0: (0, x) gives the same loss as the 1-channel logit x.
    two = torch.cat([torch.zeros_like(pred), pred], dim=1)
    assert loss(two, target).item() == pytest.approx(5 * LN2 / 9)


def test_sal_without_positives_is_zero() -> None:
    # w = 1 (all negatives) → negatives weigh 1 − w = 0; ATRC returns 0 in this case.
    loss = build_task_loss("sal", dataset="pascal_context")(row(0.3, -2.0), torch.tensor([[[0, 0]]]))
    assert loss.item() == 0.0


# ---- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "dataset", "pred", "target", "words"), [
    ("semseg", "nyud", torch.zeros(1, 40, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long), ["semseg", "target"]),
    ("semseg", "nyud", torch.zeros(1, 41, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), ["semseg", "prediction"]),
    ("depth", "nyud", torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3), ["depth", "target"]),
    ("normals", "nyud", torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2), ["normals", "target"]),
    ("edge", "nyud", torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long), ["edge", "target"]),
    ("sal", "pascal_context", torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), ["sal", "target"]),
])
def test_shape_and_dtype_mismatches_are_user_errors(task, dataset, pred, target, words) -> None:
    with pytest.raises(MtbenchError) as err:
        build_task_loss(task, dataset=dataset)(pred, target)
    assert all(w in str(err.value) for w in words)


def test_build_task_loss_checks_its_arguments() -> None:
    with pytest.raises(MtbenchError, match="pos_weight must lie strictly between 0 and 1"):
        build_task_loss("edge", dataset="nyud", pos_weight=1.5)
    with pytest.raises(MtbenchError, match="not defined on dataset"):
        build_task_loss("depth", dataset="pascal_context")
    with pytest.raises(MtbenchError, match="unknown task"):
        build_task_loss("depht", dataset="nyud")
    assert build_task_loss("edge", dataset="nyud").pos_weight == 0.95
    assert build_task_loss("semseg", dataset="nyud").num_classes == 40
    with pytest.raises(MtbenchError, match="unknown option 'pos_weight' for the semseg loss"):
        build_task_loss("semseg", dataset="nyud", pos_weight=0.8)
    with pytest.raises(MtbenchError, match="unknown option 'normalise_by' for the normals loss \\(l1_normals\\). "
                                           "Did you mean 'normalize_by'\\? Its options: normalize_by."):
        build_task_loss("normals", dataset="nyud", normalise_by="elements")
