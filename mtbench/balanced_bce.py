"""The class-balanced binary cross-entropy: one formula shared by the edge/sal loss and the edge meter.

Edge validation logs this loss (`edge/loss_bce`) as its proxy for odsF, so the meter and the loss must
compute the same number; both read it from here (metrics do not import losses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtbench.tasks import IGNORE


def balanced_bce_sum(logits: Tensor, target: Tensor, pos_weight: float | None,
                     ignore_index: int = IGNORE) -> tuple[Tensor, Tensor]:
    """Return (Σ over valid pixels of w·y·ℓ⁺ + (1−w)·(1−y)·ℓ⁻, number of valid pixels).

    ℓ⁺ = −log σ(x) and ℓ⁻ = −log(1 − σ(x)) are the binary cross-entropy terms of logit x; pixels whose
    target equals `ignore_index` count in neither sum. `pos_weight` w is fixed (edge) or, when None, the
    HED-style fraction of negatives among this call's valid pixels (sal). Dividing the sum by the count
    gives ATRC's loss exactly: BCEWithLogits with pos_weight w/(1−w), then divided by 1/(1−w)
    (brdav/atrc: src/model/criterion.py::BalancedBinaryCrossEntropyLoss); that class returns 0 when a batch
    has no positives under the automatic weight, which w = 1 gives here without a special case.
    `logits` and `target` have the same shape.
    """
    valid = target != ignore_index
    y = torch.where(valid, target, torch.zeros_like(target)).to(logits.dtype)
    n_valid = valid.sum()
    if pos_weight is None:
        w = 1.0 - y.sum() / n_valid.clamp(min=1)
    else:
        w = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    per_pixel = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    weight = torch.where(valid, w * y + (1.0 - w) * (1.0 - y), torch.zeros_like(y))
    return (per_pixel * weight).sum(), n_valid
