"""Latency statistics: pure functions over per-call durations (nanoseconds in, milliseconds out)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

PERCENTILES = (50.0, 90.0, 99.0)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between the two nearest ranks
    (numpy's default ``method="linear"``). Raises ``ValueError`` on an empty sequence."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must lie in [0, 100], got {q}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of an empty sequence")
    return math.fsum(values) / len(values)


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation, std / mean (0 when the mean is 0)."""
    m = mean(values)
    return std(values) / m if m else 0.0


def throughput(total_items: int, total_seconds: float) -> float:
    """Items per second; 0 when no time elapsed."""
    return total_items / total_seconds if total_seconds > 0 else 0.0


def speedup(baseline_ms: float | None, value_ms: float | None) -> float | None:
    """How many times faster ``value`` is than ``baseline`` (``None`` if either is missing or 0)."""
    if not baseline_ms or not value_ms:
        return None
    return baseline_ms / value_ms


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one timed loop: milliseconds per call, throughput in images per second."""

    iterations: int
    batch_size: int
    mean_ms: float
    std_ms: float
    cv: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    total_s: float
    throughput_ips: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(durations_ns: Sequence[int], batch_size: int) -> LatencyStats:
    """Statistics of per-call durations (ns) of a loop that ran ``batch_size`` images per call.

    Throughput is ``images / sum of call durations``: sequential calls, one in flight at a time
    (latency mode), not a runtime's peak multi-stream throughput.
    """
    if not durations_ns:
        raise ValueError("no timed iterations")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ms = [d / 1e6 for d in durations_ns]
    total_s = math.fsum(durations_ns) / 1e9
    p50, p90, p99 = (percentile(ms, q) for q in PERCENTILES)
    return LatencyStats(
        iterations=len(ms),
        batch_size=batch_size,
        mean_ms=mean(ms),
        std_ms=std(ms),
        cv=cv(ms),
        min_ms=min(ms),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        max_ms=max(ms),
        total_s=total_s,
        throughput_ips=throughput(len(ms) * batch_size, total_s),
    )
