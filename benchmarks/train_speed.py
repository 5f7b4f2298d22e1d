"""Training-step throughput (images/s) of ce, ekd, ekd+fpg and fopro at several image sizes.

Each measurement builds the real trainer (student, EKD heads, frozen teacher, FPG, optimisers) from
the demo recipe with overrides, feeds it fixed random batches, and times whole optimiser steps
after a warm-up. `fopro` runs an adversarial FPG step every `distill.akd.every` steps, so its figure
is measured over whole cycles (amortised); the cost of one AKD step alone is reported too.

    python benchmarks/train_speed.py --out benchmarks/results/train_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def measure(method: str, size: int, batch: int, steps: int, device: str, teacher: str, student: str) -> dict:
    from fopro_edge.config import load_recipe
    from fopro_edge.distill.rundir import RunDir
    from fopro_edge.distill.runtime import setup_runtime
    from fopro_edge.distill.trainer import Trainer

    overrides = [
        f"distill.method={method}", "data.source=synthetic", f"data.image_size={size}", f"data.batch_size={batch}",
        f"data.synthetic.image_size={size}", "data.synthetic.max_per_class=8", "data.synthetic.eval_per_class=1",
        f"teacher.model={teacher}", f"student.model={student}", f"runtime.device={device}",
    ]
    if teacher != "tf_efficientnet_lite0":
        overrides += ["teacher.weights=null"]
    recipe = load_recipe(REPO / "recipes" / "demo_digits.yaml", overrides)
    rt = setup_runtime(recipe.runtime, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(recipe, RunDir(Path(tmp)), rt, progress=False)
    trainer.net.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen)
    y = torch.randint(0, len(trainer.class_names), (batch,), generator=gen)
    every = recipe.distill.akd.every if method == "fopro" else 1
    step_s: list[float] = []

    def run(step: int) -> float:
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step(x, y, step)
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for s in range(max(8, 2 * every)):  # warm-up: whole cycles, allocator and kernel caches settled
        run(s + 1)
    cycles = max(1, steps // every)
    for c in range(cycles):
        for k in range(every):
            step_s.append(run(c * every + k))  # step 0 of each cycle is the AKD step for fopro
    total = sum(step_s)
    out = {
        "method": method,
        "image_size": size,
        "batch": batch,
        "steps": len(step_s),
        "images_per_s": batch * len(step_s) / total,
        "step_ms_median": 1000 * statistics.median(step_s),
    }
    if method == "fopro":
        akd = step_s[0::every]
        plain = [t for i, t in enumerate(step_s) if i % every]
        out["akd_every"] = every
        out["akd_step_ms_median"] = 1000 * statistics.median(akd)
        out["plain_step_ms_median"] = 1000 * statistics.median(plain) if plain else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="ce,ekd,ekd+fpg,fopro")
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--batch", default="32,16", help="batch per size, same order as --sizes")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--teacher", default="tf_efficientnet_lite0")
    p.add_argument("--student", default="mobilenetv3_small_100")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    from fopro_edge.envinfo import collect_env

    if a.threads:
        torch.set_num_threads(a.threads)
    results = []
    for size, batch in zip(map(int, a.sizes.split(",")), map(int, a.batch.split(","))):
        for method in a.methods.split(","):
            r = measure(method, size, batch, a.steps, a.device, a.teacher, a.student)
            results.append(r)
            print(json.dumps(r), flush=True)
    ratios = {}
    for size in map(int, a.sizes.split(",")):
        by = {r["method"]: r for r in results if r["image_size"] == size}
        if "ekd" in by and "fopro" in by:
            ratios[str(size)] = by["ekd"]["images_per_s"] / by["fopro"]["images_per_s"]
    report = {
        "what": "training-step throughput, images/s (higher is better); fopro_cost_vs_ekd = ekd img/s / fopro img/s",
        "command": "python " + " ".join(sys.argv),
        "teacher": a.teacher,
        "student": a.student,
        "device": a.device,
        "threads": torch.get_num_threads(),
        "results": results,
        "fopro_cost_vs_ekd": ratios,
        "env": collect_env(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps({"fopro_cost_vs_ekd": ratios}))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
