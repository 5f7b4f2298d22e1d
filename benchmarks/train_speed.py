"""Training-step throughput (images/s) of bsm, ekd (live teacher or cached features), ekd+fpg and fopro.

Each measurement builds the real trainer (student, EKD heads, frozen teacher, FPG, optimisers) from
the demo recipe with overrides, feeds it fixed random batches (the student's view at
``--sizes``, the teacher's at ``--teacher-size``), and times whole optimiser steps after a warm-up.
``ekd:cached`` is ``ekd`` fed the teacher's features of the batch (as the teacher-feature cache
does) instead of its view. `fopro` runs an adversarial FPG step every `distill.akd.every` steps,
so its figure is measured over whole cycles (amortised); the cost of one AKD step alone is
reported too.

    python benchmarks/train_speed.py --methods bsm,ekd:cached,ekd --sizes 32 --batch 64 --teacher-size 224 \
        --out benchmarks/results/train_speed_cache_cpu.json
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


def measure(mode: str, size: int, batch: int, steps: int, device: str, teacher: str, student: str,
            teacher_size: int | None) -> dict:
    from fopro_edge.config import load_recipe
    from fopro_edge.distill.rundir import RunDir
    from fopro_edge.distill.runtime import setup_runtime
    from fopro_edge.distill.trainer import Trainer

    method, _, variant = mode.partition(":")
    overrides = [
        f"distill.method={method}", "distill.akd.start_epoch=0", "distill.teacher_cache.mode=false", "data.source=synthetic", f"data.image_size={size}", f"data.batch_size={batch}",
        f"data.synthetic.image_size={size}", "data.synthetic.max_per_class=8", "data.synthetic.eval_per_class=1",
        f"teacher.model={teacher}", f"student.model={student}", f"runtime.device={device}",
    ]
    if teacher != "tf_efficientnet_lite0":
        overrides += ["teacher.weights=null"]
    if teacher_size:
        overrides += [f"teacher.image_size={teacher_size}"]
    recipe = load_recipe(REPO / "recipes" / "demo_digits.yaml", overrides)
    rt = setup_runtime(recipe.runtime, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(recipe, RunDir(Path(tmp)), rt, progress=False)
    trainer.net.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen)
    y = torch.randint(0, len(trainer.class_names), (batch,), generator=gen)
    t_size = trainer.teacher_size
    batch_in = {"student": x, "label": y}
    if recipe.uses_teacher:
        x_t = torch.rand(batch, 3, t_size, t_size, generator=gen)
        if variant == "cached":
            with torch.no_grad():
                batch_in["teacher_features"] = trainer.teacher(x_t).to(torch.float16)
        else:
            batch_in["teacher"] = x_t
    every = recipe.distill.akd.every if method == "fopro" else 1
    step_s: list[float] = []

    def run(step: int) -> float:
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step(batch_in, step)
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
        "method": mode,
        "image_size": size,
        "teacher_size": t_size if recipe.uses_teacher else None,
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
    p.add_argument("--methods", default="bsm,ekd:cached,ekd,ekd+fpg,fopro")
    p.add_argument("--teacher-size", type=int, default=None, help="teacher input size (default: the teacher's own)")
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
            r = measure(method, size, batch, a.steps, a.device, a.teacher, a.student, a.teacher_size)
            results.append(r)
            print(json.dumps(r), flush=True)
    ratios = {}
    for size in map(int, a.sizes.split(",")):
        by = {r["method"]: r for r in results if r["image_size"] == size}
        base = by.get("bsm")
        ratios[str(size)] = {f"{m}_step_vs_bsm": base["images_per_s"] / r["images_per_s"]
                             for m, r in by.items() if base is not None and m != "bsm"}
    report = {
        "what": "training-step throughput, images/s (higher is better); step_vs_bsm = bsm img/s / method img/s",
        "command": "python " + " ".join(sys.argv),
        "teacher": a.teacher,
        "student": a.student,
        "device": a.device,
        "threads": torch.get_num_threads(),
        "results": results,
        "step_cost_vs_bsm": ratios,
        "env": collect_env(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps({"step_cost_vs_bsm": ratios}))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
