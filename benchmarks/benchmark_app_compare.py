"""Does the in-process timing loop agree with OpenVINO's own ``benchmark_app``?

For each OpenVINO IR, both tools run the same model with the same compile properties
(PERFORMANCE_HINT=LATENCY, NUM_STREAMS=1, INFERENCE_NUM_THREADS=T, INFERENCE_PRECISION_HINT=P,
passed to benchmark_app with ``-load_config``), one synchronous request, batch 1. Rounds
alternate the tools (ours, benchmark_app, ours, ...) so slow drifts of the machine hit both.
Writes ``benchmark_app_<name>.{json,md}``: per round the p50 of each, the ratio, the interference.

    python benchmarks/benchmark_app_compare.py --work /tmp/fopro-latency --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("benchmark_app_compare")

DEFAULT_MODELS = ("mobilenetv3_large_100/ir-int8", "mobilenetv3_large_100/ir-fp32", "mobilenetv2_100/ir-int8",
                  "resnet18/ir-int8", "resnet50/ir-fp32")
_UNITS = {"ms": 1.0, "us": 1e-3, "s": 1e3}


def parse_benchmark_app(text: str) -> dict[str, float]:
    """Median / Average / Min / Max latency, first inference and compile time (ms) from its stdout."""
    out: dict[str, float] = {}
    for key in ("Median", "Average", "Min", "Max"):
        m = re.search(rf"^\[ INFO \]\s+{key}:\s+([\d.]+)\s+(ms|us|s)\s*$", text, re.MULTILINE)
        if m:
            out[key.lower() + "_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    for key, pattern in (("first_inference_ms", r"First inference took ([\d.]+) ms"),
                         ("compile_ms", r"Compile the model took ([\d.]+) ms"),
                         ("iterations", r"Count:\s+(\d+) iterations")):
        m = re.search(pattern, text)
        if m:
            out[key] = float(m.group(1))
    return out


def is_dynamic(xml: Path) -> bool:
    import openvino as ov

    return not ov.Core().read_model(str(xml)).inputs[0].get_partial_shape().is_static


def bapp_command(xml: Path, cfg: Path, threads: int, iters: int, size: int, dynamic: bool) -> list[str]:
    shape = f"[1,3,{size},{size}]"
    return ["benchmark_app", "-m", str(xml), "-d", "CPU", "-hint", "latency", "-api", "sync", "-niter", str(iters),
            "-load_config", str(cfg), "-data_shape" if dynamic else "-shape", shape]


def run_bapp(cmd: list[str]) -> tuple[dict[str, float], float | None]:
    """Run benchmark_app; its stats and the share of the CPU other processes used meanwhile."""
    from fopro_edge.bench import cpuload

    before, ru0 = cpuload.sample(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    after, ru1 = cpuload.sample(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark_app failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    stats = parse_benchmark_app(proc.stdout)
    share = None
    if before and after:
        child = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        wall = (after.wall_ns - before.wall_ns) / 1e9
        other = max(0.0, (after.busy_s - before.busy_s) - child - (after.own_s - before.own_s))
        share = other / (wall * after.cpus)  # over the whole run, compile included
    return stats, share


def compare(xml: Path, precision: str, threads: int, iters: int, warmup: int, rounds: int, size: int) -> dict[str, Any]:
    from fopro_edge.bench import BenchConfig, Target
    from fopro_edge.bench.worker import measure_in_subprocess

    dynamic = is_dynamic(xml)
    cfg_file = Path(tempfile.mkdtemp(prefix="bapp-")) / "config.json"
    props = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
             "INFERENCE_PRECISION_HINT": precision}
    cfg_file.write_text(json.dumps({"CPU": props}))
    cmd = bapp_command(xml, cfg_file, threads, iters, size, dynamic)
    target = Target(xml.parent.parent.name + "/" + xml.parent.name, "openvino", path=str(xml), image_size=size,
                    options={"inference_precision": precision})
    config = BenchConfig(threads=(threads,), warmup=warmup, iters=iters, retries=0)
    rows = []
    for r in range(rounds):
        m = measure_in_subprocess(target, 1, threads, config)
        if not m.ok:
            raise RuntimeError(f"{xml}: {m.message}")
        b, b_share = run_bapp(cmd)
        rows.append({
            "round": r + 1,
            "ours_p50_ms": m.latency.p50_ms, "ours_mean_ms": m.latency.mean_ms, "ours_min_ms": m.latency.min_ms,
            "ours_runtime_p50_ms": m.runtime_latency.p50_ms if m.runtime_latency else None,
            "ours_other_cpu": m.interference.other_cpu_share if m.interference else None,
            "ours_precision_used": m.runtime_info.get("inference_precision"),
            "bapp_p50_ms": b.get("median_ms"), "bapp_mean_ms": b.get("average_ms"), "bapp_min_ms": b.get("min_ms"),
            "bapp_other_cpu": b_share, "bapp_iterations": b.get("iterations"),
        })
        log.info("%s %s round %d: ours p50 %.3f ms, benchmark_app p50 %.3f ms", target.name, precision, r + 1,
                 rows[-1]["ours_p50_ms"], rows[-1]["bapp_p50_ms"])
    ours = statistics.median(x["ours_p50_ms"] for x in rows)
    ours_rt = statistics.median(x["ours_runtime_p50_ms"] for x in rows) if rows[0]["ours_runtime_p50_ms"] else None
    bapp = statistics.median(x["bapp_p50_ms"] for x in rows)
    return {"model": target.name, "xml": str(xml), "dynamic_batch": dynamic, "precision": precision, "threads": threads,
            "iterations": iters, "warmup": warmup, "properties": props, "benchmark_app_command": " ".join(cmd),
            "rounds": rows, "ours_p50_ms": ours, "ours_runtime_p50_ms": ours_rt, "bapp_p50_ms": bapp, "ratio": ours / bapp,
            "within_10pct": abs(ours / bapp - 1) <= 0.10, "measured": time.strftime("%Y-%m-%d %H:%M %Z")}


def render(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    from fopro_edge.bench.report import env_rows
    from fopro_edge.distill.report import markdown_table

    rows = [[r["model"], r["precision"], r["threads"], f"{r['ours_p50_ms']:.3f}",
             f"{r['ours_runtime_p50_ms']:.3f}" if r.get("ours_runtime_p50_ms") else "–", f"{r['bapp_p50_ms']:.3f}",
             f"{100 * (r['ratio'] - 1):+.1f}", "yes" if r["within_10pct"] else "NO",
             " / ".join(f"{x['ours_p50_ms']:.3f}|{x['bapp_p50_ms']:.3f}" for x in r["rounds"]),
             f"{100 * max(max(x['ours_other_cpu'] or 0, x['bapp_other_cpu'] or 0) for x in r['rounds']):.1f}"]
            for r in results]
    cmd = re.sub(r"-load_config \S+", "-load_config config.json", results[0]["benchmark_app_command"]) if results else ""
    return "\n".join([
        "# In-process timing loop vs OpenVINO `benchmark_app`\n",
        (
            f"Measured {results[0].get('measured', '?') if results else '?'}. Same IR, same compile properties "
            f"(`{json.dumps(results[0]['properties']) if results else ''}`), batch 1, one synchronous request; "
            f"{results[0]['iterations'] if results else '?'} timed calls each. Rounds alternate the two tools. "
            "p50 = median of the rounds' medians. *ours* is the wall-clock time of the runner's `infer` seen from "
            "Python (input binding, the call, output copy); *OpenVINO-reported* is `InferRequest.latency` of the same "
            "calls, the in-runtime figure that benchmark_app reports, so the gap between the two is the Python "
            "binding's overhead per call.\n"
        ),
        markdown_table(["model", "inference precision", "threads", "ours p50 ms", "ours, OpenVINO-reported p50 ms",
                        "benchmark_app p50 ms", "difference %",
                        "within 10 %", "per round: ours|bapp", "max other CPU %"], rows),
        (
            "benchmark_app command for the first row (`config.json` = `{\"CPU\": <the properties above>}`; "
            "`-data_shape` because the IR has a dynamic batch, `-shape` for a static one; benchmark_app requires "
            "`-hint none` to take `-nstreams`/`-nthreads` on its command line, so the properties go through "
            "`-load_config`, and its log confirms NUM_STREAMS 1, INFERENCE_NUM_THREADS 2, PERFORMANCE_HINT LATENCY):\n"
        ),
        f"```\n{cmd}\n```\n",
        (
            "Ours: `fopro-edge bench --artifact MODEL.xml --threads 2 --ov-precision f32 --iters "
            f"{results[0]['iterations'] if results else 300} --out DIR` (fresh process, same runner as the gate).\n"
        ),
        "## Machine\n",
        markdown_table(["", ""], env_rows(env)),
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fopro-latency"), help="artifacts of benchmarks/latency.py")
    ap.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), help="MODEL/IR-FOLDER under --work, or .xml paths")
    ap.add_argument("--precision", default="f32", help="INFERENCE_PRECISION_HINT for both tools")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--name", default="cpu")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the existing .json")
    args = ap.parse_args()
    if args.render_only:
        from fopro_edge.io import atomic_write_text

        stem = args.out / f"benchmark_app_{args.name}"
        d = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        atomic_write_text(stem.with_suffix(".md"), render(d["results"], d["env"]))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if shutil.which("benchmark_app") is None:
        raise SystemExit("benchmark_app not found (it ships with the openvino package: pip install openvino)")
    from fopro_edge.bench.cpuload import wait_for_quiet
    from fopro_edge.envinfo import collect_env
    from fopro_edge.io import atomic_write_json, atomic_write_text

    wait_for_quiet(0.05)
    results = []
    for m in args.models:
        xml = Path(m) if m.endswith(".xml") else args.work / m / "model.xml"
        results.append(compare(xml, args.precision, args.threads, args.iters, args.warmup, args.rounds, args.image_size))
    env = collect_env(runtimes=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"benchmark_app_{args.name}"
    atomic_write_json(stem.with_suffix(".json"), {"results": results, "env": env})
    atomic_write_text(stem.with_suffix(".md"), render(results, env))
    for r in results:
        print(f"{r['model']:<36} ours {r['ours_p50_ms']:.3f} ms  benchmark_app {r['bapp_p50_ms']:.3f} ms  "
              f"{100 * (r['ratio'] - 1):+.1f}%  {'within' if r['within_10pct'] else 'OUTSIDE'} 10%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
