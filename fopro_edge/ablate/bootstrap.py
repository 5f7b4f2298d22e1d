"""Paired bootstraps of a metric difference between two methods: over seeds and images, and over images.

Per seed, both methods were evaluated on the same test images. An image resample draws, within each
class, as many images as the class holds, with replacement (:mod:`fopro_edge.bootstrap`), and scores
*both* methods' predictions on those same images. The two-level bootstrap redraws the seeds with
replacement and gives every drawn seed its own image resample; the difference (method minus
baseline) is the mean over the drawn seeds. The image-only bootstrap averages the difference over
the seeds as they are, so it ignores how much another seed would move it. The intervals are
percentile intervals. The metrics are computed from confusion matrices exactly as
:func:`fopro_edge.distill.metrics.classification_metrics` defines them (recall and F1 of the classes
present, averaged; group, tail and rare recall over their classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fopro_edge.ablate.stats import Interval
from fopro_edge.bootstrap import Strata, percentile_interval, seed_slots, slot_counts, two_level_means
from fopro_edge.data.longtail import tail_members

METRICS: tuple[str, ...] = ("balanced_accuracy", "macro_f1", "many_recall", "medium_recall", "few_recall", "tail_recall",
                            "rare_recall")
GROUPS: tuple[str, ...] = ("many", "medium", "few")
BOOTSTRAP_SEED = 0  # fixed, so a report is reproducible


@dataclass(frozen=True)
class ClassLayout:
    """Per class (index order): its long-tail group (or ``None``), whether it is rare and whether it
    is in the tail (``None``: the default tail, the medium and few groups)."""

    groups: tuple[str | None, ...]
    rare: tuple[bool, ...]
    tail: tuple[bool, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    @property
    def tail_mask(self) -> np.ndarray:
        return np.array(self.tail if self.tail is not None else tail_members(self.groups, ()), bool)


@dataclass(frozen=True)
class BootstrapIntervals:
    """Per metric: ``images``, over test images only (seed-to-seed variation ignored); ``seeds``, the
    two-level bootstrap over seeds and their images (``None`` with one seed)."""

    images: dict[str, Interval | None]
    seeds: dict[str, Interval | None]


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
    out["tail_recall"] = mean_over(recall, layout.tail_mask)
    out["rare_recall"] = mean_over(recall, np.array(layout.rare, bool))
    return out


def point_metrics(labels: np.ndarray, predictions: np.ndarray, layout: ClassLayout) -> dict[str, float | None]:
    """The metrics of one set of predictions (no resampling)."""
    k = layout.num_classes
    cm = np.bincount(np.asarray(labels) * k + np.asarray(predictions), minlength=k * k).reshape(k, k)
    return {name: None if v is None else float(v) for name, v in confusion_metrics(cm, layout).items()}


def _pair_differences(pair: Pair, resamples: int, seed: int) -> dict[str, np.ndarray | None]:
    """Method minus baseline per metric over ``resamples`` stratified resamples of the pair's images
    (the same images for both methods), from the stream of ``(seed, pair.seed)``."""
    k = pair.layout.num_classes
    strata = Strata.of(pair.labels, k)
    y = strata.labels
    base, new = (strata.sorted(np.asarray(p, np.int64)) for p in (pair.baseline, pair.method))
    out: dict[str, np.ndarray | None] = {m: np.empty(resamples) for m in METRICS}
    for rows, idx in strata.chunks(np.random.default_rng([seed, pair.seed]), resamples):
        r = len(idx)
        cell = (np.arange(r)[:, None] * k + y[None, :]) * k
        cms = [np.bincount((cell + p[idx]).ravel(), minlength=r * k * k).reshape(r, k, k) for p in (base, new)]
        before, after = confusion_metrics(cms[0], pair.layout), confusion_metrics(cms[1], pair.layout)
        for m in METRICS:
            diff = out[m]
            if before[m] is None or after[m] is None:
                out[m] = None
            elif diff is not None:
                diff[rows] = after[m] - before[m]
    return out


def paired_bootstrap(
    pairs: Sequence[Pair], *, resamples: int = 2000, confidence: float = 0.95, seed: int = BOOTSTRAP_SEED
) -> BootstrapIntervals:
    """Percentile intervals of the difference (method minus baseline) per metric, ``None`` for a
    metric no seed defines; seeds where a metric is undefined are left out of its mean.

    ``images``: per resample, every seed's test images redrawn within class, the difference averaged
    over the seeds. ``seeds`` (two or more seeds): per resample, the seeds redrawn with replacement,
    each drawn seed with its own redraw of its images, the difference averaged over the drawn seeds."""
    empty: dict[str, Interval | None] = {m: None for m in METRICS}
    if resamples <= 0 or not pairs:
        return BootstrapIntervals(empty, dict(empty))
    slots = seed_slots(np.random.default_rng([seed, *(p.seed for p in pairs)]), len(pairs), resamples)
    need = slot_counts(slots, len(pairs))
    diffs = [_pair_differences(p, max(resamples, int(n)), seed) for p, n in zip(pairs, need)]
    images, seeds = dict(empty), dict(empty)
    for m in METRICS:
        mine = [d[m] for d in diffs]
        defined = [v[:resamples] for v in mine if v is not None]
        if not defined:
            continue
        images[m] = Interval(*percentile_interval(np.mean(defined, axis=0), confidence))
        if len(pairs) > 1:
            seeds[m] = Interval(*percentile_interval(two_level_means(slots, mine), confidence))
    return BootstrapIntervals(images, seeds)
