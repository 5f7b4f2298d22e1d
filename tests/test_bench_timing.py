"""The timing loop (fake and tiny real runners), one measurement in-process and in a subprocess,
and the re-measure-on-interference rule. No timing thresholds: only counts and consistency."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fopro_edge.bench import BenchConfig, Target, measure_targets
from fopro_edge.bench import measure as measure_mod
from fopro_edge.bench.cpuload import Interference
from fopro_edge.bench.measure import measure_one
from fopro_edge.bench.timing import make_inputs, time_runner
from fopro_edge.bench.worker import measure_in_subprocess

SPEC = {"source": "timm", "model": "test_resnet", "num_classes": 3, "image_size": 32, "seed": 0}
FAST = {"warmup": 2, "iters": 5, "retries": 0, "retry_wait_s": 0.0, "max_interference": 1.0, "input_count": 2}


class FakeRunner:
    name, precision, batch_size, info = "fake", "fp32", None, {}

    def __init__(self) -> None:
        self.seen: list[int] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(int(batch[0, 0, 0, 0] * 1e6))
        return np.zeros((len(batch), 3), np.float32)


def test_make_inputs_are_fixed_and_in_range():
    a, b = make_inputs(2, 8, count=3, seed=1), make_inputs(2, 8, count=3, seed=1)
    assert len(a) == 3 and a[0].shape == (2, 3, 8, 8) and a[0].dtype == np.float32
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert 0.0 <= min(x.min() for x in a) and max(x.max() for x in a) <= 1.0


def test_loop_counts_warmup_and_iterations_and_cycles_inputs():
    r, inputs = FakeRunner(), make_inputs(1, 4, count=3)
    t = time_runner(r, inputs, warmup=4, iters=7)
    assert len(t.durations_ns) == 7 and t.warmup == 4 and len(r.seen) == 11
    keys = [int(x[0, 0, 0, 0] * 1e6) for x in inputs]
    assert r.seen[4:] == [keys[i % 3] for i in range(7)]
    assert all(d > 0 for d in t.durations_ns) and t.gpu_ms is None


def test_seconds_mode_runs_at_least_min_iters():
    t = time_runner(FakeRunner(), make_inputs(1, 4), warmup=0, seconds=1e-6, min_iters=6)
    assert len(t.durations_ns) == 6


@pytest.mark.parametrize("kw", [{}, {"iters": 3, "seconds": 1.0}, {"iters": 0}, {"seconds": -1.0}])
def test_loop_argument_errors(kw):
    with pytest.raises(ValueError):
        time_runner(FakeRunner(), make_inputs(1, 4), **kw)


def test_sync_is_called_after_every_call():
    calls = []
    time_runner(FakeRunner(), make_inputs(1, 4), warmup=2, iters=3, sync=lambda: calls.append(1))
    assert len(calls) == 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny random-init student exported to ONNX (dynamic and fixed batch) and OpenVINO IR."""
    import torch

    from fopro_edge.bench.models import random_init_student

    d = tmp_path_factory.mktemp("tiny")
    model = random_init_student("test_resnet", 3)
    x = torch.rand(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(d / "dyn.onnx"), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
        torch.onnx.export(model, (x,), str(d / "fixed.onnx"), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"])
    import openvino as ov

    ov.save_model(ov.convert_model(str(d / "dyn.onnx")), str(d / "model.xml"))
    return {"onnx": d / "dyn.onnx", "fixed": d / "fixed.onnx", "xml": d / "model.xml"}


@pytest.mark.openvino  # the `tiny` fixture writes an OpenVINO IR
def test_measure_one_on_every_cpu_backend(tiny):
    cfg = BenchConfig(batch_sizes=(2,), threads=(1,), isolate=False, **FAST)
    targets = [
        Target("student", "pytorch", role="student", model=SPEC, group="g"),
        Target("ort", "onnxruntime", path=str(tiny["onnx"]), group="g"),
        Target("ov f32", "openvino", path=str(tiny["xml"]), group="g", options={"inference_precision": "f32"}),
        Target("ov auto", "openvino", path=str(tiny["xml"]), group="g", options={"inference_precision": "auto"}),
    ]
    for t in targets:
        m = measure_one(t, 2, 1, cfg)
        assert m.status == "ok", m.message
        assert m.latency.iterations == 5 and m.latency.batch_size == 2 and m.image_size == 32
        assert m.latency.min_ms <= m.latency.p50_ms <= m.latency.p99_ms <= m.latency.max_ms
        assert m.load_ms > 0 and m.first_inference_ms > 0 and m.peak_rss_bytes > 0
        assert m.interference is None or 0.0 <= m.interference.other_cpu_share <= 1.0
    student = measure_one(targets[0], 2, 1, cfg)
    assert student.target.size_bytes and student.target.size_bytes > 100_000  # filled in from the module
    ov_f32, ov_auto = measure_one(targets[2], 2, 1, cfg), measure_one(targets[3], 2, 1, cfg)
    assert ov_f32.runtime_info["inference_precision"] == "f32" and ov_f32.precision_used == "fp32"
    # OpenVINO's own per-call latency is inside each timed call, so never above it
    assert ov_f32.runtime_latency.iterations == 5 and ov_f32.runtime_latency.p50_ms <= ov_f32.latency.p50_ms
    assert student.runtime_latency is None
    assert ov_auto.runtime_info["inference_precision_requested"] == "auto"
    assert ov_auto.runtime_info["inference_precision"] in ("f32", "bf16", "f16")


@pytest.mark.openvino  # the `tiny` fixture writes an OpenVINO IR
def test_fixed_batch_missing_runtime_and_broken_file_are_results_not_crashes(tiny, tmp_path):
    cfg = BenchConfig(isolate=False, **FAST)
    m = measure_one(Target("fixed", "onnxruntime", path=str(tiny["fixed"])), 4, 1, cfg)
    assert m.status == "skipped" and "fixed batch of 1" in m.message
    m = measure_one(Target("engine", "tensorrt", path=str(tiny["onnx"])), 1, 1, cfg)
    assert m.status == "skipped" and "tensorrt" in m.message.lower()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    m = measure_one(Target("bad", "onnxruntime", path=str(bad)), 1, 1, cfg)
    assert m.status == "error" and m.message


@pytest.mark.openvino  # the `tiny` fixture writes an OpenVINO IR
def test_subprocess_measurement_has_its_own_peak_memory(tiny):
    cfg = BenchConfig(**FAST)
    m = measure_in_subprocess(Target("ort", "onnxruntime", path=str(tiny["onnx"])), 1, 1, cfg)
    assert m.status == "ok", m.message
    assert m.isolated and m.latency.iterations == 5
    # a fresh process that imported onnxruntime but not torch: far below this test process's peak
    assert 0 < m.baseline_rss_bytes <= m.peak_rss_bytes < 600 * 2**20


def test_subprocess_failure_is_reported(tmp_path):
    m = measure_in_subprocess(Target("x", "pytorch", model={"source": "nope"}), 1, 1, BenchConfig(**FAST))
    assert m.status == "error" and "unknown source" in m.message


def test_interference_triggers_a_new_measurement(monkeypatch):
    shares = iter([0.5, 0.3, 0.02])

    def fake(target, batch, threads, config, *, isolated=False):
        s = next(shares)
        from fopro_edge.bench.stats import summarize

        return measure_mod.Measurement(target, batch, threads, "ok", latency=summarize([int(1e6 * (1 + s))] * 3, batch),
                                       interference=Interference(1.0, 2, 2 * s, s, 0.0), isolated=False)

    monkeypatch.setattr(measure_mod, "measure_one", fake)
    cfg = BenchConfig(isolate=False, warmup=0, iters=3, retries=2, retry_wait_s=0.0, max_interference=0.05, threads=(1,))
    report = measure_targets([Target("t", "onnxruntime", path="x.onnx")], cfg, env={})
    (m,) = report.measurements
    assert m.attempts == 3 and m.interference.other_cpu_share == 0.02 and len(m.attempt_p50_ms) == 3
    shares = iter([0.5, 0.4])
    cfg1 = replace(cfg, retries=1)
    (m,) = measure_targets([Target("t", "onnxruntime", path="x.onnx")], cfg1, env={}).measurements
    assert m.attempts == 2 and m.interference.other_cpu_share == 0.4  # the least disturbed attempt is kept
    assert report.max_interference() == 0.02
