"""``fopro-edge run``: target choice, the report, and the whole chain on the tiny synthetic recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fopro_edge.cli import _register, cli
from fopro_edge.errors import ConfigError
from fopro_edge.workflow import DEFAULT_TARGETS, export_targets

_register()
REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke_synthetic.yaml")


def test_export_targets_order_of_precedence():
    assert export_targets({}) == DEFAULT_TARGETS
    assert export_targets({"openvino": {"precision": "fp32"}, "onnx": None}) == ("openvino", "onnx")
    assert export_targets({"openvino": {}}, ["tensorrt", "onnx", "tensorrt"]) == ("tensorrt", "onnx")
    with pytest.raises(ConfigError, match="did you mean 'openvino'"):
        export_targets({}, ["openvin"])


def test_unknown_target_fails_before_training(tmp_path):
    r = CliRunner().invoke(cli, ["run", SMOKE, "--out", str(tmp_path / "r"), "--target", "tflite"])
    assert r.exit_code == 2 and "--target: unknown target 'tflite'" in r.output
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()


def test_the_whole_chain_on_the_smoke_recipe(tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, [
        "-q", "run", SMOKE, "--out", str(run), "--target", "onnx", "--no-progress", "--in-process",
        "--iters", "3", "--warmup", "1", "--threads", "1", "--max-interference", "100",
    ])
    assert r.exit_code == 0, r.output
    assert "export onnx (fp32): PASSED" in r.output and f"report: {run / 'report.md'}" in r.output
    for name in ("checkpoints/best.pt", "metrics/metrics.json", "export/onnx/export.json", "export/onnx/onnx/model.onnx",
                 "bench/bench.json", "bench/bench.md", "bench/latency.png", "longtail.png", "report.md"):
        assert (run / name).is_file(), name
    bench = json.loads((run / "bench" / "bench.json").read_text())
    roles = {m["target"]["name"]: (m["target"]["role"], m["status"]) for m in bench["measurements"]}
    assert roles == {"test_resnet (student)": ("student", "ok"), "test_efficientnet (teacher)": ("teacher", "ok"),
                     "onnx": ("artifact", "ok")}
    onnx_row = next(m for m in bench["measurements"] if m["target"]["name"] == "onnx")
    assert onnx_row["target"]["gate"] == "PASSED" and onnx_row["speedup"]["vs_student"] > 0
    md = (run / "report.md").read_text()
    order = ["# smoke_synthetic", "## 1. Data: the long tail", "## 2. Method", "## 3. Results per class",
             "## 4. Export steps and their rare-class gates", "### onnx (fp32) — PASSED", "## 5. Latency on this machine",
             "### Batch 1, 1 thread", "### Machine (fingerprint)", "## Wall time of the steps"]
    positions = [md.index(h) for h in order]
    assert positions == sorted(positions)
    for link in ("longtail.png", "metrics/per_class_recall.png", "bench/latency.png", "export/onnx/report.md"):
        assert f"({link})" in md and (run / link).is_file(), link
