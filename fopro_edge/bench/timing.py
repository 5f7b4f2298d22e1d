"""The timing loop: warm-up, then timed calls of ``runner.infer`` on fixed pre-generated inputs.

Every call is timed on its own with ``time.perf_counter_ns`` around ``infer``, which returns host
memory (the runners synchronise CUDA before returning), so a duration is the latency a caller
sees. Runners that expose a CUDA ``stream`` (TensorRT) are also timed with CUDA events on that
stream: the GPU time of the engine alone, without host copies.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_ITERS = 1_000_000


def make_inputs(batch_size: int, image_size: int, *, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """``count`` fixed float32 RGB batches in [0, 1] (NCHW), cycled through by the loop."""
    rng = np.random.default_rng(seed)
    return [rng.random((batch_size, 3, image_size, image_size), dtype=np.float32) for _ in range(max(1, count))]


@dataclass(frozen=True)
class LoopTiming:
    """Raw durations of one timed loop (after ``warmup`` untimed calls)."""

    durations_ns: tuple[int, ...]
    warmup: int
    gpu_ms: tuple[float, ...] | None = None
    runtime_ms: tuple[float, ...] | None = None  # the runtime's own per-call figure (OpenVINO)


class _CudaEvents:
    """CUDA-event timing on a runner's stream (TensorRT, PyTorch on CUDA); inactive without torch + CUDA."""

    def __init__(self, runner: Any) -> None:
        torch = sys.modules.get("torch")
        stream = getattr(runner, "stream", None)
        self.active = bool(torch is not None and stream is not None and torch.cuda.is_available())
        self._torch, self._stream, self._pairs = torch, stream, []

    def record(self, fn: Callable[[], Any]) -> Any:
        if not self.active:
            return fn()
        torch = self._torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self._stream)
        out = fn()
        end.record(self._stream)
        self._pairs.append((start, end))
        return out

    def durations_ms(self) -> tuple[float, ...] | None:
        if not self.active:
            return None
        self._torch.cuda.synchronize()
        return tuple(float(s.elapsed_time(e)) for s, e in self._pairs)


def time_call(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``(result, nanoseconds)`` of one call."""
    t0 = time.perf_counter_ns()
    out = fn()
    return out, time.perf_counter_ns() - t0


def time_runner(
    runner: Any,
    inputs: Sequence[np.ndarray],
    *,
    warmup: int = 10,
    iters: int | None = None,
    seconds: float | None = None,
    min_iters: int = 10,
    sync: Callable[[], None] | None = None,
    cuda_events: bool = True,
    runtime_latency: Callable[[], float] | None = None,
) -> LoopTiming:
    """Warm up with ``warmup`` calls, then time ``iters`` calls, or calls until ``seconds`` of
    timed work have passed (at least ``min_iters``). Inputs are cycled in order.

    ``runtime_latency``: read after each call (outside the timed region), the runtime's own
    latency of that call in ms (e.g. OpenVINO's ``InferRequest.latency``, what ``benchmark_app``
    reports), to show how much of the wall-clock time is the Python binding."""
    if (iters is None) == (seconds is None):
        raise ValueError("give exactly one of iters or seconds")
    if iters is not None and iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if seconds is not None and seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if not inputs:
        raise ValueError("no inputs")
    n_in = len(inputs)

    def call(i: int) -> Any:
        out = runner.infer(inputs[i % n_in])
        if sync is not None:
            sync()
        return out

    for i in range(warmup):
        call(i)
    events = _CudaEvents(runner) if cuda_events else None
    durations: list[int] = []
    runtime: list[float] = []
    budget_ns = None if seconds is None else int(seconds * 1e9)
    limit = iters if iters is not None else MAX_ITERS
    spent = 0
    perf = time.perf_counter_ns
    for i in range(limit):
        x = inputs[i % n_in]
        t0 = perf()
        if events is not None and events.active:
            events.record(lambda x=x: runner.infer(x))
        else:
            runner.infer(x)
        if sync is not None:
            sync()
        dt = perf() - t0
        durations.append(dt)
        if runtime_latency is not None:
            runtime.append(float(runtime_latency()))
        spent += dt
        if budget_ns is not None and spent >= budget_ns and len(durations) >= min_iters:
            break
    gpu = events.durations_ms() if events is not None else None
    return LoopTiming(tuple(durations), warmup, gpu, tuple(runtime) if runtime else None)
