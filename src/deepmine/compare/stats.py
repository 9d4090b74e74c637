"""Per-group statistics and "is the difference real?" tests (scipy).

`summarize` gives n, mean, sample std, min and max of one metric over a group's seeds.
`compare_means` tests one group against another: the difference of means with a confidence
interval and a p-value, by Welch's t-test (unequal variances, `scipy.stats.ttest_ind` with
`equal_var=False`) or, for groups run on the same seeds, a paired t-test on the per-seed
differences (`scipy.stats.ttest_rel`). With fewer than two values on a side (two pairs when
paired) nothing can be said, and the result says so instead of printing a number.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

#: Below this many seeds per group a test is run but flagged: its power is very low.
FEW_SEEDS = 3


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    std: float | None  # sample std (ddof=1); 0.0 for a single value
    min: float | None
    max: float | None


def summarize(values: list[float]) -> Summary:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return Summary(0, None, None, None, None)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Summary(len(values), statistics.fmean(values), std, min(values), max(values))


@dataclass(frozen=True)
class Difference:
    """`a - b` for one metric: mean difference, its confidence interval, a p-value."""

    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    test: str  # "welch" | "paired" | "none"
    note: str = ""  # why there is no test, or why to distrust it

    @property
    def significant(self) -> bool | None:
        """p < 0.05, or None when there is no p-value."""
        return None if self.p_value is None else self.p_value < 0.05


def compare_means(
    a: list[float],
    b: list[float],
    confidence: float = 0.95,
    paired: bool = False,
) -> Difference:
    """Welch's (or, `paired`, the paired) t-test of mean(a) - mean(b).

    With `paired`, `a[i]` and `b[i]` must come from the same seed (the caller aligns them).
    """
    from scipy import stats

    a = [float(v) for v in a]
    b = [float(v) for v in b]
    if paired and len(a) != len(b):
        raise ValueError(f"paired test needs aligned values, got {len(a)} and {len(b)}")
    diff = (statistics.fmean(a) - statistics.fmean(b)) if a and b else None
    need = "pairs" if paired else "seeds per group"
    if min(len(a), len(b)) < 2:
        return Difference(diff, None, None, None, "none", f"n<2 {need}: cannot say")
    if paired:
        deltas = [x - y for x, y in zip(a, b, strict=True)]
        if statistics.pstdev(deltas) == 0:
            return Difference(diff, diff, diff, None, "none", "identical per-seed differences")
        result = stats.ttest_rel(a, b)
    else:
        if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
            return Difference(diff, diff, diff, None, "none", "no variance in either group")
        result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence_level=confidence)
    note = f"n<{FEW_SEEDS}: low power" if min(len(a), len(b)) < FEW_SEEDS else ""
    return Difference(
        diff,
        float(interval.low),
        float(interval.high),
        float(result.pvalue),
        "paired" if paired else "welch",
        note,
    )
