"""Test-time logit adjustment on and off, for finished runs (e.g. the cells of an ablation).

Per run: the best student's validation logits choose tau from the grid of ``eval.logit_adjust:
auto`` (``fopro_edge.distill.logit_adjust``), and the saved test logits are scored with tau 0 and
with the chosen tau. Per method: mean ± sd over seeds with and without adjustment, the paired
difference "on − off" with a 95 % interval over seeds (paired t) and over test images (paired
bootstrap, stratified by class), and each method against the baseline with adjustment on for both.

    python benchmarks/logit_adjust.py runs/fmnist_ablation --baseline bsm --out benchmarks/results/logit_adjust_fmnist
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

METRICS = ("balanced_accuracy", "few_recall", "medium_recall", "many_recall")


def cell_result(path: Path) -> dict:
    """tau chosen on val, and the test predictions without and with it, of one finished run."""
    from fopro_edge.ablate.results import read_metrics
    from fopro_edge.config import recipe_from_dict
    from fopro_edge.data import build_splits
    from fopro_edge.deploy.calibration import CheckImages
    from fopro_edge.deploy.runners import TorchRunner, predict
    from fopro_edge.distill.checkpoint import load_student
    from fopro_edge.distill.logit_adjust import adjusted_predictions, choose_tau, train_prior
    from fopro_edge.distill.rundir import RunDir

    rd = RunDir(path)
    metrics = read_metrics(rd)
    student, info = load_student(rd.best_checkpoint)
    if (info.logit_adjust or {}).get("tau"):
        raise SystemExit(f"{path}: trained with logit adjustment already (tau {info.logit_adjust['tau']}); give runs without it")
    recipe = recipe_from_dict(info.recipe, source=str(rd.best_checkpoint), check_paths=False, saved=True)
    splits = build_splits(recipe.data, recipe.seed)
    prior = train_prior(json.loads(rd.longtail.read_text())["counts"])
    val = CheckImages(splits.val, info.image_size, batch_size=256)
    with TorchRunner(student, threads=recipe.runtime.threads) as runner:
        z_val = predict(runner, val.batches(), 256)
    tau, val_scores = choose_tau(val.labels, z_val, prior)
    saved = np.load(rd.test_predictions)
    return {
        "run": path.name, "method": metrics.method, "seed": recipe.seed, "tau": tau,
        "val_balanced_accuracy": {f"{t:g}": s for t, s in val_scores.items()},
        "layout": metrics.layout(), "ids": saved["ids"], "labels": saved["labels"],
        "off": adjusted_predictions(saved["logits"], prior, 0.0),
        "on": adjusted_predictions(saved["logits"], prior, tau),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories, or folders of them (an ablation's --out)")
    p.add_argument("--baseline", default="bsm")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fopro_edge.ablate.bootstrap import Pair, paired_bootstrap, point_metrics
    from fopro_edge.ablate.report import interval_text
    from fopro_edge.ablate.stats import paired_t_interval, spread
    from fopro_edge.envinfo import machine_line

    dirs = [d for r in a.runs for d in ([r] if (r / "metrics" / "metrics.json").is_file()
                                         else sorted(x for x in r.iterdir() if (x / "metrics" / "metrics.json").is_file()))]
    if not dirs:
        raise SystemExit("no finished run (metrics/metrics.json) under " + ", ".join(map(str, a.runs)))
    cells = []
    for d in dirs:
        c = cell_result(d)
        c["scores"] = {k: point_metrics(c["labels"], c[k], c["layout"]) for k in ("off", "on")}
        print(f"{c['run']}: tau {c['tau']:g}, few recall {c['scores']['off']['few_recall']:.3f} -> {c['scores']['on']['few_recall']:.3f}",
              flush=True)
        cells.append(c)
    methods = list(dict.fromkeys(c["method"] for c in cells))
    by = {(c["method"], c["seed"]): c for c in cells}

    def compare(pairs: list[tuple[dict, str, dict, str]]) -> dict:
        """Mean paired difference (second minus first), its t-interval over seeds and bootstrap over images."""
        for x, _, y, _ in pairs:
            if not np.array_equal(x["ids"], y["ids"]):
                raise SystemExit(f"{x['run']} and {y['run']} scored different test images; compare runs of one split")
        boot = paired_bootstrap([Pair(x["labels"], x[kx], y[ky], x["layout"], x["seed"]) for x, kx, y, ky in pairs],
                                resamples=a.resamples).images
        out = {}
        for m in METRICS:
            diffs = [y["scores"][ky][m] - x["scores"][kx][m] for x, kx, y, ky in pairs]
            t = paired_t_interval(diffs).interval
            out[m] = {"difference": float(np.mean(diffs)), "seeds": len(diffs),
                      "t_interval": None if t is None else [t.low, t.high],
                      "bootstrap": None if boot[m] is None else [boot[m].low, boot[m].high], "_t": t, "_b": boot[m]}
        return out

    lines = ["# Test-time logit adjustment on and off", "",
             f"`python benchmarks/logit_adjust.py {' '.join(map(str, a.runs))} --baseline {a.baseline} --out {a.out}`", "",
             f"{len(cells)} finished runs, each trained without adjustment. tau is chosen per run on the validation "
             "split's balanced accuracy (the grid of `eval.logit_adjust: auto`); the saved test logits are scored "
             f"without it and with it. {machine_line()}.", "",
             "## Per method: mean ± sd over seeds (test split)", "",
             "| method | seeds | tau chosen | balanced accuracy off | on | few recall off | on | many recall off | on |",
             "|---|---:|---|---|---|---|---|---|---|"]
    summary: dict = {"methods": {}, "against_baseline": {}}
    for m in methods:
        mine = [c for c in cells if c["method"] == m]

        def ms(key: str, metric: str) -> str:
            s = spread([c["scores"][key][metric] for c in mine])
            return f"{s.mean:.3f} ± {s.sd:.3f}" if s.sd is not None else f"{s.mean:.3f}"

        taus = ", ".join(f"{c['tau']:g}" for c in sorted(mine, key=lambda c: c["seed"]))
        lines.append(f"| `{m}` | {len(mine)} | {taus} | "
                     f"{ms('off', 'balanced_accuracy')} | {ms('on', 'balanced_accuracy')} | {ms('off', 'few_recall')} | "
                     f"{ms('on', 'few_recall')} | {ms('off', 'many_recall')} | {ms('on', 'many_recall')} |")
        summary["methods"][m] = {"on_minus_off": compare([(c, "off", c, "on") for c in sorted(mine, key=lambda c: c["seed"])])}
    lines += ["", "## Adjustment on − off, per method (95 % intervals: over seeds | over test images only; **bold**: the "
              "interval over seeds excludes 0; the one over test images ignores seed-to-seed variation and is never bold)", "",
              "| method | metric | on − off | over seeds | over test images |", "|---|---|---:|---|---|"]
    for m in methods:
        for metric, d in summary["methods"][m]["on_minus_off"].items():
            lines.append(f"| `{m}` | {metric} | {d['difference']:+.3f} | {interval_text(d['_t'], bold=True)} | {interval_text(d['_b'])} |")
    lines += ["", f"## Against `{a.baseline}`, adjustment on for both (method − {a.baseline})", "",
              "| method | metric | difference | seeds | over seeds | over test images |", "|---|---|---:|---:|---|---|"]
    for m in methods:
        if m == a.baseline:
            continue
        seeds = sorted(s for (mm, s) in by if mm == m and (a.baseline, s) in by)
        if not seeds:
            continue
        d_all = compare([(by[(a.baseline, s)], "on", by[(m, s)], "on") for s in seeds])
        summary["against_baseline"][m] = d_all
        for metric, d in d_all.items():
            lines.append(f"| `{m}` | {metric} | {d['difference']:+.3f} | {d['seeds']} | {interval_text(d['_t'], bold=True)} | "
                         f"{interval_text(d['_b'])} |")
    lines += ["", "## Runs", "", "| run | method | seed | tau | val bal. acc. at tau 0 → chosen | test few recall off → on |",
              "|---|---|---:|---:|---|---|"]
    for c in cells:
        v, tau = c["val_balanced_accuracy"], f"{c['tau']:g}"
        lines.append(f"| `{c['run']}` | `{c['method']}` | {c['seed']} | {tau} | {v['0']:.3f} → {v[tau]:.3f} | "
                     f"{c['scores']['off']['few_recall']:.3f} → {c['scores']['on']['few_recall']:.3f} |")

    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if not k.startswith("_")}
        return obj

    a.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.out}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    runs = [{k: c[k] for k in ("run", "method", "seed", "tau", "val_balanced_accuracy", "scores")} for c in cells]
    Path(f"{a.out}.json").write_text(json.dumps({"command": re.sub(r"\s+", " ", " ".join(sys.argv)), "machine": machine_line(),
                                                 "runs": runs, **clean(summary)}, indent=1) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
