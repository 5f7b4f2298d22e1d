"""How much can a teacher teach on a dataset? A linear probe on its frozen features.

Extracts the teacher's pooled features of the train and test splits of a recipe (clean images,
no augmentation), fits a class-balanced logistic regression on train, and reports balanced
accuracy and few-group recall on test, at one or more input sizes and recipe seeds. A teacher whose
probe scores below what the student reaches alone has little to distil. The features and the
probe are those of ``fopro_edge.distill.probe``; ``fopro-edge probe RECIPE`` runs the same check on
val against a quick student, with intervals.

    python benchmarks/teacher_probe.py recipes/demo_digits.yaml --sizes 64,224 --out benchmarks/results/teacher_probe_demo.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fopro_edge.config import load_recipe
    from fopro_edge.data import ImageDataset, build_splits, build_transform, compute_longtail_stats
    from fopro_edge.distill.probe import extract_features, fit_probe, recall_summary
    from fopro_edge.envinfo import collect_env
    from fopro_edge.models import build_teacher

    rows = []
    for seed in map(int, a.seeds.split(",")):
        recipe = load_recipe(a.recipe, [*a.overrides, f"seed={seed}"])
        torch.manual_seed(seed)
        splits = build_splits(recipe.data, recipe.seed)
        stats = compute_longtail_stats(splits.train.labels, list(splits.class_names), recipe.data.groups)
        teacher = build_teacher(recipe.teacher)
        for size in map(int, a.sizes.split(",")):
            tf = build_transform(size, "none", training=False)
            teacher.image_size = size  # rendered from the source images at this size
            xtr, ytr = extract_features(teacher, ImageDataset(splits.train, tf))
            xte, yte = extract_features(teacher, ImageDataset(splits.test, tf))
            model, _ = fit_probe(xtr, ytr)  # the whole train split (fopro-edge probe resamples it)
            row = {"seed": seed, "image_size": size, **recall_summary(yte, model.predict(xte), stats.group_ids("few"))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for size in map(int, a.sizes.split(",")):
        mine = [r for r in rows if r["image_size"] == size]
        summary[str(size)] = {k: {"mean": float(np.mean([r[k] for r in mine])), "std": float(np.std([r[k] for r in mine], ddof=1)) if len(mine) > 1 else 0.0}
                              for k in ("balanced_accuracy", "few_recall")}
    print(json.dumps(summary))
    if a.out:
        report = {"recipe": a.recipe, "teacher": recipe.teacher.model, "command": "python " + " ".join(sys.argv),
                  "what": "class-balanced logistic regression on frozen teacher features, test split",
                  "rows": rows, "summary": summary, "env": collect_env(), "date": time.strftime("%Y-%m-%d")}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
