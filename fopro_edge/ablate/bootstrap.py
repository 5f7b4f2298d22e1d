"""Paired bootstrap over test images of a metric difference between two methods, averaged over seeds.

Per seed, both methods were evaluated on the same test images. A resample draws, within each class,
as many images as the class holds, with replacement (stratified: every class keeps its support, so
every metric stays defined), and scores *both* methods' predictions on those same images. The
difference (method minus baseline) is averaged over seeds resample by resample; the percentile
interval of that average is the interval. The metrics are computed from confusion matrices exactly
as :func:`fopro_edge.distill.metrics.classification_metrics` defines them (recall and F1 of the
classes present, averaged; group and rare recall over their classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fopro_edge.ablate.stats import Interval

METRICS: tuple[str, ...] = ("balanced_accuracy", "macro_f1", "many_recall", "medium_recall", "few_recall", "rare_recall")
GROUPS: tuple[str, ...] = ("many", "medium", "few")
BOOTSTRAP_SEED = 0  # fixed, so a report is reproducible
_DRAWS_PER_CHUNK = 1 << 21  # resampled images held in memory at once


@dataclass(frozen=True)
class ClassLayout:
    """Per class (index order): its long-tail group (or ``None``) and whether it is rare."""

    groups: tuple[str | None, ...]
    rare: tuple[bool, ...]

    @property
    def num_classes(self) -> int:
        return len(self.groups)


@dataclass(frozen=True)
class Pair:
    """One seed: the baseline's and the method's predictions of the same test images."""

    labels: np.ndarray
    baseline: np.ndarray
    method: np.ndarray
    layout: ClassLayout
    seed: int  # the run seed: keys the resampling stream, so every method meets the same draws


def confusion_metrics(cm: np.ndarray, layout: ClassLayout) -> dict[str, np.ndarray | None]:
    """Every metric of :data:`METRICS` from confusion matrices ``(..., K, K)`` (rows true, columns
    predicted); ``None`` for a metric without any class present (e.g. an empty group)."""
    cm = np.asarray(cm, np.float64)
    support, predicted, tp = cm.sum(-1), cm.sum(-2), np.diagonal(cm, axis1=-2, axis2=-1)
    present = support > 0
    safe = np.where(present, support, 1.0)
    recall = tp / safe
    f1 = 2.0 * tp / np.where(present, support + predicted, 1.0)  # = 2PR/(P+R); 0 when tp = 0

    def mean_over(values: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        m = present & mask
        count = m.sum(-1)
        if not np.any(count):
            return None
        return np.where(count > 0, (values * m).sum(-1) / np.maximum(count, 1), np.nan)

    everything = np.ones(layout.num_classes, bool)
    out = {"balanced_accuracy": mean_over(recall, everything), "macro_f1": mean_over(f1, everything)}
    for g in GROUPS:
        out[f"{g}_recall"] = mean_over(recall, np.array([x == g for x in layout.groups], bool))
    out["rare_recall"] = mean_over(recall, np.array(layout.rare, bool))
    return out


def point_metrics(labels: np.ndarray, predictions: np.ndarray, layout: ClassLayout) -> dict[str, float | None]:
    """The metrics of one set of predictions (no resampling)."""
    k = layout.num_classes
    cm = np.bincount(np.asarray(labels) * k + np.asarray(predictions), minlength=k * k).reshape(k, k)
    return {name: None if v is None else float(v) for name, v in confusion_metrics(cm, layout).items()}


def _pair_differences(pair: Pair, resamples: int, seed: int) -> dict[str, np.ndarray | None]:
    k = pair.layout.num_classes
    labels = np.asarray(pair.labels, np.int64)
    n = len(labels)
    order = np.argsort(labels, kind="stable")
    y, base, new = labels[order], np.asarray(pair.baseline, np.int64)[order], np.asarray(pair.method, np.int64)[order]
    support = np.bincount(y, minlength=k)
    starts = np.concatenate(([0], np.cumsum(support)[:-1]))
    first, size = starts[y], support[y]  # each image's class block in sorted order
    rng = np.random.default_rng([seed, pair.seed])
    out: dict[str, np.ndarray | None] = {m: np.empty(resamples) for m in METRICS}
    step = max(1, _DRAWS_PER_CHUNK // max(n, 1))
    for a in range(0, resamples, step):
        b = min(a + step, resamples)
        idx = first + rng.integers(0, size, size=(b - a, n))  # y[idx] == y: stratified
        row = (np.arange(b - a)[:, None] * k + y[None, :]) * k
        cms = [np.bincount((row + p[idx]).ravel(), minlength=(b - a) * k * k).reshape(b - a, k, k) for p in (base, new)]
        before, after = confusion_metrics(cms[0], pair.layout), confusion_metrics(cms[1], pair.layout)
        for m in METRICS:
            if before[m] is None or after[m] is None:
                out[m] = None
            elif out[m] is not None:
                out[m][a:b] = after[m] - before[m]
    return out


def paired_bootstrap(
    pairs: Sequence[Pair], *, resamples: int = 2000, confidence: float = 0.95, seed: int = BOOTSTRAP_SEED
) -> dict[str, Interval | None]:
    """Percentile interval of the seed-averaged difference (method minus baseline) per metric;
    ``None`` for a metric no seed defines. Seeds where a metric is undefined are left out of its mean."""
    if resamples <= 0 or not pairs:
        return {m: None for m in METRICS}
    total = {m: np.zeros(resamples) for m in METRICS}
    seeds = dict.fromkeys(METRICS, 0)
    for pair in pairs:
        for m, diff in _pair_differences(pair, resamples, seed).items():
            if diff is not None:
                total[m] += diff
                seeds[m] += 1
    tail = 50.0 * (1.0 - confidence)
    out: dict[str, Interval | None] = {}
    for m in METRICS:
        if not seeds[m]:
            out[m] = None
            continue
        lo, hi = np.percentile(total[m] / seeds[m], [tail, 100.0 - tail])
        out[m] = Interval(float(lo), float(hi))
    return out
