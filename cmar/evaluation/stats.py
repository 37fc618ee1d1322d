"""Small statistics the study reports: mean and sample spread, and the 95% t interval of a
mean (a Student-t table, so that nothing beyond the standard library is needed)."""

from __future__ import annotations

import math
import statistics

# two-sided 95% quantiles of Student's t by degrees of freedom; between entries the next lower
# df is used (a slightly wider, conservative interval)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
         16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074,
         23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
         30: 2.042, 40: 2.021, 60: 2.000, 80: 1.990, 100: 1.984, 120: 1.980}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN if any value is)."""
    if any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def t_975(df: int) -> float:
    """Student's t quantile for a two-sided 95% interval with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    if df > max(T_975):
        return 1.96  # the normal quantile
    return T_975[max(d for d in T_975 if d <= df)]


def ci95(values: list[float]) -> list[float] | None:
    """[low, high] of the 95% t interval of the mean: mean ± t(0.975, n-1) * sd / sqrt(n).
    None for a single value (no spread to judge it by)."""
    if len(values) < 2:
        return None
    mean, sd = mean_sd(values)
    half = t_975(len(values) - 1) * sd / math.sqrt(len(values))
    return [mean - half, mean + half]
