"""Confidence intervals and paired comparisons over seeds, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from mtbench.errors import MtbenchError
from mtbench.metrics.seed_stats import compare_paired, summarize_seeds


def test_t_interval_by_hand():
    s = summarize_seeds([1.0, 2.0, 3.0])
    # mean 2, sample std sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1, t_{0.975, df=2} = 4.302653 (tables)
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (s.ci_low, s.ci_high) == pytest.approx((2 - 2.484138, 2 + 2.484138), rel=1e-6)


def test_interval_at_90_percent_and_single_seed():
    s = summarize_seeds([10.0, 14.0], confidence=0.90)
    # std = sqrt(8) = 2.828427, t_{0.95, df=1} = 6.313752, half = 6.313752 * 2.828427 / sqrt(2) = 12.627504
    assert s.half_width == pytest.approx(12.627504, rel=1e-6)
    one = summarize_seeds([5.0])
    assert one.mean == 5.0 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_paired_comparison_by_hand():
    a, b = {0: 3.0, 1: 5.0, 2: 4.0, 7: 9.0}, {0: 1.0, 1: 2.0, 2: 2.0}
    result = compare_paired(a, b, higher_is_better=True, names=("demt", "shared"))
    # common seeds 0, 1, 2; differences 2, 3, 2: mean 7/3, std 0.57735, t = (7/3) / (0.57735 / sqrt 3) = 7.0,
    # two-sided p with df 2 = 0.019804
    assert result.seeds == (0, 1, 2)
    assert result.improvement.mean == pytest.approx(7 / 3)
    assert result.p_value == pytest.approx(0.019804, rel=1e-4)
    assert result.verdict == "demt is better than shared"


def test_paired_comparison_lower_is_better_and_undecided():
    better = compare_paired({0: 0.5, 1: 0.6}, {0: 0.7, 1: 0.8}, higher_is_better=False)
    assert better.improvement.mean == pytest.approx(0.2) and better.verdict == "A is better than B"
    undecided = compare_paired({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0}, higher_is_better=True)
    assert undecided.verdict == "2 seeds do not separate A and B"


def test_errors_are_clear():
    with pytest.raises(MtbenchError, match="at least 2 seeds"):
        compare_paired({0: 1.0}, {0: 2.0, 1: 3.0}, higher_is_better=True)
    with pytest.raises(MtbenchError, match="at least one value"):
        summarize_seeds([])
    with pytest.raises(MtbenchError, match="non-finite"):
        summarize_seeds([1.0, float("nan")])
