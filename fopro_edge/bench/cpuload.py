"""How much CPU *other* processes used while a loop was being timed (the interference figure).

``/proc/stat`` gives the machine's busy CPU time; this process's own CPU time (all its threads)
is subtracted, and the rest is expressed as a share of the CPU time the machine had to give
(wall time x CPUs). Steal time (a hypervisor giving the vCPUs to someone else) is reported on its
own. Outside Linux the figures are ``None``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

_PROC_STAT = "/proc/stat"


@dataclass(frozen=True)
class CpuTimes:
    """Machine-wide busy and steal seconds, the CPU count, this process's CPU seconds, and a wall clock."""

    busy_s: float
    steal_s: float
    cpus: int
    own_s: float
    wall_ns: int


@dataclass(frozen=True)
class Interference:
    """Other processes' CPU use during an interval, as a share of the machine's CPU time."""

    wall_s: float
    cpus: int
    other_cpu_s: float
    other_cpu_share: float  # 0..1 of wall_s * cpus
    steal_share: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_proc_stat(text: str, clock_ticks: int) -> tuple[float, float, int]:
    """``(busy seconds, steal seconds, number of CPUs)`` from the text of ``/proc/stat``.

    Busy = user + nice + system + irq + softirq (guest time is already inside user/nice);
    idle, iowait and steal are not busy.
    """
    busy = steal = 0.0
    cpus = 0
    for line in text.splitlines():
        if line.startswith("cpu "):
            f = [int(v) for v in line.split()[1:]]
            f += [0] * (8 - len(f))
            user, nice, system, _idle, _iowait, irq, softirq, st = f[:8]
            busy = (user + nice + system + irq + softirq) / clock_ticks
            steal = st / clock_ticks
        elif line.startswith("cpu") and line[3:4].isdigit():
            cpus += 1
    return busy, steal, cpus


def sample() -> CpuTimes | None:
    """A reading now, or ``None`` where ``/proc/stat`` is not readable."""
    try:
        with open(_PROC_STAT, encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    busy, steal, cpus = parse_proc_stat(text, os.sysconf("SC_CLK_TCK"))
    return CpuTimes(busy, steal, cpus or (os.cpu_count() or 1), time.process_time(), time.perf_counter_ns())


def between(start: CpuTimes | None, end: CpuTimes | None) -> Interference | None:
    """Interference between two readings of this process."""
    if start is None or end is None:
        return None
    wall = (end.wall_ns - start.wall_ns) / 1e9
    if wall <= 0:
        return None
    capacity = wall * end.cpus
    other = max(0.0, (end.busy_s - start.busy_s) - (end.own_s - start.own_s))
    steal = max(0.0, end.steal_s - start.steal_s)
    return Interference(
        wall_s=wall, cpus=end.cpus, other_cpu_s=other,
        other_cpu_share=min(1.0, other / capacity), steal_share=min(1.0, steal / capacity),
    )


def wait_for_quiet(threshold: float = 0.05, *, window_s: float = 5.0, max_wait_s: float = 1200.0,
                   sleep_s: float = 30.0) -> Interference | None:
    """Block until other processes use at most ``threshold`` of the CPU over a ``window_s``
    window (this process idle meanwhile), or ``max_wait_s`` passed; returns the last window's
    reading (``None`` where ``/proc/stat`` is unreadable)."""
    import logging

    log = logging.getLogger(__name__)
    deadline = time.monotonic() + max_wait_s
    while True:
        start = sample()
        time.sleep(window_s)
        reading = between(start, sample())
        if reading is None or reading.other_cpu_share <= threshold:
            return reading
        if time.monotonic() >= deadline:
            log.warning("the machine is still busy (%.0f%% of the CPU used by other processes); measuring anyway",
                        100 * reading.other_cpu_share)
            return reading
        log.info("waiting for a quiet machine: other processes use %.0f%% of the CPU", 100 * reading.other_cpu_share)
        time.sleep(sleep_s)
