"""Does an ONNX Runtime INT8 check on this CPU compute what the deployment CPU computes?

For each kept ONNX Runtime INT8 artifact of the given runs (``RUN/export/onnxruntime``), run its
verify bundle's images (selection and confirmation) twice on this CPU: with ONNX Runtime's fused
integer kernels, and with the Q/DQ ops run as written (no graph optimisation: float arithmetic on
the dequantized integers, the exact int32 accumulation of a CPU that does not saturate, VNNI or Arm).
Per artifact and split: how far the two differ (mean and largest |Δlogit|, changed predictions) and
the gate's verdict and rare right->wrong count against the FP32 student under each.

With 7-bit weights (a deployment CPU without VNNI) the fused kernels here should equal the exact
result; with 8-bit weights (made for VNNI) on a CPU that saturates they need not, which is why the
export checks such an artifact with the exact arithmetic. The header names this machine's CPU class.

    python benchmarks/int8_kernels.py runs/demo-s* --out benchmarks/results/int8_kernels_avx2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rows_of(run: Path, threads: int) -> list[dict]:
    from fopro_edge.deploy.bundle import read_bundle
    from fopro_edge.deploy.gate import evaluate_gate
    from fopro_edge.deploy.pipeline import read_export
    from fopro_edge.deploy.runners import OrtRunner, predict

    manifest = run / "export" / "onnxruntime" / "export.json"
    if not manifest.is_file():
        return []
    result = read_export(manifest)
    out = []
    for step in result.steps:
        if step.artifact is None or step.artifact.precision != "int8":
            continue
        art = Path(step.artifact.path)
        art = art if art.is_absolute() else manifest.parent / art
        bundle = read_bundle(art.parent / "verify-bundle")
        m, thresholds = bundle.manifest, bundle.thresholds
        scheme = step.extra.get("deploy_cpu") or {}
        settings = step.extra.get("settings", {})
        weights = "7-bit" if settings.get("reduce_range", settings.get("seven_bit_weights")) else "8-bit"  # PTQ | QAT-KD
        for role in ("selection", "confirmation"):
            data = bundle.split(role)
            if data is None:
                continue
            batches = [data.images[i:i + thresholds.batch_size] for i in range(0, len(data.images), thresholds.batch_size)]
            logits, verdict = {}, {}
            for mode, emulate in (("fused", False), ("exact", True)):
                with OrtRunner(art, precision="int8", threads=threads, emulate_qdq=emulate) as r:
                    logits[mode] = predict(r, batches, thresholds.batch_size)
                g = evaluate_gate(data.labels, data.reference, logits[mode], m["class_names"], m["rare_classes"],
                                  thresholds, step=step.name, artifact=art.name, runtime="onnxruntime",
                                  precision="int8", split=data.split, check_parity=False)
                verdict[mode] = {"status": g.status, "rare_rw": g.flips.rare_right_to_wrong, "flips": g.flips.total,
                                 "balanced_accuracy": g.candidate.balanced_accuracy,
                                 "mean_abs_error": float(np.abs(logits[mode] - data.reference).mean())}
            d = np.abs(logits["fused"] - logits["exact"])
            out.append({
                "run": run.name, "deploy_cpu": scheme.get("deploy_cpu"), "checked_with": "exact" if scheme.get("exact_check")
                else "fused", "weights": weights, "split": data.split, "images": len(data.labels),
                "mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max()),
                "changed_predictions": int((logits["fused"].argmax(1) != logits["exact"].argmax(1)).sum()),
                "fused": verdict["fused"], "exact": verdict["exact"],
            })
    return out


def markdown(rows: list[dict], machine: str, command: str) -> str:
    lines = [
        "# ONNX Runtime INT8: this CPU's fused kernels vs exact integer arithmetic", "", f"Machine: {machine}", "",
        f"Command: `{command}`", "",
        "Each kept INT8 artifact on its verify bundle's images, run here with ONNX Runtime's fused integer kernels "
        "and with the Q/DQ ops run as written (exact int32 accumulation: what a CPU that does not saturate computes). "
        "Δ: |fused − exact| logits. Gate and rare r→w (rare images the FP32 student got right, the artifact wrong) "
        "under each; checked with: what the export's gate ran.", "",
        "| run | made for | weights | checked with | split | images | mean / max Δ | changed predictions | "
        "fused: gate, rare r→w | exact: gate, rare r→w |",
        "|---|---|---|---|---|---:|---|---:|---|---|",
    ]
    for r in rows:
        f, e = r["fused"], r["exact"]
        lines.append(f"| {r['run']} | {r['deploy_cpu']} | {r['weights']} | {r['checked_with']} | {r['split']} | "
                     f"{r['images']} | {r['mean_abs_diff']:.3f} / {r['max_abs_diff']:.2f} | {r['changed_predictions']} | "
                     f"{f['status']}, {f['rare_rw']} | {e['status']}, {e['rare_rw']} |")
    lines += ["", "| weights | artifacts × splits | mean Δ | largest Δ | changed predictions | verdicts that differ |",
              "|---|---:|---:|---:|---:|---:|"]
    for w in sorted({r["weights"] for r in rows}):
        rs = [r for r in rows if r["weights"] == w]
        lines.append(f"| {w} | {len(rs)} | {np.mean([r['mean_abs_diff'] for r in rs]):.3f} | "
                     f"{max(r['max_abs_diff'] for r in rs):.2f} | {sum(r['changed_predictions'] for r in rs)} | "
                     f"{sum(r['fused']['status'] != r['exact']['status'] for r in rs)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run directories with an ONNX Runtime INT8 export")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    ap.add_argument("--command", help="how the runs were made, for the report (default: this command line)")
    args = ap.parse_args()

    from fopro_edge.envinfo import collect_env, machine_line

    rows = [r for run in args.runs for r in rows_of(run, args.threads)]
    if not rows:
        print("no ONNX Runtime INT8 export in the given runs", file=sys.stderr)
        return 2
    machine = machine_line()
    command = args.command or "python benchmarks/int8_kernels.py " + " ".join(sys.argv[1:])
    text = markdown(rows, machine, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "env": collect_env(), "command": command,
                                                            "rows": rows}, indent=1))
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
