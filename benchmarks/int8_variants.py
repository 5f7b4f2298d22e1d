"""Where the time of an OpenVINO INT8 model goes, and what NNCF / runtime choices change it.

For one model of the latency suite (its batch-1 ONNX, built by ``benchmarks/latency.py`` in
``--work``) this builds INT8 IRs with the project's own ``quantize_ir`` under several NNCF
settings, then times every (IR, runtime setting) pair in one process, interleaved over
``--rounds`` rounds so slow drifts of the machine hit all of them alike, and reports the median
of the per-round p50s. It also profiles the default INT8 IR per layer type (OpenVINO's
``PERF_COUNT``). Writes ``int8_variants_<model>.{json,md}``.

    python benchmarks/latency.py benchmarks/suites/cpu_latency.yaml --build-only
    python benchmarks/int8_variants.py --model mobilenetv3_large_100 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> NNCFSettings fields, on NNCF's own defaults (performance preset, its activation ranges);
# most keep some ops of MobileNet-style blocks in float
NNCF_DEFAULTS: dict[str, Any] = {"preset": "performance", "range_estimator": "default"}
VARIANTS: dict[str, dict[str, Any]] = {
    "default (performance preset)": NNCF_DEFAULTS,
    "mixed preset": {**NNCF_DEFAULTS, "preset": "mixed"},
    "mixed preset, minmax ranges (the export's default)": {"preset": "mixed", "range_estimator": "minmax"},
    "SE multiply in float": {**NNCF_DEFAULTS, "ignored_types": ("Multiply",)},
    "SE pooling in float": {**NNCF_DEFAULTS, "ignored_types": ("ReduceMean",)},
    "SE pooling + multiply in float": {**NNCF_DEFAULTS, "ignored_types": ("ReduceMean", "Multiply")},
    "stem conv in float": {**NNCF_DEFAULTS, "ignored_patterns": ("/backbone/conv_stem/.*",)},
}
# runtime settings: label -> compile properties on top of the latency hint (every variant gets the
# first two; the default variant gets all of them)
RUNTIME: dict[str, dict[str, Any]] = {
    "f32": {"INFERENCE_PRECISION_HINT": "f32"},
    "bf16": {"INFERENCE_PRECISION_HINT": "bf16"},
    "f16": {"INFERENCE_PRECISION_HINT": "f16"},
    "f32, CPU pinning on": {"INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": True},
    "f32, CPU pinning off": {"INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False},
}


def build(model_dir: Path, out_dir: Path, images: np.ndarray) -> dict[str, Path]:
    from fopro_edge.deploy import openvino_backend as vb
    from fopro_edge.deploy.onnx_backend import read_metadata

    src = model_dir / "model.b1.onnx"
    if not src.is_file():
        raise SystemExit(f"{src}: missing; build it first: python benchmarks/latency.py SUITE --build-only")
    paths = {}
    for i, (name, fields) in enumerate(VARIANTS.items()):
        path = out_dir / f"v{i}" / "model.xml"
        if not path.is_file():
            vb.quantize_ir(src, path, images, vb.NNCFSettings(**fields), metadata=read_metadata(src))
        paths[name] = path
    return paths


def compile_request(path: Path, runtime: dict[str, Any], threads: int, perf_count: bool = False):
    import openvino as ov

    cfg = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": threads,
           "PERF_COUNT": perf_count, **runtime}
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", cfg).create_infer_request()


def p50_ms(request, x: np.ndarray, iters: int, warmup: int = 30) -> float:
    """p50 of ``iters`` calls, timed by the bench loop (the call the project's OpenVINO runner makes)."""
    from types import SimpleNamespace

    from fopro_edge.bench.timing import time_runner

    runner = SimpleNamespace(infer=lambda batch: request.infer({0: batch}, share_inputs=True))
    return statistics.median(time_runner(runner, [x], warmup=warmup, iters=iters).durations_ns) / 1e6


def profile(path: Path, x: np.ndarray, threads: int, iters: int) -> list[dict[str, Any]]:
    """Mean time per call of each (layer type, kernel) pair, largest first."""
    request = compile_request(path, RUNTIME["f32"], threads, perf_count=True)
    for _ in range(30):
        request.infer({0: x})
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for _ in range(iters):
        request.infer({0: x})
        for p in request.profiling_info:
            if p.status == p.Status.EXECUTED:
                key = (p.node_type, p.exec_type)
                total[key] += p.real_time.total_seconds() * 1e6
                count[key] += 1
    return [{"layer": k[0], "kernel": k[1], "nodes": count[k] // iters, "us_per_call": v / iters}
            for k, v in total.most_common()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv3_large_100")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fopro-latency"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--calibration-images", type=int, default=128)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from latency import calibration_images

    from fopro_edge.bench.cpuload import wait_for_quiet
    from fopro_edge.envinfo import collect_env

    paths = build(args.work / args.model, args.work / args.model / "variants", calibration_images(args.calibration_images, 224))
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    default = next(iter(VARIANTS))
    cells = {(name, label): compile_request(path, RUNTIME[label], args.threads)
             for name, path in paths.items() for label in (RUNTIME if name == default else list(RUNTIME)[:2])}
    wait_for_quiet(0.05)
    rounds: dict[tuple[str, str], list[float]] = {k: [] for k in cells}
    for _ in range(args.rounds):
        for key, request in cells.items():
            rounds[key].append(p50_ms(request, x, args.iters))
    layers = profile(paths["default (performance preset)"], x, args.threads, args.iters)
    rows = [{"variant": n, "runtime": r, "p50_ms": statistics.median(v), "round_p50s_ms": v}
            for (n, r), v in rounds.items()]
    report = {"model": args.model, "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
              "command": "python " + " ".join(sys.argv), "variants": VARIANTS, "runtime": RUNTIME, "results": rows,
              "profile_default_f32": layers, "env": collect_env(runtimes=True), "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"int8_variants_{args.model}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    base = statistics.median(rounds[(default, "f32")])
    md = [f"# INT8 variants of `{args.model}` (OpenVINO, batch 1, {args.threads} threads)\n",
          (f"`{report['command']}`, {report['date']}. Median of {args.rounds} per-round p50s, {args.iters} calls "
           "each, all cells in one process, interleaved.\n"),
          "| NNCF variant | runtime (inference precision, properties) | p50 ms | vs default | per-round p50s |", "|---|---|---:|---:|---|"]
    md += [f"| {r['variant']} | {r['runtime']} | {r['p50_ms']:.3f} | {r['p50_ms'] / base:.2f}x | "
           + ", ".join(f"{v:.3f}" for v in r["round_p50s_ms"]) + " |" for r in rows]
    total = sum(layer["us_per_call"] for layer in layers)
    md += [f"\n## Where the default INT8 model's time goes (PERF_COUNT, {total:.0f} µs of layers per call)\n",
           "| layer | kernel | nodes | µs per call | share |", "|---|---|---:|---:|---:|"]
    md += [f"| {layer['layer']} | {layer['kernel']} | {layer['nodes']} | {layer['us_per_call']:.1f} | "
           f"{100 * layer['us_per_call'] / total:.1f} % |" for layer in layers if layer["us_per_call"] >= 1.0]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
