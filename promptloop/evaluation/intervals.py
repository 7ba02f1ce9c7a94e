"""Student-t confidence intervals of a mean (no SciPy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

# Two-sided 95 % quantiles t_{0.975, df} for df = 1 ... 30.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom.

    SciPy when installed; otherwise a table for ``p = 0.975`` and ``df <= 30``, else the
    Cornish-Fisher expansion around the normal quantile (error < 1e-4 for df > 30).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    try:
        from scipy.stats import t as student_t

        return float(student_t.ppf(p, df))
    except ImportError:
        pass
    if abs(p - 0.975) < 1e-12 and df <= len(_T975):
        return _T975[df - 1]
    if df <= 30:
        raise ValueError("without SciPy only 95 % intervals are available for fewer than 31 units")
    z = NormalDist().inv_cdf(p)
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval over ``n`` units (NaN bounds when ``n < 2``)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` and its Student-t interval: ``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)``."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)
