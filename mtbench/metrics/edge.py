"""Edge meters: the balanced-BCE loss proxy logged during training (a loss, never odsF) and the boundary
F-measures odsF / oisF / AP of the SEISM protocol (`mtbench.metrics.boundary`), for the final evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import torch
from torch import Tensor

from mtbench.balanced_bce import balanced_bce_sum
from mtbench.errors import MtbenchError
from mtbench.metrics.boundary import (
    MAX_DIST,
    NMS_THRESHOLDS,
    RAW_THRESHOLDS,
    BoundaryProtocol,
    image_counts,
    scores_from_counts,
    worker_pool,
)
from mtbench.metrics.meter import Meter, check_finite
from mtbench.registry import register_meter
from mtbench.tasks import DATASET_FAMILY, IGNORE, get_task

# The edge training loss's default positive weight, which the loss proxy uses unless given another.
DEFAULT_POS_WEIGHT = float(get_task("edge").loss_options["pos_weight"])


class EdgeLossMeter(Meter):
    """`edge/loss_bce`: Σ over valid pixels of w·y·ℓ⁺ + (1−w)·(1−y)·ℓ⁻, divided by the split's valid pixels.

    The same weighted BCE as the edge training loss (`mtbench.balanced_bce.balanced_bce_sum`, w = the edge
    task's loss option `pos_weight`, 0.95, unless given), pooled per pixel like MTI-Net's and InvPT's
    `evaluation/eval_edge.py::EdgeMeter` (their per-batch mean times its pixel count). Unlike those, it
    reads the raw logits: they pass the 8-bit saved prediction / 255, a probability, to a with-logits loss.
    Lower is better. The boundary F-measure (odsF) needs the SEISM-style matching evaluation, which this is
    not.
    """

    task = "edge"

    def __init__(self, pos_weight: float = DEFAULT_POS_WEIGHT, *, variant: str) -> None:
        super().__init__(variant=variant)
        if not 0.0 < pos_weight < 1.0:
            raise MtbenchError(f"edge meter: pos_weight must lie strictly between 0 and 1; got {pos_weight!r}.")
        self.pos_weight = float(pos_weight)

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        return {"loss_sum": torch.zeros((), dtype=torch.float64, device=device),
                "n": torch.zeros((), dtype=torch.long, device=device)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["n"])

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        get_task(self.task).check_tensors(pred, target, channels=1)
        check_finite(self.task, pred)
        total, n = balanced_bce_sum(pred.float(), target.float(), self.pos_weight)
        state = self._state_on(pred.device)
        state["loss_sum"] += total.double()
        state["n"] += n

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        return {"edge/loss_bce": float(state["loss_sum"]) / float(state["n"])}


@register_meter("edge", directions={"edge/loss_bce": False})
def edge(*, dataset: str | None, variant: str, pos_weight: float = DEFAULT_POS_WEIGHT) -> EdgeLossMeter:
    """Reference edge meter: the balanced-BCE loss proxy `edge/loss_bce` (not odsF)."""
    if dataset is not None:
        get_task("edge").num_outputs(dataset)
    return EdgeLossMeter(pos_weight, variant=variant)


class BoundaryMeter(Meter):
    """`edge/odsF`, `edge/oisF`, `edge/AP` (percent; `-<metric_variant>` appended, e.g. `-odsf_raw`), SEISM protocol.

    `update(pred, target)`: pred (B, 1, H, W) logits (scored as sigmoid probabilities), target (B, 1, H, W)
    float in {0, 1} with IGNORE = ignore; each image is cropped to its non-ignored box (the image before
    padding). The state is one row of counts (cntR, sumR, cntP, sumP) per threshold and image,
    `counts` (N, T, 4) int64 on the CPU (an image whose pixels are all ignored adds no row), concatenated
    across processes: summing its rows gives odsF and AP, each row's best threshold gives oisF. With
    `num_workers` > 0, update() hands images to that many worker processes ('spawn') and returns; the
    counts are collected, and the workers stopped, when the state is read (`state_tensors`, `compute`).

    A meter sees tensors only, so it cannot pick an image subset by id: to score PASCAL-Context `test_new`,
    evaluate a loader over those images (ids from `mtbench.data.edge_sets.edge_eval_ids`), or keep
    `counts`, whose rows follow the order of update() calls, and select rows before `scores_from_counts`.
    """

    task = "edge"
    concat_states = frozenset({"counts"})

    def __init__(self, protocol: BoundaryProtocol, *, variant: str, num_workers: int = 0,
                 metric_variant: str | None = None) -> None:
        super().__init__(variant=variant)
        self.protocol = protocol
        self.metric_variant = metric_variant
        self._rows: list[np.ndarray] = []
        self._pending: list[Future] = []
        self._pool: ProcessPoolExecutor | None = None
        self.use_workers(num_workers)

    def use_workers(self, num_workers: int) -> None:
        if num_workers < 0:
            raise MtbenchError(f"edge meter: num_workers must be >= 0; got {num_workers}.")
        if self._pool is not None:
            raise MtbenchError("edge meter: the worker count cannot change while workers run; call it before "
                               "the first update or after reading the state.")
        self.num_workers = int(num_workers)

    def reset(self) -> None:
        super().reset()
        self._rows = []
        self._stop_workers()

    def _stop_workers(self) -> None:
        for job in self._pending:
            job.cancel()
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        """Kill the matching workers now (an interrupted evaluation): their pending images are dropped."""
        pool, self._pool = self._pool, None
        self._pending, self._rows = [], []
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):  # shutdown() alone waits for running jobs
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def _empty_state(self, device: torch.device) -> dict[str, Tensor]:
        return {"counts": torch.zeros((0, len(self.protocol.thresholds), 4), dtype=torch.long)}

    def _count(self, state: dict[str, Tensor]) -> int:
        return int(state["counts"].shape[0])

    def _collect(self, block: bool, on_done: Callable[[], None] | None = None) -> None:
        """Move finished jobs (all of them when `block`) into the rows, keeping update order."""
        while self._pending and (block or self._pending[0].done()):
            counts = self._pending.pop(0).result()
            if counts is not None:
                self._rows.append(counts)
            if on_done is not None:
                on_done()

    def pending(self) -> int:
        """Return how many images the worker processes have yet to match."""
        return len(self._pending)

    def wait(self, on_done: Callable[[], None] | None = None) -> None:
        """Collect every image the workers match, in update order, calling `on_done` after each."""
        self._collect(block=True, on_done=on_done)

    def state_tensors(self) -> dict[str, Tensor]:
        state = super().state_tensors()
        self._collect(block=True)
        if self._pool is not None:  # no idle worker processes between evaluations
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._rows:
            new = torch.from_numpy(np.stack(self._rows))
            state["counts"] = torch.cat([state["counts"], new])
            self._rows = []
        return state

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        self._stop_workers()
        self._rows = []
        counts = state.get("counts")
        if counts is not None and (counts.dim() != 3 or counts.shape[1:] != (len(self.protocol.thresholds), 4)):
            raise ValueError(f"edge meter state 'counts' must have shape (N, {len(self.protocol.thresholds)}, 4); "
                             f"got {tuple(counts.shape)}")
        super().load_state_tensors(state)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        get_task(self.task).check_tensors(pred, target, channels=1)
        check_finite(self.task, pred)
        labels = target.detach()
        bad = (labels != 0) & (labels != 1) & (labels != IGNORE)
        if bool(bad.any()):
            raise MtbenchError(f"edge: the target must hold 0, 1 or {IGNORE} (ignore); got "
                               f"{labels[bad].flatten()[0].item()!r}.")
        probs = torch.sigmoid(pred.detach().float())[:, 0].cpu().numpy()
        gts = labels[:, 0].to(torch.uint8).cpu().numpy()
        for prob, gt in zip(probs, gts, strict=True):
            if self.num_workers == 0:
                counts = image_counts(prob, gt, self.protocol)
                if counts is not None:
                    self._rows.append(counts)
                continue
            if self._pool is None:
                self._pool = worker_pool(self.num_workers)
            self._pending.append(self._pool.submit(image_counts, prob, gt, self.protocol))
            self._collect(block=False)
            while len(self._pending) > 4 * self.num_workers:  # bound the images waiting in memory
                self._pending[0].result()
                self._collect(block=False)

    def _compute(self, state: dict[str, Tensor]) -> dict[str, float]:
        scores = scores_from_counts(state["counts"].cpu().numpy(), self.protocol.thresholds)
        return {f"edge/{name}": scores[name] for name in ("odsF", "oisF", "AP")}


def _boundary_meter(dataset: str | None, variant: str, *, thresholds: Sequence[float], nms: bool, quantize: bool,
                    max_dist: float | None, thin_gt: bool, gt_as_segmentation: bool | None, num_workers: int,
                    metric_variant: str | None) -> BoundaryMeter:
    family = None
    if dataset is not None:
        get_task("edge").num_outputs(dataset)
        family = DATASET_FAMILY[dataset]
    if max_dist is None:
        if family is None:
            raise MtbenchError("edge odsF meter: give `dataset` (its family sets maxDist: "
                               f"{', '.join(f'{k} {v}' for k, v in MAX_DIST.items())}) or `max_dist`.")
        max_dist = MAX_DIST[family]
    if gt_as_segmentation is None:  # SEISM reads NYUD's edge PNG as a label map (see boundary.py)
        gt_as_segmentation = family == "nyud"
    protocol = BoundaryProtocol(max_dist=float(max_dist), thresholds=tuple(thresholds), nms=nms,
                                quantize=quantize, thin_gt=thin_gt, gt_as_segmentation=gt_as_segmentation)
    return BoundaryMeter(protocol, variant=variant, num_workers=num_workers, metric_variant=metric_variant)


# SEISM's boundary F-measures and average precision: higher is better.
BOUNDARY_DIRECTIONS = {"edge/odsF": True, "edge/oisF": True, "edge/AP": True}


@register_meter("edge:odsf_nms", directions=BOUNDARY_DIRECTIONS)
def edge_odsf_nms(*, dataset: str | None, variant: str, num_workers: int = 0, max_dist: float | None = None,
                  quantize: bool = True, thin_gt: bool = True,
                  gt_as_segmentation: bool | None = None) -> BoundaryMeter:
    """Published SEISM protocol: 8-bit map, NMS, 101 thresholds; logs `edge/odsF`, `edge/oisF`, `edge/AP`.

    maxDist from the dataset family (NYUD 0.011, PASCAL-Context 0.0075) unless `max_dist` is given;
    `gt_as_segmentation` defaults to SEISM's choice (True on NYUD, False on PASCAL-Context).
    """
    return _boundary_meter(dataset, variant, thresholds=NMS_THRESHOLDS, nms=True, quantize=quantize, max_dist=max_dist,
                           thin_gt=thin_gt, gt_as_segmentation=gt_as_segmentation, num_workers=num_workers,
                           metric_variant=None)


@register_meter("edge:odsf_raw", directions=BOUNDARY_DIRECTIONS)
def edge_odsf_raw(*, dataset: str | None, variant: str, num_workers: int = 0, max_dist: float | None = None,
                  quantize: bool = False, thin_gt: bool = True,
                  gt_as_segmentation: bool | None = None) -> BoundaryMeter:
    """Raw-map protocol: 99 thresholds 0.01..0.99 on the probabilities, no NMS; logs `edge/odsF-odsf_raw`,
    `edge/oisF-odsf_raw`, `edge/AP-odsf_raw`. Options as `edge:odsf_nms`."""
    return _boundary_meter(dataset, variant, thresholds=RAW_THRESHOLDS, nms=False, quantize=quantize, max_dist=max_dist,
                           thin_gt=thin_gt, gt_as_segmentation=gt_as_segmentation, num_workers=num_workers,
                           metric_variant="odsf_raw")
