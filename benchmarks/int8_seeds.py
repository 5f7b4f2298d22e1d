"""Do the INT8 gates hold across seeds? One row per run and INT8 export step.

    for S in 0 1 2 3 4; do fopro-edge run recipes/demo_digits.yaml --set seed=$S --out runs/demo-s$S; done
    python benchmarks/int8_seeds.py runs/demo-s* --out benchmarks/results/int8_seeds_demo

Per run and target, read back from ``RUN/export/<target>/export.json``: the step's status, the
try that was kept, how many weighted ops take INT8 weights, balanced accuracy FP32 -> INT8 and
rare right->wrong flips on the selection split (every try was scored there) and on the
confirmation split (no try was scored there); then, per recipe and target, the mean and the
largest drop. The header names the machine and its CPU class (AVX2 only, VNNI, AMX, ARM), because
INT8 numerics depend on it. Writes ``<out>.json`` and ``<out>.md``; prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rows_of(run: Path) -> list[dict]:
    from fopro_edge.config import load_recipe
    from fopro_edge.deploy.pipeline import read_export

    recipe = load_recipe(run / "recipe.yaml", check_paths=False, saved=True)
    out = []
    for manifest in sorted((run / "export").glob("*/export.json")):
        result = read_export(manifest)
        for step in result.steps:
            if step.artifact is None or step.artifact.precision != "int8" or step.gate is None:
                continue
            g, c = step.gate, step.confirmation
            chosen = step.repair.attempts[step.repair.chosen - 1] if step.repair else None
            int8_ops = step.extra.get("int8_weighted_ops", {})
            out.append({
                "recipe": recipe.name, "seed": recipe.seed, "run": run.name, "target": result.target, "step": step.name,
                "status": step.status, "kept": f"try {chosen.number}: {chosen.label}" if chosen else "try 1",
                "deploy_cpu": _deploy_cpu(step.extra.get("deploy_cpu"), result.target),
                "int8_ops": int8_ops.get("int8"), "weighted_ops": int8_ops.get("total"),
                "select_split": g.split, "select_ref": g.reference.balanced_accuracy, "select_int8": g.candidate.balanced_accuracy,
                "select_flips": g.flips.total, "select_rare_rw": g.flips.rare_right_to_wrong,
                "select_rare_close": g.flips.rare_close_calls, "select_rare_text": g.flips.rare_text(),
                "select_rare_clear": g.flips.rare_clear_right_to_wrong, "select_kl": g.parity.mean_kl,
                "confirm_split": c.split if c else None,
                "confirm_ref": c.reference.balanced_accuracy if c else None,
                "confirm_int8": c.candidate.balanced_accuracy if c else None,
                "confirm_flips": c.flips.total if c else None, "confirm_rare_rw": c.flips.rare_right_to_wrong if c else None,
                "confirm_rare_close": c.flips.rare_close_calls if c else None,
                "confirm_rare_clear": c.flips.rare_clear_right_to_wrong if c else None,
                "confirm_kl": c.parity.mean_kl if c else None,
                "confirm_rare_text": c.flips.rare_text() if c else None,
                "confirm_lost_gaps": [x.reference_gap for x in c.rare_lost] if c else None,
                "confirm_lost_to": [x.predicted for x in c.rare_lost] if c else None,
                "qat": step.extra.get("qat"),  # QAT-KD's steps and scores where it ran
                "logit_offsets": _largest_offsets(step.extra.get("settings", {}), [k.name for k in g.classes]),
                "confirm_margin_shift": _shift(c.rare_margin_shift) if c else None,
            })
    return out


def summaries(rows: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["recipe"], r["target"]) for r in rows):
        rs = [r for r in rows if (r["recipe"], r["target"]) == key]
        sel = [100 * (r["select_ref"] - r["select_int8"]) for r in rs]
        conf = [100 * (r["confirm_ref"] - r["confirm_int8"]) for r in rs if r["confirm_ref"] is not None]
        cov = [r["int8_ops"] / r["weighted_ops"] for r in rs if r["weighted_ops"]]
        out.append({
            "recipe": key[0], "target": key[1], "runs": len(rs), "passed": sum(r["status"] == "PASSED" for r in rs),
            "select_drop_mean": statistics.fmean(sel), "select_drop_max": max(sel),
            "confirm_drop_mean": statistics.fmean(conf) if conf else None, "confirm_drop_max": max(conf) if conf else None,
            "confirm_rare_rw_total": sum(r["confirm_rare_rw"] or 0 for r in rs),
            "confirm_rare_close_total": sum(r["confirm_rare_close"] or 0 for r in rs),
            "confirm_rare_clear_total": sum(r["confirm_rare_clear"] or 0 for r in rs),
            "eroded": sum(bool((r["confirm_margin_shift"] or {}).get("eroded")) for r in rs),
            "kl_max": max(max(r["select_kl"], r["confirm_kl"] or 0.0) for r in rs),
            "min_int8_coverage": min(cov) if cov else None,
        })
    return out


def _deploy_cpu(scheme: dict | None, target: str) -> str:
    """The CPU class the artifact was made for, and how this CPU checked it where the two differ."""
    if not scheme:
        return "–"
    if scheme["deploy_cpu"] == scheme["check_cpu"]:
        return scheme["deploy_cpu"]
    how = "exact Q/DQ" if scheme.get("exact_check") and target == "onnxruntime" else "kernels"
    return f"{scheme['deploy_cpu']} ({how} on {scheme['check_cpu']})"


def _largest_offsets(settings: dict, class_names: list[str], k: int = 3) -> dict[str, float] | None:
    """The kept try's largest per-class logit offsets (what the artifact subtracts), by class name."""
    fitted = settings.get("logit_offsets")
    if not fitted:
        return None
    offsets = fitted["offsets"]
    return {class_names[i]: offsets[i] for i in sorted(range(len(offsets)), key=lambda i: -abs(offsets[i]))[:k]}


def _shift(m) -> dict | None:
    if m is None:
        return None
    return {"mean": m.mean, "low": m.interval.low if m.interval else None,
            "high": m.interval.high if m.interval else None, "scale": m.scale, "eroded": m.eroded}


def _shift_cell(m: dict | None) -> str:
    if m is None:
        return "–"
    ci = f" [{m['low']:+.2f}, {m['high']:+.2f}]" if m["low"] is not None else ""
    return f"{m['mean']:+.2f}{ci}{' eroded' if m['eroded'] else ''}"


def _lost(r: dict) -> str:
    if r["confirm_rare_rw"] is None:
        return "–"
    gaps, to = r["confirm_lost_gaps"] or [], r.get("confirm_lost_to") or []
    lost = [f"{g:.2f}" + (f" →{t}" if t else "") for g, t in zip(gaps, to or [None] * len(gaps))]
    return r["confirm_rare_text"] + (f"; gaps {', '.join(lost)}" if lost else "")


def _offsets_cell(r: dict) -> str:
    o = r.get("logit_offsets")
    return "–" if not o else ", ".join(f"{c} {v:+.2f}" for c, v in o.items())


def markdown(rows: list[dict], sums: list[dict], machine: str, command: str) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    lines = [
        "# INT8 gates across seeds", "", f"Machine: {machine}", "", f"Command: `{command}`", "",
        "Balanced accuracy %, FP32 student -> kept INT8 artifact; drop in points. Selection: the split every "
        "repair try was scored on; confirmation: the other split, scored once on the kept artifact. Rare r→w: "
        "rare images the FP32 student got right and the artifact gets wrong; close calls (the FP32 student's "
        "top-2 probability gap under `check.close_call_gap`) in brackets, with their gaps on confirmation. "
        "Rare margin shift: the rare images' mean true-class margin change on confirmation (logits, artifact "
        "minus FP32, beyond the common scale of all margins) with its 95 % bootstrap interval; 'eroded' where it "
        "lies wholly below zero (the gate fails). Clear: rare images lost that the FP32 student decided clearly "
        "(what `max_rare_clear_losses` limits). KL: mean softmax KL from the FP32 student, nats, selection / "
        "confirmation (what `max_mean_kl` limits). Logit offsets: the largest per-class offsets the kept artifact "
        "subtracts (fitted on the calibration images; – where none). Deploy CPU: the CPU class the artifact was "
        "made for; where it is not this CPU's, how the gate ran it here (exact Q/DQ: the Q/DQ ops run as written, "
        "the integer arithmetic of a CPU that does not saturate).", "",
        "| recipe | seed | target | deploy CPU | status | kept | INT8 ops | logit offsets | selection | rare r→w | flips | confirmation | rare r→w (gaps →predicted) | rare margin shift | clear | flips | KL |",
        "|---|---:|---|---|---|---|---:|---|---|---:|---:|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['seed']} | {r['target']} | {r.get('deploy_cpu', '–')} | {r['status']} | {r['kept']} | {r['int8_ops']}/{r['weighted_ops']} | "
            f"{_offsets_cell(r)} | {r['select_split']} {pct(r['select_ref'])} → {pct(r['select_int8'])} | {r['select_rare_text']} | {r['select_flips']} | "
            f"{r['confirm_split'] or '–'} {pct(r['confirm_ref'])} → {pct(r['confirm_int8'])} | {_lost(r)} | "
            f"{_shift_cell(r.get('confirm_margin_shift'))} | "
            f"{'–' if r.get('confirm_rare_clear') is None else r['confirm_rare_clear']} | "
            f"{'–' if r['confirm_flips'] is None else r['confirm_flips']} | "
            f"{r['select_kl']:.4f} / {'–' if r['confirm_kl'] is None else format(r['confirm_kl'], '.4f')} |")
    lines += ["", "| recipe | target | passed | selection drop mean / max | confirmation drop mean / max | "
                  "rare r→w on confirmation, all runs (close calls) | clear rare losses on confirmation | eroded | "
                  "largest mean KL | least INT8 coverage |", "|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for s in sums:
        conf = ("–" if s["confirm_drop_mean"] is None
                else f"{s['confirm_drop_mean']:+.2f} / {s['confirm_drop_max']:+.2f}")
        cov = "–" if s["min_int8_coverage"] is None else f"{100 * s['min_int8_coverage']:.0f} %"
        lines.append(f"| {s['recipe']} | {s['target']} | {s['passed']}/{s['runs']} | "
                     f"{s['select_drop_mean']:+.2f} / {s['select_drop_max']:+.2f} | {conf} | {s['confirm_rare_rw_total']} ({s['confirm_rare_close_total']}) | "
                     f"{s['confirm_rare_clear_total']} | {s['eroded']} | {s['kl_max']:.4f} | {cov} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run directories written by fopro-edge run")
    ap.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    ap.add_argument("--command", default="", help="the command that made the runs, for the report")
    args = ap.parse_args()

    from fopro_edge.envinfo import collect_env, machine_line

    rows = [r for run in args.runs for r in rows_of(run)]
    if not rows:
        print("no INT8 export step in the given runs", file=sys.stderr)
        return 2
    sums = summaries(rows)
    machine = machine_line()
    text = markdown(rows, sums, machine, args.command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "env": collect_env(), "command": args.command,
                                                            "rows": rows, "summaries": sums}, indent=1))
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
