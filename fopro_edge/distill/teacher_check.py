"""A teacher check before distilling: what the frozen teacher's features know against what a student learns alone.

The teacher side is the class-balanced linear probe of :mod:`fopro_edge.distill.probe` on the
teacher's clean features (train -> val, several bootstrap resamples). The student side is a quick
``bsm`` run of the same recipe (``distill.method=bsm``, a few epochs) through the normal distill
code path, scored on the same val images at its last epoch (no selection on val, like the probe).
Both are compared on few-group recall (balanced accuracy when the val split has no few-group
class), with a paired bootstrap over the val images.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fopro_edge.config import Recipe, recipe_from_dict
from fopro_edge.distill.probe import (
    FeatureSplit,
    extract_features,
    paired_difference,
    probe_predictions,
    recall_summary,
    score_probes,
)
from fopro_edge.errors import ConfigError
from fopro_edge.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

PROBE_SEEDS = 5
STUDENT_METHOD = "bsm"


def student_recipe(recipe: Recipe, epochs: int) -> Recipe:
    """The quick student's recipe: the same data, student and optimiser, Balanced Softmax alone."""
    return recipe_from_dict(recipe.to_dict(), [f"distill.method={STUDENT_METHOD}", f"distill.epochs={epochs}"],
                            source="teacher check (student recipe)", check_paths=False)


def teacher_check(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    student_epochs: int = 3,
    seeds: int = PROBE_SEEDS,
    device: str | None = None,
) -> dict[str, Any]:
    """Probe the teacher, train the quick student in ``out_dir/student-bsm``, compare; writes ``probe.json`` and ``probe.md``."""
    from fopro_edge.data import ImageDataset, build_splits, build_transform, compute_longtail_stats
    from fopro_edge.distill.rundir import RunDir, prepare_run_dir
    from fopro_edge.distill.runtime import seed_everything, setup_runtime, teardown_runtime
    from fopro_edge.distill.trainer import distill

    out = Path(out_dir)
    s_recipe = student_recipe(recipe, student_epochs)
    student_dir = out / f"student-{STUDENT_METHOD}"
    if RunDir(student_dir).last_checkpoint.exists():
        raise ConfigError(f"--out: {out} already holds a teacher check (choose another --out)")
    run_dir = prepare_run_dir(student_dir, s_recipe.name, resume=False)  # also checks it is writable, before any work
    started = time.perf_counter()
    rt = setup_runtime(recipe.runtime, device)
    try:
        seed_everything(recipe.seed)
        d = recipe.data
        splits = build_splits(d, recipe.seed)
        stats = compute_longtail_stats(splits.train.labels, list(splits.class_names), d.groups)
        few = list(stats.group_ids("few"))
        from fopro_edge.models.teacher import teacher_input_size

        eval_tf = build_transform(teacher_input_size(recipe.teacher) or d.image_size, "none", training=False)
        train_set, val_set = ImageDataset(splits.train, eval_tf), ImageDataset(splits.val, eval_tf)
        from fopro_edge.models import build_teacher

        teacher = build_teacher(recipe.teacher).to(rt.device)
        kw = dict(device=rt.device, batch_size=d.eval_batch_size, num_workers=d.num_workers, autocast=rt.autocast)
        x_tr, y_tr = extract_features(teacher, train_set, **kw)
        x_va, y_va = extract_features(teacher, val_set, **kw)
        del teacher
        probe_preds, converged = probe_predictions([FeatureSplit(x_tr, x_va)], y_tr, list(range(seeds)))
    finally:
        teardown_runtime(rt)
    probe_seconds = time.perf_counter() - started

    log.info("teacher check: training a quick %s student for %d epochs in %s", STUDENT_METHOD, student_epochs, run_dir.path)
    result = distill(s_recipe, run_dir, device=device, progress=False)
    student_val = ImageDataset(splits.val, build_transform(d.image_size, "none", training=False))
    student_pred = _student_val_predictions(run_dir.last_checkpoint, student_val, recipe, stats.counts, rt.device)

    probe_scores = score_probes(probe_preds, y_va, few)[0]
    student_scores = recall_summary(y_va, student_pred, few)
    num_classes = len(splits.class_names)
    diff = paired_difference(probe_preds[0], np.broadcast_to(student_pred, probe_preds[0].shape), y_va, few, num_classes)
    metric = "few_recall" if diff["few_recall"] is not None else "balanced_accuracy"
    outcome = _outcome(diff[metric]["bootstrap_interval"] or diff[metric]["t_interval"])
    t = recipe.teacher
    report = {
        "recipe": recipe.name,
        "teacher": {"model": t.model, "weights": t.weights or ("timm hub" if t.pretrained else "random init")},
        "split": "val",
        "val_images": int(len(y_va)),
        "train_images": int(len(y_tr)),
        "few_classes": [splits.class_names[i] for i in few],
        "teacher_probe": {
            "what": "class-balanced logistic regression on standardised frozen teacher features of the clean train "
                    f"images ({seeds} stratified bootstrap resamples), scored on val",
            "seeds": seeds,
            "converged": converged,
            "seconds": round(probe_seconds, 1),
            **probe_scores,
        },
        "student": {
            "method": STUDENT_METHOD,
            "epochs": student_epochs,
            "recipe_epochs": recipe.distill.epochs,
            "run_dir": str(result.run_dir),
            "scored": "last epoch, on val",
            **student_scores,
        },
        "difference": {"what": "teacher probe - student", **diff},
        "compared_on": metric,
        "outcome": outcome,
    }
    report["verdict"] = verdict(report)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "probe.json", report)
    atomic_write_text(out / "probe.md", _markdown(report))
    log.info("teacher check: %s", report["verdict"])
    return report


@torch.no_grad()
def _student_val_predictions(checkpoint: Path, val_set, recipe: Recipe, train_counts, device: torch.device) -> np.ndarray:
    """The student's val predictions as the run's per-epoch validation reads them (fixed tau; none under ``auto``)."""
    from fopro_edge.data import CheckedDataLoader
    from fopro_edge.distill.checkpoint import load_student
    from fopro_edge.distill.logit_adjust import adjusted_predictions, train_prior

    student, _ = load_student(checkpoint, device)
    loader = CheckedDataLoader(val_set, batch_size=recipe.data.eval_batch_size, num_workers=recipe.data.num_workers)
    logits = [student(x.to(device)).float().cpu().numpy() for x, _, _ in loader]
    la = recipe.eval.logit_adjust
    return adjusted_predictions(np.concatenate(logits), train_prior(train_counts), 0.0 if la == "auto" else la)


def _outcome(interval: list[float]) -> str:
    lo, hi = interval
    return "teacher_behind" if hi < 0 else "teacher_ahead" if lo > 0 else "unclear"


def verdict(report: dict[str, Any]) -> str:
    """The plain-language reading of a teacher check."""
    metric = report["compared_on"]
    name = "few-group recall" if metric == "few_recall" else "balanced accuracy"
    d = report["difference"][metric]
    lo, hi = d["bootstrap_interval"] or d["t_interval"]
    head = (f"teacher probe {name} {report['teacher_probe'][metric]:.2f} vs quick {report['student']['method']} student "
            f"{report['student'][metric]:.2f} (difference {d['mean']:+.2f}, 95 % interval {lo:+.2f}..{hi:+.2f} over val images)")
    rare = "the rare classes" if metric == "few_recall" else "these classes"
    text = head + {
        "teacher_behind": f": the teacher knows less about {rare} than the student learns alone; distillation is unlikely to help",
        "teacher_ahead": f": the teacher's features separate {rare} better than the student learns alone; distillation has something to teach",
        "unclear": ": no clear difference on these val images; distillation may or may not help (compare a bsm and a fopro run)",
    }[report["outcome"]]
    s = report["student"]
    if report["outcome"] != "teacher_behind" and s["epochs"] < s["recipe_epochs"]:
        # a longer-trained student usually learns more: this reading, not "behind", may change with it
        text += (f" (the student trained {s['epochs']} of the recipe's {s['recipe_epochs']} epochs and may learn more: "
                 f"--student-epochs {s['recipe_epochs']} compares with a full run)")
    return text


def _markdown(r: dict[str, Any]) -> str:
    from fopro_edge.distill.report import markdown_table

    def ci(v: list[float] | None) -> str:
        return "–" if v is None else f"{v[0]:.3f}..{v[1]:.3f}"

    p, s, d = r["teacher_probe"], r["student"], r["difference"]
    rows = [
        [f"teacher probe (`{r['teacher']['model']}`, {p['seeds']} resamples)", p["balanced_accuracy"], ci(p["balanced_accuracy_t_interval"]),
         p["few_recall"], ci(p["few_recall_t_interval"])],
        [f"quick `{s['method']}` student ({s['epochs']} epochs, last epoch)", s["balanced_accuracy"], "–", s["few_recall"], "–"],
    ]
    diff_rows = [[k.replace("_", " "), v["mean"], ci(v["t_interval"]), ci(v["bootstrap_interval"])]
                 for k, v in d.items() if isinstance(v, dict)]
    return "\n".join([
        f"# Teacher check: {r['recipe']}\n",
        f"Val split, {r['val_images']} images; few-group classes: {', '.join(r['few_classes']) or 'none'}. "
        f"Teacher weights: {r['teacher']['weights']}.\n",
        markdown_table(["", "balanced accuracy", "95 % over resamples", "few-group recall", "95 % over resamples"], rows, float_format=".3f"),
        markdown_table(["teacher probe − student", "mean", "95 % over resamples", "95 % over val images"], diff_rows, float_format="+.3f"),
        f"**Verdict:** {r['verdict']}.\n",
    ])
