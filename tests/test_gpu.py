"""The CUDA paths: distillation with autocast (bf16, fp16 with loss scaling) and channels-last, a
CUDA-trained checkpoint used on the CPU, and the PyTorch baseline benchmarked on the GPU. They skip
without a CUDA GPU (conftest)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from fopro_edge.bench import BenchConfig, Target
from fopro_edge.bench.measure import measure_one
from fopro_edge.config import load_recipe
from fopro_edge.distill.checkpoint import load_student
from fopro_edge.distill.rundir import prepare_run_dir
from fopro_edge.distill.trainer import distill

pytestmark = pytest.mark.gpu

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke_synthetic.yaml"


def _distill(tmp_path: Path, *overrides: str):
    recipe = load_recipe(SMOKE, ["runtime.device=cuda", *overrides])
    return distill(recipe, prepare_run_dir(tmp_path / "run", recipe.name, resume=False), resume=False, progress=False)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_fopro_trains_on_cuda_and_the_checkpoint_runs_on_the_cpu(tmp_path, caplog, amp):
    caplog.set_level(logging.INFO)
    result = _distill(tmp_path, f"runtime.amp={amp}", "distill.epochs=3")
    assert "with fopro on cuda" in caplog.text
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(h["train"]["loss"])) for h in history)
    metrics = json.loads((result.run_dir / "metrics" / "metrics.json").read_text())
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0
    on_cpu, _ = load_student(result.best_checkpoint)
    on_gpu, _ = load_student(result.best_checkpoint, device="cuda")
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        cpu_logits, gpu_logits = on_cpu(x), on_gpu(x.cuda()).float().cpu()
    assert torch.allclose(cpu_logits, gpu_logits, atol=1e-3, rtol=1e-3)


def test_pytorch_baseline_on_cuda_reports_cuda_events_and_gpu_memory():
    spec = {"source": "timm", "model": "test_resnet", "num_classes": 3, "image_size": 32, "seed": 0}
    target = Target("test_resnet (cuda)", "pytorch", role="student", model=spec, options={"device": "cuda"})
    config = BenchConfig(warmup=3, iters=20, retries=0, max_interference=1.0, input_count=2)
    m = measure_one(target, 2, 2, config)
    assert m.ok, m.message
    assert m.runtime_info["device"] == "cuda" and m.gpu_latency is not None
    assert m.gpu_latency.iterations == m.latency.iterations == 20
    assert 0 < m.gpu_latency.p50_ms <= m.latency.max_ms
    assert m.gpu_memory and m.gpu_memory["torch_peak_bytes"] > 0
