"""Seed statistics of an ablation: mean ± sd and the paired t-interval of a difference.

The t quantile comes from Student's t distribution function in closed form for an integer number of
degrees of freedom (Abramowitz & Stegun 26.7.3 and 26.7.4: a finite sum of powers of cos θ,
θ = atan(t/√ν)), inverted by bisection: exact to float precision with the standard library only
(no scipy; numpy and scikit-learn have no t quantile).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (``None`` with fewer than two values) of ``n`` values."""

    mean: float | None
    sd: float | None
    n: int


@dataclass(frozen=True)
class TInterval:
    """A paired t-interval over seeds: ``None`` bounds with fewer than two seeds."""

    mean: float
    sd: float | None
    n: int
    interval: Interval | None


def spread(values: Sequence[float | None]) -> Spread:
    """Mean ± sd of the defined values (``None`` is a metric a run could not compute)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return Spread(None, None, 0)
    return Spread(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


def t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` (integer >= 1) degrees of freedom, t >= 0."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if t <= 0:
        return 0.0
    if math.isinf(t):
        return 1.0
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) (theta + sin(theta) [cos + 2/3 cos^3 + ... + (2·4···(df-3))/(1·3···(df-2)) cos^(df-2)])
        total = 0.0
        if df > 1:
            term = total = math.cos(theta)
            for k in range(3, df - 1, 2):
                term *= c2 * (k - 1) / k
                total += term
        return min(1.0, 2.0 / math.pi * (theta + s * total))
    term = total = 1.0  # even: sin(theta) [1 + 1/2 cos^2 + (1·3)/(2·4) cos^4 + ... up to cos^(df-2)]
    for k in range(2, df - 1, 2):
        term *= c2 * (k - 1) / k
        total += term
    return min(1.0, s * total)


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| <= t) = ``confidence`` (the two-sided critical value, 12.706 for 0.95 and df 1)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = 0.0, 1.0
    while t_cdf_two_sided(hi, df) < confidence:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_cdf_two_sided(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def paired_t_interval(differences: Sequence[float], confidence: float = 0.95) -> TInterval:
    """mean ± t(n-1) · sd / √n of per-seed paired differences; no interval with one seed."""
    d = [float(x) for x in differences]
    if not d:
        raise ValueError("no differences")
    mean = statistics.fmean(d)
    if len(d) < 2:
        return TInterval(mean, None, len(d), None)
    sd = statistics.stdev(d)
    half = t_quantile(confidence, len(d) - 1) * sd / math.sqrt(len(d))
    return TInterval(mean, sd, len(d), Interval(mean - half, mean + half))
