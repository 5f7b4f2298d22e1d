"""How faithful is OpenVINO INT8 to the FP32 student under each NNCF recipe? One PTQ export per
(run, recipe), no repair, so each row is the recipe itself.

    python benchmarks/int8_fidelity.py runs/demo-s* --out benchmarks/results/int8_fidelity_demo

For every run directory and named recipe (``--recipe NAME=key=value,key=value``; keys of the
export profile's ``nncf`` block) this runs ``fopro-edge export --run RUN --target openvino
--no-repair`` into ``--work`` and reads ``export.json`` back: mean and largest |logit difference|
against the FP32 student, predictions changed, and balanced-accuracy drop on the selection and the
confirmation split (240 images on the demo). Writes ``<out>.json`` and ``<out>.md``; prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPES = {
    "nncf-defaults": {"preset": "performance", "range_estimator": "default"},
    "mixed-minmax": {"preset": "mixed", "range_estimator": "minmax"},
}


def export(run: Path, recipe: dict[str, str], out: Path) -> None:
    sets = [a for k, v in recipe.items() for a in ("--set", f"nncf.{k}={v}")]
    cmd = [sys.executable, "-m", "fopro_edge", "export", "--run", str(run), "--target", "openvino",
           "--out", str(out), "--no-repair", *sets]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO)
    if done.returncode not in (0, 5):  # 5: a gate failed, the export and its export.json are still written
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")


def row(run: Path, name: str, out: Path) -> dict:
    from fopro_edge.config import load_recipe
    from fopro_edge.deploy.pipeline import read_export

    recipe = load_recipe(run / "recipe.yaml", check_paths=False, saved=True)
    result = read_export(out / "export.json")
    step = next(s for s in result.steps if s.artifact is not None and s.artifact.precision == "int8")
    r = {"recipe": recipe.name, "seed": recipe.seed, "run": run.name, "nncf": name}
    for key, g in (("select", step.gate), ("confirm", step.confirmation)):
        r[key] = None if g is None else {
            "split": g.split, "images": g.num_images,
            "drop": g.reference.balanced_accuracy - g.candidate.balanced_accuracy,
            "mean_abs": g.parity.mean_abs_logit_diff, "max_abs": g.parity.max_abs_logit_diff,
            "flips": g.flips.total, "decisive": g.flips.total - g.flips.close_calls,
            "rare_rw": g.flips.rare_right_to_wrong}
    return r


def pooled(r: dict) -> dict:
    """Selection and confirmation together (disjoint images)."""
    parts = [p for p in (r["select"], r["confirm"]) if p]
    n = sum(p["images"] for p in parts)
    return {"images": n, "mean_abs": sum(p["mean_abs"] * p["images"] for p in parts) / n,
            "max_abs": max(p["max_abs"] for p in parts), "flips": sum(p["flips"] for p in parts),
            "decisive": sum(p["decisive"] for p in parts), "rare_rw": sum(p["rare_rw"] for p in parts),
            "confirm_drop": r["confirm"]["drop"] if r["confirm"] else None}


def markdown(rows: list[dict], machine: str, command: str) -> str:
    lines = ["# OpenVINO INT8 fidelity by NNCF recipe (PTQ, no repair)", "", f"Machine: {machine}", "",
             f"Command: `{command}`", "",
             "Per run: the FP32 student against its INT8 IR on the selection and confirmation images together. "
             "|Δlogit|: mean and largest absolute logit difference; flips: predictions changed (decisive: the FP32 "
             "top-2 probability gap was at least `check.close_call_gap`); rare r→w: rare images right → wrong; "
             "drop: balanced-accuracy drop on the confirmation split, points.", "",
             "| run | seed | NNCF recipe | mean |Δlogit| | max |Δlogit| | flips (decisive) | rare r→w | confirmation drop |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = pooled(r)
        drop = "–" if p["confirm_drop"] is None else f"{100 * p['confirm_drop']:+.2f}"
        lines.append(f"| {r['run']} | {r['seed']} | {r['nncf']} | {p['mean_abs']:.3f} | "
                     f"{p['max_abs']:.1f} | {p['flips']} ({p['decisive']}) | {p['rare_rw']} | {drop} |")
    lines += ["", "| recipe | NNCF recipe | mean |Δlogit| (mean over runs) | flips, all runs (decisive) | "
                  "rare r→w, all runs | confirmation drop mean / max |", "|---|---|---:|---:|---:|---:|"]
    for key in dict.fromkeys((r["recipe"], r["nncf"]) for r in rows):
        rs = [r for r in rows if (r["recipe"], r["nncf"]) == key]
        ps = [pooled(r) for r in rs]
        drops = [100 * p["confirm_drop"] for p in ps if p["confirm_drop"] is not None]
        lines.append(f"| {key[0]} | {key[1]} | {statistics.fmean(p['mean_abs'] for p in ps):.3f} | {sum(p['flips'] for p in ps)} "
                     f"({sum(p['decisive'] for p in ps)}) | {sum(p['rare_rw'] for p in ps)} | "
                     f"{statistics.fmean(drops):+.2f} / {max(drops):+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run directories written by fopro-edge run")
    ap.add_argument("--recipe", action="append", default=[],
                    help="NAME=key=value,key=value (nncf keys); default: " + ", ".join(RECIPES))
    ap.add_argument("--work", type=Path, default=Path("/tmp/fopro-int8-fidelity"), help="export folders")
    ap.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    ap.add_argument("--reuse", action="store_true", help="read exports already in --work instead of redoing them")
    args = ap.parse_args()

    from fopro_edge.envinfo import collect_env, machine_line

    machine = machine_line()
    recipes = dict(RECIPES)
    if args.recipe:
        recipes = {}
        for spec in args.recipe:
            name, _, kv = spec.partition("=")
            recipes[name] = dict(item.split("=", 1) for item in kv.split(",") if item)
    rows = []
    for run in args.runs:
        for name, recipe in recipes.items():
            out = args.work / run.name / name
            t0 = time.perf_counter()
            if not (args.reuse and (out / "export.json").is_file()):
                export(run, recipe, out)
            rows.append(row(run, name, out))
            print(f"{run.name} {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    command = " ".join(["python benchmarks/int8_fidelity.py", *(r.name for r in args.runs),
                        *(f"--recipe {spec}" for spec in args.recipe)])
    md = markdown(rows, machine, command)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(
            {"machine": machine, "env": collect_env(), "command": command, "recipes": recipes, "rows": rows}, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
