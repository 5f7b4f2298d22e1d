"""Diagnostics of a finished bsm / ekd ladder (benchmarks/fair_test.sh): does the student learn the teacher?

For every `ekd` cell, with the student at its last epoch (`checkpoints/last.pt`, student + EKD heads):
- alignment: the EKD loss mean(2 - 2 cos(q, t)) of the student's projection q against the teacher's
  features t of the clean val images (at the teacher's size), beside the loss of the best constant
  prediction, the mean teacher feature of the train views (from the teacher cache): a student that
  does no better than the constant has learned nothing of the teacher's image-specific features;
- probes: a class-balanced logistic regression on the student's projected features of the clean
  train images, scored on val, against the same probe on the teacher's features (the ceiling of
  what the projection could carry);
and, over all cells, per-class test recall of each method against log train count.

    python benchmarks/fair_test_diagnostics.py runs/fair/main --out benchmarks/results/fair_test_fmnist_diagnostics
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _cells(ladder: Path, method: str) -> list[Path]:
    return sorted(p for p in ladder.glob(f"{method.replace('+', '_')}-seed*") if (p / "metrics" / "metrics.json").is_file())


def _recall_scores(y: np.ndarray, pred: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
    recall = {c: float(np.mean(pred[y == c] == c)) for c in np.unique(y)}
    out = {"balanced_accuracy": float(np.mean(list(recall.values())))}
    for name, ids in groups.items():
        out[f"{name}_recall"] = float(np.mean([recall[c] for c in ids if c in recall]))
    return out


def _distill_net(cell: Path):
    """The student with its EKD heads at the cell's last epoch (eval mode)."""
    from fopro_edge.config import recipe_from_dict
    from fopro_edge.distill.checkpoint import load_checkpoint
    from fopro_edge.distill.method import DistillNet
    from fopro_edge.models import build_student
    from fopro_edge.models.student import EKDHeads, feature_dim

    state = load_checkpoint(cell / "checkpoints" / "last.pt")
    recipe = recipe_from_dict(state["recipe"], check_paths=False, saved=True)
    student = build_student(type(recipe.student)(**{**recipe.student.__dict__, "weights": None}), len(state["class_names"]))
    s_dim = feature_dim(student, recipe.data.image_size)
    t_dim = state["net"]["heads.projector.3.weight"].shape[0]
    net = DistillNet(student, EKDHeads(s_dim, recipe.student.projector_hidden or s_dim, t_dim, len(state["class_names"])))
    net.load_state_dict(state["net"])
    return net.eval()


@torch.no_grad()
def _projection(net, dataset) -> np.ndarray:
    from fopro_edge.data import CheckedDataLoader

    out = []
    for x, _, _ in CheckedDataLoader(dataset, batch_size=256, shuffle=False):
        out.append(net(x)[1].float().numpy())
    return np.concatenate(out)


def _align(q: np.ndarray, t: np.ndarray) -> float:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    return float(np.mean(2 - 2 * (qn * tn).sum(1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ladder", type=Path)
    p.add_argument("--baseline", default="bsm")
    p.add_argument("--method", default="ekd")
    p.add_argument("--out", type=Path, required=True, help="path without suffix: .json and .md are written")
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    from fopro_edge.config import load_recipe
    from fopro_edge.data import ImageDataset, build_splits, build_transform, compute_longtail_stats
    from fopro_edge.data.longtail import tail_members
    from fopro_edge.distill.probe import extract_features, fit_probe
    from fopro_edge.envinfo import collect_env
    from fopro_edge.models import build_teacher

    torch.set_num_threads(2)
    cells = _cells(a.ladder, a.method)
    if not cells:
        raise SystemExit(f"{a.ladder}: no finished {a.method} cell")
    recipe = load_recipe(cells[0] / "recipe.yaml", check_paths=False)
    splits = build_splits(recipe.data, recipe.seed)
    stats = compute_longtail_stats(splits.train.labels, list(splits.class_names), recipe.data.groups)
    groups = {"few": list(stats.group_ids("few")),
              "tail": [i for i, t in enumerate(tail_members(list(stats.groups), list(stats.counts),
                                                             recipe.data.groups.tail_below)) if t]}
    teacher = build_teacher(recipe.teacher).eval()
    t_tf = build_transform(teacher.image_size, "none", training=False)
    s_tf = build_transform(recipe.data.image_size, "none", training=False)
    started = time.perf_counter()
    t_train, y_train = extract_features(teacher, ImageDataset(splits.train, t_tf), batch_size=64)
    t_val, y_val = extract_features(teacher, ImageDataset(splits.val, t_tf), batch_size=64)
    teacher_seconds = time.perf_counter() - started
    teacher_probe, _ = fit_probe(t_train, y_train)
    teacher_scores = _recall_scores(y_val, teacher_probe.predict(t_val), groups)

    rows = []
    for cell in cells:
        metrics = json.loads((cell / "metrics" / "metrics.json").read_text())
        feature_dir = next(Path(d) for d in metrics["views"]["fixed_views"]["dirs"] if Path(d).name.startswith("features-"))
        cached = np.load(feature_dir / "data.npy").astype(np.float32)
        mean_t = cached.reshape(-1, cached.shape[-1]).mean(0, keepdims=True)
        net = _distill_net(cell)
        q_train, q_val = _projection(net, ImageDataset(splits.train, s_tf)), _projection(net, ImageDataset(splits.val, s_tf))
        probe, _ = fit_probe(q_train, y_train)
        history = [json.loads(line) for line in (cell / "history.jsonl").read_text().splitlines() if line.strip()]
        rows.append({
            "cell": cell.name,
            "align_val_student": _align(q_val, t_val),
            "align_val_mean_teacher_feature": _align(np.broadcast_to(mean_t, t_val.shape), t_val),
            "align_train_last_epoch": history[-1]["train"].get("align"),
            "projection_probe_val": _recall_scores(y_val, probe.predict(q_val), groups),
        })
        print(json.dumps(rows[-1]), flush=True)

    names = list(splits.class_names)
    recalls = {m: np.asarray([[c["recall"] for c in json.loads((cell / "metrics" / "metrics.json").read_text())["per_class"]]
                              for cell in _cells(a.ladder, m)]) for m in (a.baseline, a.method)}
    per_class_rows = []
    for i, name in enumerate(names):
        row = {"class": name, "train_count": int(stats.counts[i]), "log_train_count": float(np.log(stats.counts[i]))}
        row |= {f"{m}_recall_mean": float(r[:, i].mean()) for m, r in recalls.items()}
        row["difference"] = row[f"{a.method}_recall_mean"] - row[f"{a.baseline}_recall_mean"]
        per_class_rows.append(row)
    from scipy import stats as sps

    diffs = [r["difference"] for r in per_class_rows]
    rho, pval = sps.spearmanr([r["log_train_count"] for r in per_class_rows], diffs)
    report = {
        "command": "python " + " ".join(sys.argv),
        "ladder": str(a.ladder),
        "teacher": {"model": recipe.teacher.model, "image_size": teacher.image_size, "probe_val": teacher_scores,
                    "feature_seconds": round(teacher_seconds, 1)},
        "student": {"model": recipe.student.model, "image_size": recipe.data.image_size},
        "groups": {k: [names[i] for i in v] for k, v in groups.items()},
        "cells": rows,
        "per_class": per_class_rows,
        "spearman_log_count_vs_difference": {"rho": float(rho), "p": float(pval)},
        "env": collect_env(),
        "date": time.strftime("%Y-%m-%d"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    a.out.with_suffix(".md").write_text(_markdown(report, a.baseline, a.method))
    print(a.out.with_suffix(".md").read_text())


def _markdown(r: dict, base: str, method: str) -> str:
    lines = [f"# Does the `{method}` student learn the teacher? ({r['ladder']})\n", f"`{r['command']}`\n",
             f"Teacher `{r['teacher']['model']}` at {r['teacher']['image_size']} px, student `{r['student']['model']}` at "
             f"{r['student']['image_size']} px; val split (50 images per class); the student at its last epoch.\n",
             "## Alignment and probes, per seed\n",
             "| cell | align (val): student | align (val): mean teacher feature | align (train, last epoch) | "
             "probe on the student's projection: bal. acc / few / tail | teacher probe: bal. acc / few / tail |",
             "|---|---:|---:|---:|---|---|"]
    t = r["teacher"]["probe_val"]
    for c in r["cells"]:
        pv = c["projection_probe_val"]
        lines.append(f"| `{c['cell']}` | {c['align_val_student']:.3f} | {c['align_val_mean_teacher_feature']:.3f} | "
                     f"{c['align_train_last_epoch']:.3f} | {pv['balanced_accuracy']:.3f} / {pv['few_recall']:.3f} / "
                     f"{pv['tail_recall']:.3f} | {t['balanced_accuracy']:.3f} / {t['few_recall']:.3f} / {t['tail_recall']:.3f} |")
    lines += ["", f"## Per-class test recall, mean over seeds, against log train count\n",
              f"| class | train images | `{base}` | `{method}` | difference |", "|---|---:|---:|---:|---:|"]
    for c in sorted(r["per_class"], key=lambda c: -c["train_count"]):
        lines.append(f"| {c['class']} | {c['train_count']} | {c[f'{base}_recall_mean']:.3f} | {c[f'{method}_recall_mean']:.3f} | "
                     f"{c['difference']:+.3f} |")
    s = r["spearman_log_count_vs_difference"]
    lines += ["", f"Spearman correlation of log train count with the difference: ρ = {s['rho']:+.2f} (p = {s['p']:.2f}, "
              f"{len(r['per_class'])} classes).\n"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
