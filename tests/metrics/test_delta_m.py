"""Δm and seed aggregation against hand-computed values."""

from __future__ import annotations

import math

import pytest

from mtbench.errors import MtbenchError
from mtbench.metrics import aggregate_seeds, delta_m

REFERENCE = {"semseg/mIoU": 38.0, "depth/rmse": 0.62, "normals/mean": 20.0, "sal/maxF": 80.0,
             "edge/loss_bce": 0.05}


def test_delta_m_worked_example() -> None:
    # semseg: +(40 − 38) / 38 = +0.0526316; depth (lower is better): −(0.60 − 0.62) / 0.62 = +0.0322581.
    # Δm = 100 / 2 · (0.0526316 + 0.0322581) = 4.24448 %.
    results = {"semseg/mIoU": 40.0, "depth/rmse": 0.60}
    value = delta_m(results, REFERENCE, tasks=("semseg", "depth"))
    assert value == pytest.approx(100 / 2 * (2 / 38 + 0.02 / 0.62))
    assert value == pytest.approx(4.24448, abs=1e-5)


def test_delta_m_negative_and_metric_override() -> None:
    # normals mean 22 vs 20 (lower is better): −(22 − 20) / 20 = −0.1.
    # sal maxF 76 vs 80: (76 − 80) / 80 = −0.05. edge, scored on its loss proxy 0.04 vs 0.05: +0.2.
    # Δm = 100 / 3 · (−0.1 − 0.05 + 0.2) = 1.6667 %.
    results = {"normals/mean": 22.0, "sal/maxF": 76.0, "edge/loss_bce": 0.04}
    value = delta_m(results, REFERENCE, tasks=("normals", "sal", "edge"), metrics={"edge": "edge/loss_bce"})
    assert value == pytest.approx(100 / 3 * 0.05)
    assert delta_m(results, REFERENCE, tasks=("normals",)) == pytest.approx(-10.0)


def test_delta_m_names_the_missing_task_metric() -> None:
    with pytest.raises(MtbenchError, match=r"'depth' has no 'depth/rmse' in the results"):
        delta_m({"semseg/mIoU": 40.0}, REFERENCE, tasks=("semseg", "depth"))
    with pytest.raises(MtbenchError, match=r"'semseg' has no 'semseg/mIoU' in the reference"):
        delta_m({"semseg/mIoU": 40.0}, {}, tasks=("semseg",))
    # edge's primary metric is odsF, which a loss-proxy run does not log.
    with pytest.raises(MtbenchError, match=r"'edge' has no 'edge/odsF'"):
        delta_m({"edge/loss_bce": 0.04}, REFERENCE, tasks=("edge",))


def test_delta_m_rejects_bad_input() -> None:
    with pytest.raises(MtbenchError, match="reference 'semseg/mIoU' of task 'semseg' is 0"):
        delta_m({"semseg/mIoU": 1.0}, {"semseg/mIoU": 0.0}, tasks=("semseg",))
    with pytest.raises(MtbenchError, match="no known direction"):
        delta_m({"semseg/foo": 1.0}, {"semseg/foo": 1.0}, tasks=("semseg",), metrics={"semseg": "semseg/foo"})
    with pytest.raises(MtbenchError, match="not in `tasks`"):
        delta_m({"semseg/mIoU": 1.0}, REFERENCE, tasks=("semseg",), metrics={"sal": "sal/maxF"})
    with pytest.raises(MtbenchError, match="is nan in the results"):
        delta_m({"semseg/mIoU": math.nan}, REFERENCE, tasks=("semseg",))
    with pytest.raises(MtbenchError, match="at least one task"):
        delta_m({}, REFERENCE, tasks=())


def test_aggregate_seeds() -> None:
    # (1, 2, 3): mean 2; sample variance ((−1)² + 0² + 1²) / (3 − 1) = 1 → std 1.
    assert aggregate_seeds([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    one = aggregate_seeds([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["std"]) and one["n"] == 1
    with pytest.raises(MtbenchError, match="at least one value"):
        aggregate_seeds([])


def test_libmtl_variant_averages_all_metrics_of_a_task_first():
    results = {"semseg/mIoU": 40.0, "depth/rmse": 0.60, "depth/abs_rel": 0.20, "edge/loss_bce": 9.0}
    reference = {"semseg/mIoU": 38.0, "depth/rmse": 0.62, "depth/abs_rel": 0.16, "edge/loss_bce": 1.0}
    # semseg: +2/38 = +0.0526316; depth: (+0.02/0.62 - 0.04/0.16) / 2 = (0.0322581 - 0.25) / 2 = -0.1088710
    # Δm = 100/2 (0.0526316 - 0.1088710) = -2.81197
    assert delta_m(results, reference, tasks=["semseg", "depth"], variant="libmtl") == pytest.approx(-2.81197,
                                                                                                    abs=1e-5)
    # the default (mtl) uses only the primary metric of each task: +4.2445 (docstring example)
    assert delta_m(results, reference, tasks=["semseg", "depth"]) == pytest.approx(4.24448, abs=1e-5)
    # explicit metric lists, and a variant metric name keeps its base metric's direction
    results["sal/maxF-invpt"], reference["sal/maxF-invpt"] = 60.0, 50.0
    assert delta_m(results, reference, tasks=["sal"], metrics={"sal": ["sal/maxF-invpt"]},
                   variant="libmtl") == pytest.approx(20.0)


def test_unknown_delta_m_variant():
    with pytest.raises(MtbenchError, match="unknown Δm variant 'lib'"):
        delta_m({}, {}, tasks=["semseg"], variant="lib")
