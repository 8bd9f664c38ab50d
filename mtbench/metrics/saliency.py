"""Saliency maxF (and MTI-Net's mIoU): three published, incompatible definitions, each by name.

Variants (PROTOCOLS.md "Metrics"); p is the foreground probability (`saliency_probability`):
- reference = `atrc` (an explicit alias): thresholds t = 0.05..0.95 step 0.05, positive if p >= t,
  TP / predicted / actual positives pooled over the split, F with β² = 0.3, max over t
  (brdav/atrc: src/data/metrics.py::MaxF; DeMT uses the same file).
- `invpt`: the same, but p goes through a sigmoid a second time, so it lies in [0.5, 0.731]: every
  threshold <= 0.5 marks all pixels positive and every one >= 0.75 none (InvPT's online meter receives
  `softmax[:, 1] * 255` from InvPT/utils/utils.py::get_output and applies `torch.sigmoid(preds / 255)`,
  prismformore/Multi-Task-Transformer: InvPT/evaluation/eval_sal.py::SaliencyMeter.update). Bug-compatible
  only; it under-reports.
- `mtinet`: per image, thresholds np.linspace(0.2, 0.9, 15), positive if p > t; precision, recall and IoU
  per image, averaged over images per threshold, F with β = 1 on the mean precision and mean recall, max
  over t; plus `sal/mIoU-mtinet` = max over t of the mean IoU
  (SimonVandenhende/Multi-Task-Learning-PyTorch: evaluation/eval_sal.py::SaliencyMeter,
  evaluation/jaccard.py::jaccard, ::precision_recall). Ignored pixels (IGNORE) are void there (MTI-Net's own
  call passes no void mask, so its ignored pixels would count as foreground; its resized inputs hold none). This is
  MTI-Net's online meter on float p; its offline `eval_sal` scores p saved as an 8-bit PNG (truncated to
  k/255), which this variant does not reproduce.

Every meter here reads p as float32 and compares it with float32 thresholds, as the reference code does,
up to float32 rounding of p itself (e.g. InvPT's `· 255 / 255` round trip is not repeated).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtbench.errors import MtbenchError
from mtbench.metrics.meter import Meter, check_finite
from mtbench.registry import register_meter
from mtbench.tasks import IGNORE, get_task

BETA_SQUARED = 0.3
NUM_THRESHOLDS = 19  # 0.05, 0.10, ..., 0.95
NUM_MTINET_THRESHOLDS = 15  # 0.20, 0.25, ..., 0.90
# MTI-Net's precision, recall and F denominators carry this epsilon (evaluation/jaccard.py, eval_sal.py).
MTINET_EPS = 1e-12


def thresholds(device: torch.device | None = None) -> Tensor:
    """Return ATRC's 19 float32 thresholds, exactly `torch.arange(0.05, 1, 0.05)` as its MaxF builds them.

    They are not all k/20 rounded to float32: the 12th is 0.59999996, not 0.6000000238.
    """
    return torch.arange(0.05, 1, 0.05, dtype=torch.float32).to(device)


def mtinet_thresholds(device: torch.device | None = None) -> Tensor:
    """Return MTI-Net's 15 thresholds np.linspace(0.2, 0.9, 15) = k/20, k = 4..18, as float32.

    float32 because `float32_tensor > numpy_float64_scalar` compares in float32 in PyTorch.
    """
    return (torch.arange(4, 19, dtype=torch.float64) / 20).to(torch.float32).to(device)


def count_thresholds(prob: Tensor, table: Tensor, *, strict: bool) -> Tensor:
    """Return, per element of `prob`, how many thresholds of `table` lie below it (t < p when `strict`,
    else t <= p), as uint8: `torch.bucketize(prob, table, right=not strict)`, 2-3x faster on CPU for 15-19
    thresholds (one compare per threshold beats its binary search there). Comparing float32 `prob` with a
    threshold compares in float32, exactly as the reference meters' `preds >= thresh`.
    """
    count = torch.zeros(prob.shape, dtype=torch.uint8, device=prob.device)
    above = torch.gt if strict else torch.ge
    for t in table.tolist():
        count += above(prob, t)
    return count


def saliency_probability(pred: Tensor) -> Tensor:
    """Return the (B, H, W) foreground probability: sigmoid of 1 channel, softmax[:, 1] of 2."""
    pred = pred.float()
    return torch.sigmoid(pred[:, 0]) if pred.shape[1] == 1 else torch.softmax(pred, dim=1)[:, 1].contiguous()


def max_f(tp: Tensor, pp: Tensor, ap: Tensor, beta_squared: float = BETA_SQUARED) -> float:
    """Return max over thresholds of F = (1 + β²)·P·R / (β²·P + R), with P = TP/PP, R = TP/AP.

    An undefined F (0/0, e.g. no predicted positives) counts 0, as in ATRC
    (brdav/atrc: src/data/metrics.py::MaxF.compute). Example: TP 2, PP 3, AP 4 → P = 2/3, R = 1/2,
    F = 1.3·(1/3) / (0.2 + 0.5) = 0.619.
    """
    tp, pp, ap = tp.double(), pp.double(), ap.double()
    precision, recall = tp / pp, tp / ap
    f = (1 + beta_squared) * precision * recall / (beta_squared * precision + recall)
    return float(torch.nan_to_num(f, nan=0.0).max())


def _check(pred: Tensor, target: Tensor) -> None:
    spec = get_task("sal")
    spec.check_tensors(pred, target, channels=spec.accepted_channels(None))
    check_finite("sal", pred)
    low, high = (int(v) for v in torch.aminmax(target))
    if low < 0 or high > IGNORE:
        _bad_target()


def _bad_target() -> None:
    raise MtbenchError(f"sal: the target must hold 0, 1 or {IGNORE}; it holds other values.")


def _histogram(index: Tensor, rows: int, bins: int) -> Tensor:
    """Return the (rows, 2, bins) counts of `index` = (row · (IGNORE + 1) + target) · bins + level; targets
    2..IGNORE − 1 are refused and IGNORE dropped. One bincount, and no valid mask is materialised."""
    counts = torch.bincount(index.view(-1), minlength=rows * (IGNORE + 1) * bins)
    counts = counts.view(rows, IGNORE + 1, bins)
    if bool(counts[:, 2:IGNORE].any()):
        _bad_target()
    return counts[:, :2]


class SaliencyMeter(Meter):
    """`sal/maxF` in percent: TP, predicted and actual positives per threshold, pooled over the split.

    p = sigmoid (1 channel) or softmax[:, 1] (2 channels), passed through a second sigmoid when
    `double_sigmoid` (the `invpt` variant); a valid pixel (target != IGNORE) is predicted positive at
    threshold t when p >= t, for ATRC's t = 0.05..0.95 step 0.05; β² = 0.3 (ATRC's `MaxF`). The state is
    one (2, 20) histogram of [target, number of thresholds <= p], filled with one bincount; TP/PP at each
    threshold are its tail sums.
    """

    task = "sal"

    def __init__(self, *, variant: str, double_sigmoid: bool = False, metric_variant: str | None = None) -> None:
        super().__init__(variant=variant)
        self.double_sigmoid = double_sigmoid
        self.metric_variant = metric_variant

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        return {"histogram": torch.zeros(2, NUM_THRESHOLDS + 1, dtype=torch.long, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["histogram"].sum())

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        _check(pred, target)
        prob = saliency_probability(pred)
        if self.double_sigmoid:
            prob = torch.sigmoid(prob)
        # level = number of thresholds t with t <= p, so p >= t_k  <=>  level >= k (k = 1..19).
        level = count_thresholds(prob, thresholds(), strict=False)
        bins = NUM_THRESHOLDS + 1
        counts = _histogram(target.long() * bins + level, 1, bins)
        self._state_on(pred.device)["histogram"] += counts[0]

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        hist = state["histogram"]
        tail = hist.flip(-1).cumsum(-1).flip(-1)  # tail[y, k] = pixels of class y with level >= k
        tp = tail[1, 1:]
        pp = tail[0, 1:] + tail[1, 1:]
        ap = hist[1].sum().expand_as(tp)
        return {"sal/maxF": 100.0 * max_f(tp, pp, ap)}


class PerImageSaliencyMeter(Meter):
    """MTI-Net's saliency meter: per-image precision, recall and IoU at 15 thresholds, averaged over images.

    For image i and threshold t (positive if p > t, over its valid pixels): P = TP / (TP + FP + 1e-12),
    R = TP / (TP + FN + 1e-12), IoU = TP / |gt ∪ pred|, or 1 when both are empty. Then
    `sal/maxF-mtinet` = max_t 2·mP·mR / (mP + mR + 1e-12) and `sal/mIoU-mtinet` = max_t mIoU, where m is
    the mean over images; both in percent. An image without valid pixels is left out. The state is the
    per-threshold sums of P, R and IoU over images plus the image count, so processes add up.
    Example (t = 0.5 only): image 1 has 1 of 1 foreground pixel found and no false positive (P = R = 1);
    image 2 has no foreground pixel and one false positive (P = R = 0) → mP = mR = 1/2, F = 1/2, whereas
    pooling both images gives P = 1/2, R = 1.
    """

    task = "sal"
    metric_variant = "mtinet"

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        sums = {k: torch.zeros(NUM_MTINET_THRESHOLDS, dtype=torch.float64, device=device)
                for k in ("precision_sum", "recall_sum", "iou_sum")}
        return {**sums, "images": torch.zeros((), dtype=torch.long, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["images"])

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        _check(pred, target)
        prob = saliency_probability(pred)
        b = prob.shape[0]
        # level = number of thresholds t with t < p, so p > t_k  <=>  level >= k (k = 1..15).
        level = count_thresholds(prob, mtinet_thresholds(), strict=True)
        bins = NUM_MTINET_THRESHOLDS + 1
        # One bincount of [image, target, level] for the whole batch.
        image = torch.arange(b, device=prob.device).view(b, 1, 1) * (IGNORE + 1)
        hist = _histogram((image + target.long()) * bins + level, b, bins)
        seen = hist.sum(dim=(1, 2)) > 0
        hist = hist[seen].double()
        tail = hist.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # (n, 2, 15): pixels of each class with p > t
        tp, fp = tail[:, 1], tail[:, 0]
        ap = hist[:, 1].sum(-1, keepdim=True)  # (n, 1) foreground pixels per image
        union = ap + fp
        state = self._state_on(pred.device)
        state["precision_sum"] += (tp / (tp + fp + MTINET_EPS)).sum(0)
        state["recall_sum"] += (tp / (ap + MTINET_EPS)).sum(0)
        state["iou_sum"] += torch.where(union > 0, tp / union.clamp(min=1), 1.0).sum(0)
        state["images"] += seen.sum()

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        n = float(state["images"])
        mp, mr = state["precision_sum"] / n, state["recall_sum"] / n
        f = 2 * mp * mr / (mp + mr + MTINET_EPS)
        return {"sal/maxF": 100.0 * float(f.max()), "sal/mIoU": 100.0 * float((state["iou_sum"] / n).max())}


def _check_dataset(dataset: str | None) -> None:
    if dataset is not None:
        get_task("sal").num_outputs(dataset)


@register_meter("sal", "sal:atrc", directions={"sal/maxF": True})
def sal(*, dataset: str | None, variant: str) -> SaliencyMeter:
    """Reference saliency meter, also named `atrc`: pooled maxF, 19 thresholds p >= t, β² = 0.3."""
    _check_dataset(dataset)
    return SaliencyMeter(variant=variant)


@register_meter("sal:invpt", directions={"sal/maxF": True})
def sal_invpt(*, dataset: str | None, variant: str) -> SaliencyMeter:
    """InvPT's saliency meter, bug-compatible: ATRC's maxF on sigmoid(p), a second sigmoid."""
    _check_dataset(dataset)
    return SaliencyMeter(variant=variant, double_sigmoid=True, metric_variant="invpt")


@register_meter("sal:mtinet", directions={"sal/maxF": True, "sal/mIoU": True})
def sal_mtinet(*, dataset: str | None, variant: str) -> PerImageSaliencyMeter:
    """MTI-Net's saliency meter: per-image maxF (β = 1, 15 thresholds p > t) and mIoU."""
    _check_dataset(dataset)
    return PerImageSaliencyMeter(variant=variant)
