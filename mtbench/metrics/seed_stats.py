"""Statistics over seeds: mean, std and a t-distribution confidence interval, and paired comparisons.

A benchmark number is a mean over seeds; its uncertainty is what lets a reader decide whether variant
A beats variant B. With n seeds the 95% interval is mean ± t_{0.975, n−1} · std / √n (Student's t,
since n is small and the std is estimated), and A is compared with B on the per-seed differences of
runs that share a seed (a paired t-test), which removes the variation common to both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mtbench.errors import MtbenchError


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample std (ddof = 1), count and the two-sided confidence interval of per-seed values."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def summarize_seeds(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Summarise per-seed values; std and interval are NaN for a single seed.

    Example: [1, 2, 3] → mean 2, std 1, t_{0.975, 2} = 4.3027, half width 4.3027 · 1 / √3 = 2.4841,
    so the 95% interval is [−0.4841, 4.4841].
    """
    if not 0 < confidence < 1:
        raise MtbenchError(f"confidence must lie strictly between 0 and 1, got {confidence!r}.")
    vals = np.asarray([float(v) for v in values], dtype=np.float64)
    if vals.size == 0:
        raise MtbenchError("summarize_seeds needs at least one value.")
    if not np.isfinite(vals).all():
        raise MtbenchError(f"summarize_seeds: non-finite per-seed values {vals.tolist()}.")
    mean = float(vals.mean())
    if vals.size == 1:
        return SeedSummary(mean, math.nan, 1, math.nan, math.nan, confidence)
    std = float(vals.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, vals.size - 1)) * std / math.sqrt(vals.size)
    return SeedSummary(mean, std, int(vals.size), mean - half, mean + half, confidence)


@dataclass(frozen=True)
class PairedComparison:
    """Does A beat B? Per-seed differences A − B (sign-adjusted so that > 0 means A is better)."""

    seeds: tuple[int, ...]
    improvement: SeedSummary
    p_value: float
    verdict: str


def compare_paired(a: Mapping[int, float], b: Mapping[int, float], *, higher_is_better: bool,
                   confidence: float = 0.95, names: tuple[str, str] = ("A", "B")) -> PairedComparison:
    """Compare two variants on the seeds both ran, with a two-sided paired t-test.

    `improvement` summarises s · (a_seed − b_seed), s = +1 when higher is better, else −1. The verdict
    says which is better when the interval of the improvement excludes 0 (equivalently p < 1 −
    confidence), otherwise that the seeds do not separate them. Example (higher is better): a = {0: 3,
    1: 5, 2: 4}, b = {0: 1, 1: 2, 2: 2} → differences [2, 3, 2], mean 2.333, std 0.577, t = 7.0, p = 0.0198.
    """
    seeds = tuple(sorted(set(a) & set(b)))
    if len(seeds) < 2:
        raise MtbenchError(f"a paired comparison of {names[0]} and {names[1]} needs at least 2 seeds that "
                           f"both ran; common seeds: {list(seeds)}. Run more seeds.")
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (float(a[s]) - float(b[s])) for s in seeds]
    summary = summarize_seeds(diffs, confidence)
    if summary.std <= 1e-12 * max(1.0, abs(summary.mean)):  # identical differences: t is undefined
        p = 0.0 if summary.mean != 0 else 1.0
    else:
        p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    if summary.ci_low > 0:
        verdict = f"{names[0]} is better than {names[1]}"
    elif summary.ci_high < 0:
        verdict = f"{names[1]} is better than {names[0]}"
    else:
        verdict = f"{len(seeds)} seeds do not separate {names[0]} and {names[1]}"
    return PairedComparison(seeds, summary, p, verdict)
