"""Class-balanced linear probes on frozen teacher features: extraction, fitting, paired comparison.

A probe is scikit-learn's ``LogisticRegression`` (lbfgs, ``class_weight="balanced"``, zero start,
run to convergence) on standardised features. Each probe seed fits it on a stratified bootstrap
resample of the train features; two feature sets compared (clean / prompted images) always share
the resample, so their difference is the features' and nothing else. Used by the explore stage's
diagnostic and by ``fopro-edge probe``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fopro_edge.bootstrap import Strata, percentile_interval

log = logging.getLogger(__name__)

MAX_ITER = 5000
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


@torch.no_grad()
def extract_features(
    teacher: nn.Module,
    dataset,
    *,
    device: torch.device | str = "cpu",
    prompt: nn.Module | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher features (float32, N×D) and labels of ``dataset`` in its order; ``prompt`` (frozen) in front when given."""
    from fopro_edge.data import CheckedDataLoader

    loader = CheckedDataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, labels = [], []
    for x, y, _ in loader:
        x = x.to(device)
        with autocast():
            f = teacher(prompt(x) if prompt is not None else x)
        feats.append(f.float().cpu().numpy())
        labels.append(np.asarray(y))
    return np.concatenate(feats), np.concatenate(labels).astype(np.int64)


def bootstrap_indices(y: np.ndarray, seed: int) -> np.ndarray:
    """A stratified bootstrap resample of ``range(len(y))``: every class keeps its count (drawn with replacement)."""
    return Strata.of(y).resample(np.random.default_rng(seed))


def fit_probe(x: np.ndarray, y: np.ndarray) -> tuple[Any, bool]:
    """The fitted probe (scaler + logistic regression) and whether lbfgs converged."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    model = make_pipeline(StandardScaler(), LogisticRegression(solver="lbfgs", class_weight="balanced", max_iter=MAX_ITER))
    # one BLAS thread: these fits are small, and threads spinning on a busy CPU made them 20x slower
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model, converged


def recall_summary(y: np.ndarray, pred: np.ndarray, few_ids: Sequence[int]) -> dict[str, float | None]:
    """Balanced accuracy (mean recall over the classes present in ``y``) and few-group recall (over the few ones present)."""
    present = np.unique(y)
    recall = {int(c): float(np.mean(pred[y == c] == c)) for c in present}
    few = [recall[c] for c in few_ids if c in recall]
    return {"balanced_accuracy": float(np.mean(list(recall.values()))), "few_recall": float(np.mean(few)) if few else None}


@dataclass(frozen=True)
class FeatureSplit:
    """Features of the train and val images (same images, same order, for every feature set compared)."""

    train: np.ndarray
    val: np.ndarray


def probe_predictions(
    features: Sequence[FeatureSplit], y_train: np.ndarray, seeds: Sequence[int]
) -> tuple[np.ndarray, bool]:
    """Val predictions, ``len(features) × len(seeds) × N_val``: per seed, one resample shared by every feature set."""
    preds = np.empty((len(features), len(seeds), len(features[0].val)), dtype=np.int64)
    converged = True
    for j, seed in enumerate(seeds):
        idx = bootstrap_indices(y_train, seed)
        for i, fs in enumerate(features):
            model, ok = fit_probe(fs.train[idx], y_train[idx])
            converged &= ok
            preds[i, j] = model.predict(fs.val)
    if not converged:
        log.warning("a probe did not converge in %d lbfgs iterations; its scores are of an unfinished fit", MAX_ITER)
    return preds, converged


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> list[float]:
    """Student-t interval of the mean of ``values`` (the mean itself twice when they do not vary)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    sem = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    if sem == 0.0:
        return [mean, mean]
    lo, hi = stats.t.interval(confidence, len(v) - 1, loc=mean, scale=sem)
    return [float(lo), float(hi)]


def paired_bootstrap_interval(
    y: np.ndarray,
    per_image_difference: np.ndarray,
    classes: Sequence[int],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[float] | None:
    """Percentile interval of a mean-over-classes recall difference, images resampled within their class.

    ``per_image_difference``: per val image, (correct under A) − (correct under B), averaged over
    probe seeds; both sides are resampled together (paired). ``classes``: the classes the metric
    averages over (all for balanced accuracy, the few group for few recall); absent ones are skipped.
    """
    strata = Strata.of(y)
    present = strata.present
    chosen = np.isin(present, list(classes))
    if not chosen.any():
        return None
    d = strata.sorted(np.asarray(per_image_difference, dtype=np.float64))
    stat = np.empty(resamples)
    for rows, idx in strata.chunks(np.random.default_rng(seed), resamples):
        per_class = np.add.reduceat(d[idx], strata.starts[present], axis=1) / strata.support[present]
        stat[rows] = per_class[:, chosen].mean(axis=1)
    return list(percentile_interval(stat, confidence))


def score_probes(preds: np.ndarray, y_val: np.ndarray, few_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per feature set: per-seed and mean balanced accuracy and few-group recall of its val predictions."""
    out = []
    for p in preds:
        per_seed = [recall_summary(y_val, ps, few_ids) for ps in p]
        row: dict[str, Any] = {}
        for key in ("balanced_accuracy", "few_recall"):
            vals = [s[key] for s in per_seed]
            row[key] = None if vals[0] is None else float(np.mean(vals))
            row[f"{key}_per_seed"] = vals
            row[f"{key}_t_interval"] = None if vals[0] is None else t_interval(vals)
        out.append(row)
    return out


def paired_difference(
    preds_a: np.ndarray, preds_b: np.ndarray, y_val: np.ndarray, few_ids: Sequence[int], num_classes: int
) -> dict[str, Any]:
    """A − B (seeds × N_val predictions each, seed-paired) in balanced accuracy and few-group recall:
    the mean over seeds, a t-interval over seeds and a paired bootstrap over the val images (seeds pooled)."""
    per_image = ((preds_a == y_val).astype(np.float64) - (preds_b == y_val)).mean(axis=0)
    out: dict[str, Any] = {}
    for key, classes in (("balanced_accuracy", range(num_classes)), ("few_recall", few_ids)):
        a = [recall_summary(y_val, p, few_ids)[key] for p in preds_a]
        b = [recall_summary(y_val, p, few_ids)[key] for p in preds_b]
        if a[0] is None:
            out[key] = None
            continue
        diffs = [x - z for x, z in zip(a, b)]
        out[key] = {
            "mean": float(np.mean(diffs)),
            "per_seed": diffs,
            "t_interval": t_interval(diffs),
            "bootstrap_interval": paired_bootstrap_interval(y_val, per_image, list(classes)),
        }
    return out


def compare_features(
    a: FeatureSplit,
    b: FeatureSplit,
    y_train: np.ndarray,
    y_val: np.ndarray,
    few_ids: Sequence[int],
    *,
    seeds: int,
    names: tuple[str, str] = ("a", "b"),
) -> dict[str, Any]:
    """Two probes per seed (one on ``a``, one on ``b``, the same train resample), scored on val, and their paired difference ``a − b``."""
    seed_list = list(range(seeds))
    preds, converged = probe_predictions([a, b], y_train, seed_list)
    scores = score_probes(preds, y_val, few_ids)
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    return {
        "seeds": seeds,
        "resample": "stratified bootstrap of the train images, shared by both probes",
        "train_images": int(len(y_train)),
        "val_images": int(len(y_val)),
        "converged": converged,
        names[0]: scores[0],
        names[1]: scores[1],
        "difference": paired_difference(preds[0], preds[1], y_val, few_ids, num_classes),
        "confidence": CONFIDENCE,
    }
