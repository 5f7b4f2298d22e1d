"""Typed benchmark results: settings, one measurement per (target, batch, threads), the report."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fopro_edge.bench.cpuload import Interference
from fopro_edge.bench.stats import LatencyStats, speedup
from fopro_edge.bench.targets import Target

FORMAT = "fopro-edge-bench/1"


def default_threads() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class BenchConfig:
    """How to measure. Exactly one of ``iters`` / ``seconds`` is set."""

    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = ()  # () = every usable core, once
    warmup: int = 20
    iters: int | None = 200
    seconds: float | None = None
    image_size: int | None = None  # override for artifacts whose graph leaves it open
    isolate: bool = True  # every measurement in a fresh subprocess
    max_interference: float = 0.05  # share of the machine's CPU used by other processes
    retries: int = 2  # extra attempts when interference is above max_interference
    retry_wait_s: float = 10.0
    timeout_s: float = 900.0  # per measurement subprocess
    input_count: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.iters is None) == (self.seconds is None):
            raise ValueError("BenchConfig: set exactly one of iters and seconds")

    @property
    def thread_counts(self) -> tuple[int, ...]:
        return self.threads or (default_threads(),)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["threads"] = list(self.thread_counts)
        d["batch_sizes"] = list(self.batch_sizes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchConfig:
        d = dict(d)
        d["batch_sizes"] = tuple(d.get("batch_sizes", (1,)))
        d["threads"] = tuple(d.get("threads", ()))
        return cls(**d)


@dataclass(frozen=True)
class Measurement:
    """One target at one batch size and thread count. ``status``: ok | skipped | error."""

    target: Target
    batch_size: int
    threads: int
    status: str
    message: str = ""
    image_size: int | None = None
    latency: LatencyStats | None = None
    gpu_latency: LatencyStats | None = None  # CUDA events on the runner's stream (TensorRT, PyTorch on CUDA)
    runtime_latency: LatencyStats | None = None  # the runtime's own figure per call (OpenVINO), no Python binding
    load_ms: float | None = None  # runner construction: read + compile
    first_inference_ms: float | None = None
    baseline_rss_bytes: int | None = None  # before the model was loaded
    peak_rss_bytes: int | None = None
    gpu_memory: dict[str, int] | None = None
    runtime_info: dict[str, Any] = field(default_factory=dict)
    interference: Interference | None = None
    attempts: int = 1
    attempt_p50_ms: tuple[float, ...] = ()
    isolated: bool = True

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.latency is not None

    @property
    def key(self) -> tuple[int, int]:
        return self.batch_size, self.threads

    @property
    def precision_used(self) -> str:
        """What the runtime computed in: OpenVINO's real inference precision, else the artifact's."""
        used = self.runtime_info.get("inference_precision")
        if used and used != "unknown" and self.target.backend == "openvino":
            used = {"f32": "fp32", "f16": "fp16"}.get(used, used)
            return f"int8 (+{used})" if self.target.precision == "int8" else str(used)
        return self.target.precision

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.to_dict(),
            "batch_size": self.batch_size,
            "threads": self.threads,
            "status": self.status,
            "message": self.message,
            "image_size": self.image_size,
            "latency": self.latency.to_dict() if self.latency else None,
            "gpu_latency": self.gpu_latency.to_dict() if self.gpu_latency else None,
            "runtime_latency": self.runtime_latency.to_dict() if self.runtime_latency else None,
            "load_ms": self.load_ms,
            "first_inference_ms": self.first_inference_ms,
            "baseline_rss_bytes": self.baseline_rss_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "gpu_memory": self.gpu_memory,
            "runtime_info": self.runtime_info,
            "interference": self.interference.to_dict() if self.interference else None,
            "attempts": self.attempts,
            "attempt_p50_ms": list(self.attempt_p50_ms),
            "isolated": self.isolated,
            "precision_used": self.precision_used,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        return cls(
            target=Target.from_dict(d["target"]),
            batch_size=int(d["batch_size"]),
            threads=int(d["threads"]),
            status=d["status"],
            message=d.get("message", ""),
            image_size=d.get("image_size"),
            latency=LatencyStats(**d["latency"]) if d.get("latency") else None,
            gpu_latency=LatencyStats(**d["gpu_latency"]) if d.get("gpu_latency") else None,
            runtime_latency=LatencyStats(**d["runtime_latency"]) if d.get("runtime_latency") else None,
            load_ms=d.get("load_ms"),
            first_inference_ms=d.get("first_inference_ms"),
            baseline_rss_bytes=d.get("baseline_rss_bytes"),
            peak_rss_bytes=d.get("peak_rss_bytes"),
            gpu_memory=d.get("gpu_memory"),
            runtime_info=dict(d.get("runtime_info") or {}),
            interference=Interference(**d["interference"]) if d.get("interference") else None,
            attempts=int(d.get("attempts", 1)),
            attempt_p50_ms=tuple(d.get("attempt_p50_ms") or ()),
            isolated=bool(d.get("isolated", True)),
        )


@dataclass(frozen=True)
class BenchReport:
    """Every measurement of one ``bench`` call, with the machine's fingerprint."""

    measurements: tuple[Measurement, ...]
    config: BenchConfig
    env: dict[str, Any]
    created: str
    title: str = "Benchmark"

    def baseline(self, m: Measurement, role: str) -> Measurement | None:
        """The PyTorch eager ``role`` ("student" / "teacher") measured at ``m``'s batch size and
        threads; a student baseline must belong to the same group (the same student model)."""
        for b in self.measurements:
            if not (b.ok and b.key == m.key and b.target.role == role and b.target.is_eager_baseline):
                continue
            if role == "teacher" or b.target.group == m.target.group:
                return b
        return None

    def speedups(self, m: Measurement) -> dict[str, float | None]:
        """p50 speed-ups of ``m`` over the eager student and the eager teacher (``None`` if unknown)."""
        p50 = m.latency.p50_ms if m.ok else None
        out = {}
        for role in ("student", "teacher"):
            b = self.baseline(m, role)
            out[f"vs_{role}"] = speedup(b.latency.p50_ms if b else None, p50)
        return out

    def best(self, *, group: str | None = None, precision: str | None = None, batch_size: int = 1,
             threads: int | None = None) -> Measurement | None:
        """The fastest (p50) artifact measurement matching the filters."""
        cands = [
            m for m in self.measurements
            if m.ok and m.target.role == "artifact" and m.batch_size == batch_size
            and (threads is None or m.threads == threads)
            and (group is None or m.target.group == group)
            and (precision is None or m.target.precision == precision)
        ]
        return min(cands, key=lambda m: m.latency.p50_ms) if cands else None  # type: ignore[union-attr]

    def max_interference(self) -> float | None:
        vals = [m.interference.other_cpu_share for m in self.measurements if m.ok and m.interference]
        return max(vals) if vals else None

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for m in self.measurements:
            d = m.to_dict()
            d["speedup"] = self.speedups(m)
            rows.append(d)
        return {
            "format": FORMAT,
            "title": self.title,
            "created": self.created,
            "config": self.config.to_dict(),
            "env": self.env,
            "max_interference": self.max_interference(),
            "measurements": rows,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchReport:
        cfg = dict(d["config"])
        return cls(
            measurements=tuple(Measurement.from_dict(m) for m in d["measurements"]),
            config=BenchConfig.from_dict(cfg),
            env=dict(d.get("env") or {}),
            created=d.get("created", ""),
            title=d.get("title", "Benchmark"),
        )


def merge_reports(reports: Sequence[BenchReport], title: str) -> BenchReport:
    """One report holding the measurements of several (same config and machine assumed)."""
    if not reports:
        raise ValueError("nothing to merge")
    ms = tuple(m for r in reports for m in r.measurements)
    return BenchReport(ms, reports[0].config, reports[0].env, reports[-1].created, title)
