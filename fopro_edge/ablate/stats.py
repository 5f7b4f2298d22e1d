"""Seed statistics of an ablation: mean ± sd, the paired t-interval of a difference (Student's t
from scipy) and the verdict it gives."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

NO_DIFFERENCE = "no detectable difference"
ONE_SEED = "one seed: no seed-level interval"


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def excludes_zero(self) -> bool:
        return not self.contains(0.0)


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


def paired_t_interval(differences: Sequence[float], confidence: float = 0.95) -> TInterval:
    """mean ± t(n-1) · sd / √n of per-seed paired differences (t: the two-sided ``confidence``
    quantile of Student's t); no interval with one seed."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = [float(x) for x in differences]
    if not d:
        raise ValueError("no differences")
    mean = statistics.fmean(d)
    if len(d) < 2:
        return TInterval(mean, None, len(d), None)
    sd = statistics.stdev(d)
    half = float(student_t.ppf(0.5 + confidence / 2.0, len(d) - 1)) * sd / math.sqrt(len(d))
    return TInterval(mean, sd, len(d), Interval(mean - half, mean + half))


def resolved(seed_interval: Interval | None) -> bool:
    """A difference is resolved when its paired t-interval over seeds excludes 0 (never on an
    interval over test images alone, which ignores seed-to-seed variation)."""
    return seed_interval is not None and seed_interval.excludes_zero


def verdict(mean: float, seed_interval: Interval | None, seed_bootstrap: Interval | None, seeds: int) -> str:
    """The difference in words: its direction when :func:`resolved`, else why it is not."""
    if seeds < 2:
        return ONE_SEED
    if not resolved(seed_interval):
        return NO_DIFFERENCE
    text = "higher" if mean > 0 else "lower"
    return text if seed_bootstrap is None or seed_bootstrap.excludes_zero else f"{text} (the two-level bootstrap includes 0)"
