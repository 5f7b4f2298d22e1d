"""Measure one target at one batch size and thread count, in this process."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from fopro_edge.bench import cpuload, memory
from fopro_edge.bench.results import BenchConfig, Measurement
from fopro_edge.bench.stats import summarize
from fopro_edge.bench.targets import Target, open_runner
from fopro_edge.bench.timing import make_inputs, time_call, time_runner
from fopro_edge.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)


def measure_one(target: Target, batch_size: int, threads: int, config: BenchConfig, *, isolated: bool = False) -> Measurement:
    """Load ``target``, time its first inference, warm up, time the loop; never raises for a
    runtime problem (the measurement then has status ``skipped`` or ``error`` and a message)."""

    def failed(status: str, message: str, **kw) -> Measurement:
        return Measurement(target, batch_size, threads, status, message, isolated=isolated, **kw)

    peak_reset = memory.reset_peak_rss() if not isolated else True
    baseline_rss = memory.current_rss_bytes()
    gpu = memory.GpuMemory()
    t0 = time.perf_counter_ns()
    try:
        runner, size = open_runner(target, threads)
    except MissingDependencyError as e:
        return failed("skipped", str(e))
    except ConfigError as e:
        return failed("error", str(e))
    except Exception as e:
        log.debug("loading %s failed", target.name, exc_info=True)
        return failed("error", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    if target.size_bytes is None and hasattr(runner, "model"):
        target = replace(target, size_bytes=_module_bytes(runner.model))
    gpu = gpu if gpu.active else memory.GpuMemory()  # torch may have been imported by the load
    size = config.image_size or target.image_size or size
    with runner:
        info = dict(runner.info)
        if not peak_reset:
            info["peak_rss_scope"] = "process (could not reset the peak)"
        if size is None:
            return failed("error", "the model's input size is dynamic: pass --image-size", load_ms=load_ms, runtime_info=info)
        if runner.batch_size is not None and runner.batch_size != batch_size:
            return failed("skipped", f"the artifact has a fixed batch of {runner.batch_size}", image_size=size,
                          load_ms=load_ms, runtime_info=info)
        inputs = make_inputs(batch_size, size, count=config.input_count, seed=config.seed)
        try:
            _, first_ns = time_call(lambda: runner.infer(inputs[0]))
            gpu.poll()
            for i in range(config.warmup):
                runner.infer(inputs[(i + 1) % len(inputs)])
            before = cpuload.sample()
            loop = time_runner(runner, inputs, warmup=0, iters=config.iters, seconds=config.seconds,
                               runtime_latency=_runtime_latency(runner))
            after = cpuload.sample()
        except Exception as e:
            log.debug("running %s failed", target.name, exc_info=True)
            return failed("error", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                          image_size=size, load_ms=load_ms, runtime_info=info)
    return Measurement(
        target=target,
        batch_size=batch_size,
        threads=threads,
        status="ok",
        image_size=size,
        latency=summarize(loop.durations_ns, batch_size),
        gpu_latency=summarize([int(v * 1e6) for v in loop.gpu_ms], batch_size) if loop.gpu_ms else None,
        runtime_latency=summarize([int(v * 1e6) for v in loop.runtime_ms], batch_size) if loop.runtime_ms else None,
        load_ms=load_ms,
        first_inference_ms=first_ns / 1e6,
        baseline_rss_bytes=baseline_rss,
        peak_rss_bytes=memory.peak_rss_bytes(),
        gpu_memory=gpu.result(),
        runtime_info=info,
        interference=cpuload.between(before, after),
        isolated=isolated,
    )


def _module_bytes(model: Any) -> int | None:
    """Bytes of a PyTorch module's parameters and buffers (its fp32 weights file, roughly)."""
    try:
        return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
    except Exception:  # noqa: BLE001 - a compiled or exotic module
        return None


def _runtime_latency(runner: Any):
    """OpenVINO's own latency of the last call (``InferRequest.latency``, ms), if the runner has one."""
    request = getattr(runner, "request", None)
    if request is None or not hasattr(request, "latency"):
        return None
    return lambda: request.latency
