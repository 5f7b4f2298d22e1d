"""Benchmark results and report writers (synthetic measurements), and artifact discovery in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fopro_edge.bench import BenchConfig, BenchReport, Measurement, Target
from fopro_edge.bench.cpuload import Interference
from fopro_edge.bench.report import render_markdown, summary_lines, write_bench_report
from fopro_edge.bench.stats import summarize
from fopro_edge.bench.targets import (
    read_export_manifests,
    run_targets,
    scan_export_dir,
    targets_for_artifact,
)
from fopro_edge.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _m(target: Target, p50_ms: float, batch: int = 1, threads: int = 2, **kw) -> Measurement:
    lat = summarize([int(p50_ms * 1e6)] * 9 + [int(2 * p50_ms * 1e6)], batch)
    return Measurement(target, batch, threads, "ok", image_size=224, latency=lat, load_ms=50.0, first_inference_ms=5.0,
                       peak_rss_bytes=200 * 2**20, interference=Interference(1.0, 2, 0.02, 0.01, 0.0), **kw)


STUDENT = Target("mnv3 (student)", "pytorch", role="student", group="mnv3", size_bytes=22 * 2**20,
                 model={"source": "timm", "model": "x"})
TEACHER = Target("r50 (teacher)", "pytorch", role="teacher", model={"source": "timm", "model": "y"})
OV_INT8 = Target("openvino/ir-int8", "openvino", "int8", path="m.xml", group="mnv3", size_bytes=6 * 2**20, gate="PASSED",
                 options={"inference_precision": "f32"})
ORT_INT8 = Target("onnxruntime/int8", "onnxruntime", "int8", path="m.onnx", group="mnv3", gate="FAILED")


@pytest.fixture
def report() -> BenchReport:
    ms = (
        _m(STUDENT, 16.0), _m(TEACHER, 64.0),
        _m(OV_INT8, 2.0, runtime_info={"inference_precision": "f32", "inference_precision_requested": "f32"}),
        _m(ORT_INT8, 4.0), _m(STUDENT, 100.0, batch=8), _m(OV_INT8, 10.0, batch=8),
        Measurement(Target("engine", "tensorrt", "fp16", path="m.engine"), 1, 2, "skipped", "needs an NVIDIA GPU"),
    )
    env = {"cpu": {"model": "Test CPU", "usable_cores": 2, "logical_cores": 2, "isa": ["avx512_vnni"]},
           "openvino": {"cpu_default_inference_precision": "bf16"}, "packages": {}}
    return BenchReport(ms, BenchConfig(batch_sizes=(1, 8), threads=(2,)), env, "2026-01-01T00:00:00", "Test bench")


def test_speedups_against_same_config_baselines(report):
    ov1 = report.measurements[2]
    assert report.speedups(ov1) == {"vs_student": pytest.approx(8.0), "vs_teacher": pytest.approx(32.0)}
    ov8 = report.measurements[5]
    assert report.speedups(ov8) == {"vs_student": pytest.approx(10.0), "vs_teacher": None}  # no teacher at batch 8
    assert report.speedups(report.measurements[6]) == {"vs_student": None, "vs_teacher": None}
    assert report.best(precision="int8").target.name == "openvino/ir-int8"
    assert report.best(batch_size=8).latency.p50_ms == pytest.approx(10.0)
    other_group = _m(Target("x", "onnxruntime", path="o.onnx", group="resnet18"), 1.0)
    assert BenchReport((report.measurements[0], other_group), report.config, {}, "").speedups(other_group)["vs_student"] is None


def test_json_round_trip(report):
    d = json.loads(json.dumps(report.to_dict()))
    assert d["format"] == "fopro-edge-bench/1" and d["max_interference"] == pytest.approx(0.01)
    assert d["measurements"][2]["speedup"]["vs_student"] == pytest.approx(8.0)
    assert d["measurements"][2]["precision_used"] == "int8 (+fp32)"
    back = BenchReport.from_dict(d)
    assert back.measurements == report.measurements and back.config == report.config


def test_markdown_has_the_tables_the_failures_and_the_fingerprint(report):
    md = render_markdown(report)
    assert "## Batch 1, 2 threads" in md and "## Batch 8, 2 threads" in md
    row = next(line for line in md.splitlines() if line.startswith("| openvino/ir-int8 | artifact"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "int8 (+fp32)" and cells[4] == "2.000" and cells[11] == "8.00x" and cells[12] == "32.0x"
    assert cells[13] == "PASSED"
    assert "| onnxruntime/int8 | artifact | onnxruntime | int8 | 4.000" in md and "| FAILED |" in md
    assert "## Not measured" in md and "engine (batch 1, 2 threads): skipped: needs an NVIDIA GPU" in md
    assert "Test CPU" in md and "avx512_vnni" in md and "CPU default inference precision: bf16" in md
    assert "![latency](latency.png)" in md
    lines = summary_lines(report)
    assert any("openvino/ir-int8" in ln and "8.00x vs student" in ln for ln in lines)


def test_cuda_event_column_only_when_a_measurement_has_one(report):
    assert "| GPU p50 (CUDA events) |" not in render_markdown(report)
    cuda = Target("mnv3 (student, cuda)", "pytorch", role="artifact", model={"source": "timm", "model": "x"})
    events = summarize([int(0.5e6)] * 10, 1)
    with_gpu = BenchReport((*report.measurements, _m(cuda, 0.8, gpu_latency=events)), report.config, report.env,
                           report.created, report.title)
    md = render_markdown(with_gpu)
    header = next(line for line in md.splitlines() if line.startswith("| model | backend |"))
    col = [c.strip() for c in header.strip("|").split("|")].index("GPU p50 (CUDA events)")
    row = next(line for line in md.splitlines() if line.startswith("| mnv3 (student, cuda) | pytorch |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[col] == "0.500"
    ov_row = next(line for line in md.splitlines() if line.startswith("| openvino/ir-int8 | openvino |"))
    assert [c.strip() for c in ov_row.strip("|").split("|")][col] == "–"


def test_write_bench_report_files(report, tmp_path):
    paths = write_bench_report(report, tmp_path / "b")
    assert {p.name for p in paths.values()} == {"bench.json", "bench.md", "latency.png"}
    assert paths["chart"].read_bytes()[:8] == PNG_MAGIC
    empty = BenchReport((report.measurements[-1],), report.config, {}, "", "nothing ran")
    paths = write_bench_report(empty, tmp_path / "e")
    assert "chart" not in paths and "![latency]" not in paths["markdown"].read_text()


# ----------------------------------------------------------------------------- discovery


def _touch(p: Path, text: str = "x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _manifest(root: Path, target: str, steps: list[tuple[str, str, str, str]], out_dir: str, profile=None) -> None:
    """An ``export.json`` as the export writes it; steps: (name, relative artifact path, precision, status)."""
    from fopro_edge.deploy.artifact import ModelArtifact
    from fopro_edge.deploy.pipeline import ExportResult, StepResult

    rows = []
    for name, rel, prec, status in steps:
        _touch(root / target / rel)
        meta = {"opset": 17, "dynamic_batch": True, "batch_size": 1} if name == "onnx" else {}
        art = ModelArtifact(Path(f"{out_dir}/{rel}"), target, prec, 1, f"{target}-{name}", (Path(f"{out_dir}/{rel}"),),
                            parent="ckpt", metadata=meta)
        rows.append(StepResult(name, name, status, Path(out_dir) / name, art))
    rows.append(StepResult("engine", "engine", "UNVERIFIED", Path(out_dir) / "engine"))
    result = ExportResult(target, "int8", Path(out_dir), Path("best.pt"), "ckpt", tuple(rows), profile or {})
    (root / target / "export.json").write_text(json.dumps(result.to_dict()))


def test_export_manifests_list_each_artifact_once(tmp_path):
    root = tmp_path / "export"
    # written on another machine / folder: paths are re-rooted at the manifest
    _manifest(root, "onnxruntime", [("onnx", "onnx/model.onnx", "fp32", "PASSED"), ("int8", "int8/model.onnx", "int8", "FAILED")],
              "/elsewhere/run/export/onnxruntime")
    _manifest(root, "openvino", [("onnx", "onnx/model.onnx", "fp32", "PASSED"), ("ir-int8", "ir-int8/model.xml", "int8", "PASSED")],
              "runs/x/export/openvino", profile={"inference_precision": "bf16"})
    _manifest(root, "tensorrt", [("onnx", "onnx/model.onnx", "fp32", "PASSED"), ("int8-qdq", "int8-qdq/model.onnx", "int8", "PASSED")],
              "/x/export/tensorrt")
    _touch(root / "tensorrt" / "engine" / "model.int8.engine")  # built later on the device by build_engine.sh
    found = read_export_manifests(root)
    assert [(f.label, f.precision, f.gate) for f in found] == [
        ("onnx", "fp32", "PASSED"), ("onnxruntime/int8", "int8", "FAILED"), ("openvino/ir-int8", "int8", "PASSED")]
    assert found[1].path == root / "onnxruntime" / "int8" / "model.onnx"
    assert found[2].options == {"inference_precision": "bf16"} and found[0].options == {}
    run = tmp_path
    names = [(t.name, t.backend, t.precision) for t in run_targets(run, student=False, teacher=False)]
    assert names == [("onnx", "onnxruntime", "fp32"), ("onnxruntime/int8", "onnxruntime", "int8"),
                     ("openvino/ir-int8", "openvino", "int8"), ("tensorrt/engine/model.int8", "tensorrt", "int8"),
                     ("onnx (in openvino) (bf16)", "openvino", "fp32")]  # OpenVINO INT8's own FP32 baseline


def test_scan_fallback_skips_intermediates_and_reads_failed_markers(tmp_path):
    root = tmp_path / "export"
    _touch(root / "a" / "int8" / "model.onnx")
    _touch(root / "a" / "int8" / "model.pre.onnx")
    _touch(root / "a" / "int8" / "FAILED")
    _touch(root / "b" / "ir" / "model.xml")
    _touch(root / "b" / "ir" / "check.json", json.dumps({"status": "PASSED"}))
    _touch(root / ".tmp" / "x.onnx")
    found = scan_export_dir(root)
    assert [(f.label, f.gate) for f in found] == [("a/int8/model", "FAILED"), ("b/ir/model", "PASSED")]


def test_targets_for_artifact_kinds_and_errors(tmp_path):
    xml = _touch(tmp_path / "m.xml", '<net><rt_info><fopro_edge><weights_precision value="int8" /></fopro_edge></rt_info></net>')
    _touch(tmp_path / "m.bin", "12345")
    ts = targets_for_artifact(xml, openvino_precisions=["f32", "bf16"])
    assert [(t.backend, t.precision, t.options["inference_precision"]) for t in ts] == [
        ("openvino", "int8", "f32"), ("openvino", "int8", "bf16")]
    assert ts[0].size_bytes == xml.stat().st_size + 5 and ts[0].name == "m (f32)"
    eng = _touch(tmp_path / "model.fp16.engine")
    assert targets_for_artifact(eng)[0].precision == "fp16"
    with pytest.raises(ConfigError, match="--artifact"):
        targets_for_artifact(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="unknown artifact type"):
        targets_for_artifact(_touch(tmp_path / "m.tflite"))
    with pytest.raises(ConfigError, match="--run"):
        run_targets(tmp_path / "no-such-run")
    with pytest.raises(ConfigError, match="no checkpoint"):
        run_targets(tmp_path)
    assert run_targets(tmp_path, student=False, teacher=False) == []
    with pytest.raises(ConfigError, match="backend"):
        Target("x", "tflite")


def test_int8_verdict_compares_each_runtime_with_its_own_fp32_of_the_same_network():
    """ORT INT8 2.2x faster than ORT FP32 while OpenVINO INT8 is slower than OpenVINO FP32 (and than ORT FP32):
    each line says so of its own runtime; a ResNet's INT8 is never measured against a MobileNet's FP32."""
    from fopro_edge.bench.report import int8_verdict

    ort32 = Target("onnx", "onnxruntime", "fp32", path="m.onnx", group="mnv3", gate="PASSED")
    ort8 = Target("onnxruntime/int8", "onnxruntime", "int8", path="q.onnx", group="mnv3", gate="PASSED")
    ov32 = Target("onnx (in openvino)", "openvino", "fp32", path="m.onnx", group="mnv3", gate="PASSED")
    ov8 = Target("openvino/ir-int8", "openvino", "int8", path="m.xml", group="mnv3", gate="PASSED")
    r50 = Target("resnet50 int8", "onnxruntime", "int8", path="r.onnx", group="resnet50")
    ms = (_m(ort32, 0.534), _m(ort8, 0.247), _m(ov32, 0.500), _m(ov8, 0.600), _m(r50, 7.0))
    lines = int8_verdict(BenchReport(ms, BenchConfig(batch_sizes=(1,), threads=(2,)), {}, ""))
    assert lines == [
        "b1 t2: onnxruntime INT8 is faster than its FP32 on this CPU: onnxruntime/int8 p50 0.247 ms vs onnx 0.534 ms (2.16x)",
        "b1 t2: openvino INT8 is no faster than its FP32 on this CPU: openvino/ir-int8 p50 0.600 ms vs onnx (in openvino) "
        "0.500 ms (0.83x)",
        "b1 t2: resnet50 int8: no FP32 model of the same network was measured in onnxruntime to compare it with",
        "b1 t2: fastest artifact that passed its gate: onnxruntime/int8 (int8, p50 0.247 ms)",
    ]


def test_same_runtime_fp32_adds_the_onnx_file_to_a_runtime_that_has_only_int8():
    from fopro_edge.bench.targets import same_runtime_fp32

    ort32 = Target("onnx", "onnxruntime", "fp32", path="m.onnx", group="mnv3", gate="PASSED",
                   options={"providers": ["CPUExecutionProvider"]})
    ort8 = Target("onnxruntime/int8", "onnxruntime", "int8", path="q.onnx", group="mnv3",
                  options={"providers": ["CPUExecutionProvider"]})
    ov8 = Target("openvino/ir-int8", "openvino", "int8", path="m.xml", group="mnv3", options={"inference_precision": "f32"})
    added = same_runtime_fp32([STUDENT, ort32, ort8, ov8])
    assert added == [Target("onnx (in openvino) (f32)", "openvino", "fp32", path="m.onnx", group="mnv3", gate="PASSED",
                            options={"inference_precision": "f32"})]
    assert same_runtime_fp32([ort32, ort8]) == [] and same_runtime_fp32([ov8]) == []


def test_a_runs_artifacts_are_timed_at_the_students_input_size(tmp_path):
    import torch

    # an artifact whose graph leaves the spatial size dynamic (as a QAT-KD IR can) still gets the run's size
    _manifest(tmp_path / "export", "openvino", [("onnx", "onnx/model.onnx", "fp32", "PASSED"),
                                                ("ir-int8", "ir-int8/model.xml", "int8", "PASSED")], "runs/x/export/openvino")
    (tmp_path / "checkpoints").mkdir()
    torch.save({"recipe": {"student": {"model": "s"}, "teacher": {"model": "t"}}, "image_size": 48,
                "student": {"w": torch.zeros(2)}}, tmp_path / "checkpoints" / "best.pt")
    targets = run_targets(tmp_path, student=False, teacher=False)
    assert targets and {t.image_size for t in targets} == {48}
