"""Method ablation on a recipe: ce, bsm, ekd, ekd+fpg, fopro over several seeds.

Each cell is a full `fopro-edge distill` run (best checkpoint by validation balanced accuracy,
evaluated on the test split). Reports mean and standard deviation over seeds.

    python benchmarks/ablation.py recipes/demo_digits.yaml --seeds 0,1,2 --out benchmarks/results/ablation_demo
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("ce", "bsm", "ekd", "ekd+fpg", "fopro")
COLUMNS = ("balanced_accuracy", "few_recall", "rare_recall", "macro_f1", "accuracy")


def run_cell(recipe: str, method: str, seed: int, runs: Path, extra: list[str]) -> dict:
    out = runs / f"{method.replace('+', '_')}-seed{seed}"
    metrics = out / "metrics" / "metrics.json"
    if not metrics.is_file():
        cmd = [sys.executable, "-m", "fopro_edge", "-q", "distill", recipe, "--out", str(out), "--no-progress",
               "--set", f"distill.method={method}", "--set", f"seed={seed}"]
        for item in extra:
            cmd += ["--set", item]
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    m = json.loads(metrics.read_text())
    wall = out / "wall_seconds.txt"
    return {
        "method": method,
        "seed": seed,
        "balanced_accuracy": m["balanced_accuracy"],
        "few_recall": m["group_recall"].get("few"),
        "rare_recall": m["rare_recall"],
        "macro_f1": m["macro_f1"],
        "accuracy": m["accuracy"],
        "best_epoch": m.get("best_epoch"),
        "explore": m.get("explore"),
        "wall_seconds": float(wall.read_text()) if wall.is_file() else None,
    }


def summarise(cells: list[dict]) -> list[dict]:
    rows = []
    for method in METHODS:
        mine = [c for c in cells if c["method"] == method]
        if not mine:
            continue
        row = {"method": method, "seeds": len(mine)}
        for col in COLUMNS:
            vals = [c[col] for c in mine if c[col] is not None]
            row[col] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0} if vals else None
        rows.append(row)
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| method | seeds | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[c]['mean']:.3f} ± {r[c]['std']:.3f}" if r[c] else "n/a" for c in COLUMNS]
        lines.append(f"| {r['method']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    p.add_argument("--set", dest="extra", action="append", default=[], help="extra recipe overrides for every cell")
    p.add_argument("--out", type=Path, required=True, help="output stem: writes OUT.json and OUT.md")
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fopro_edge.envinfo import collect_env

    cells = []
    for seed in map(int, a.seeds.split(",")):
        for method in a.methods.split(","):
            cells.append(run_cell(a.recipe, method, seed, a.runs, a.extra))
            print(json.dumps(cells[-1]), flush=True)
    rows = summarise(cells)
    command = "python " + " ".join(sys.argv)
    report = {"recipe": a.recipe, "command": command, "overrides": a.extra, "cells": cells, "summary": rows,
              "env": collect_env(), "date": time.strftime("%Y-%m-%d")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    header = f"Ablation on `{a.recipe}` (test split, mean ± std over seeds {a.seeds}); command: `{command}`"
    a.out.with_suffix(".md").write_text(markdown(rows, header))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
