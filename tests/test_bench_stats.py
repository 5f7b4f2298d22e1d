"""Benchmark statistics, the interference figure and memory readings: pure functions, hand-checked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fopro_edge.bench import cpuload, memory
from fopro_edge.bench.stats import (
    cv,
    mean,
    percentile,
    speedup,
    std,
    summarize,
    throughput,
)


@pytest.mark.parametrize("q", [0, 1, 10, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q):
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 101, 1000):
        v = rng.exponential(2.0, n).tolist()
        assert percentile(v, q) == pytest.approx(float(np.percentile(v, q)), rel=1e-12, abs=1e-12)


def test_percentile_hand_values_and_errors():
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([10], 99) == 10
    assert percentile([1, 2], 90) == pytest.approx(1.9)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_mean_std_cv_throughput_speedup():
    v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    assert mean(v) == 5.0
    assert std(v) == pytest.approx(float(np.std(v, ddof=1)))
    assert cv(v) == pytest.approx(std(v) / 5.0)
    assert std([3.0]) == 0.0 and cv([0.0, 0.0]) == 0.0
    assert throughput(100, 2.0) == 50.0 and throughput(5, 0.0) == 0.0
    assert speedup(16.0, 2.0) == 8.0
    assert speedup(None, 2.0) is None and speedup(16.0, None) is None and speedup(16.0, 0.0) is None


def test_summarize_converts_ns_to_ms_and_counts_images():
    ns = [1_000_000, 2_000_000, 3_000_000, 4_000_000]  # 1..4 ms
    s = summarize(ns, batch_size=8)
    assert s.iterations == 4 and s.batch_size == 8
    assert s.min_ms == 1.0 and s.max_ms == 4.0 and s.mean_ms == 2.5 and s.p50_ms == 2.5
    assert s.p90_ms == pytest.approx(3.7) and s.p99_ms == pytest.approx(3.97)
    assert s.total_s == pytest.approx(0.010)
    assert s.throughput_ips == pytest.approx(32 / 0.010)  # 4 calls x 8 images in 10 ms
    assert set(s.to_dict()) >= {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "cv", "throughput_ips"}
    with pytest.raises(ValueError):
        summarize([], 1)
    with pytest.raises(ValueError):
        summarize([1], 0)


PROC_STAT = """cpu  1000 10 200 5000 30 5 15 40 0 0
cpu0 500 5 100 2500 15 2 7 20 0 0
cpu1 500 5 100 2500 15 3 8 20 0 0
intr 12345
ctxt 999
"""


def test_parse_proc_stat():
    busy, steal, cpus = cpuload.parse_proc_stat(PROC_STAT, clock_ticks=100)
    assert busy == pytest.approx((1000 + 10 + 200 + 5 + 15) / 100)  # idle and iowait are not busy
    assert steal == pytest.approx(0.4)
    assert cpus == 2


def test_interference_subtracts_own_cpu_time():
    a = cpuload.CpuTimes(busy_s=100.0, steal_s=1.0, cpus=2, own_s=10.0, wall_ns=0)
    b = cpuload.CpuTimes(busy_s=104.0, steal_s=1.2, cpus=2, own_s=13.5, wall_ns=2_000_000_000)
    i = cpuload.between(a, b)
    assert i.wall_s == 2.0 and i.cpus == 2
    assert i.other_cpu_s == pytest.approx(0.5)  # 4 s busy, 3.5 s were ours
    assert i.other_cpu_share == pytest.approx(0.5 / 4.0)
    assert i.steal_share == pytest.approx(0.2 / 4.0)
    # our own time can exceed the jiffy-rounded machine total: never negative
    c = cpuload.CpuTimes(busy_s=103.0, steal_s=1.0, cpus=2, own_s=13.5, wall_ns=1_000_000_000)
    assert cpuload.between(a, c).other_cpu_share == 0.0
    assert cpuload.between(None, b) is None and cpuload.between(b, a) is None


def test_live_readings_are_sane():
    s = cpuload.sample()
    if s is None:
        pytest.skip("no /proc/stat")
    assert s.cpus >= 1 and s.busy_s > 0
    x = sum(i * i for i in range(200_000))
    i = cpuload.between(s, cpuload.sample())
    assert x > 0 and i is not None and 0.0 <= i.other_cpu_share <= 1.0
    peak, cur = memory.peak_rss_bytes(), memory.current_rss_bytes()
    assert peak > 10 * 2**20 and (cur is None or peak >= cur)
    assert not memory.GpuMemory().active or memory.GpuMemory().result() is not None
    assert math.isfinite(i.wall_s)
