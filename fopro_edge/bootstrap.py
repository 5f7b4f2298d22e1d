"""Class-stratified bootstrap resampling of images, and its two-level variant over seeds and images.

A stratified resample draws, within each class, as many images as the class holds, with
replacement: every class keeps its support, so every per-class metric stays defined. A paired
comparison scores both sides on the same indices. The two-level variant first draws seeds with
replacement, then gives every drawn seed its own stratified resample of that seed's images.
numpy only (the gate runs on a device with nothing but the runtime).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

DRAWS_PER_CHUNK = 1 << 21  # resampled images held in memory at once


@dataclass(frozen=True)
class Strata:
    """Images sorted by class (stable): sorted position ``i`` holds image ``order[i]`` of class
    ``labels[i]``; class ``k`` fills positions ``starts[k]`` to ``starts[k] + support[k]``."""

    order: np.ndarray
    labels: np.ndarray
    support: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, labels: Sequence[int] | np.ndarray, num_classes: int = 0) -> Strata:
        y = np.asarray(labels, np.int64)
        order = np.argsort(y, kind="stable")
        support = np.bincount(y, minlength=num_classes)
        return cls(order, y[order], support, np.concatenate(([0], np.cumsum(support)[:-1])))

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def present(self) -> np.ndarray:
        """The classes with at least one image."""
        return np.flatnonzero(self.support)

    def sorted(self, values: Sequence | np.ndarray) -> np.ndarray:
        """Per-image ``values`` (original order) in sorted order."""
        return np.asarray(values)[self.order]

    def chunks(self, rng: np.random.Generator, resamples: int,
               chunk_draws: int = DRAWS_PER_CHUNK) -> Iterator[tuple[slice, np.ndarray]]:
        """``(rows, idx)`` blocks covering ``resamples`` stratified resamples: ``idx`` is
        ``len(rows) × size`` sorted positions, each row one resample (``labels[idx] == labels``).
        The draws do not depend on ``chunk_draws``."""
        n = self.size
        first, size = self.starts[self.labels], self.support[self.labels]
        step = max(1, chunk_draws // max(n, 1))
        for a in range(0, resamples, step):
            b = min(a + step, resamples)
            yield slice(a, b), first + rng.integers(0, size, size=(b - a, n))

    def resample(self, rng: np.random.Generator) -> np.ndarray:
        """One stratified resample as original image indices, ascending."""
        (_, idx), = self.chunks(rng, 1)
        return np.sort(self.order[idx[0]])


def seed_slots(rng: np.random.Generator, seeds: int, resamples: int) -> np.ndarray:
    """``resamples × seeds`` seed indices drawn with replacement: row ``b`` names the seeds of
    two-level resample ``b``."""
    return rng.integers(0, seeds, size=(resamples, seeds))


def slot_counts(slots: np.ndarray, seeds: int) -> np.ndarray:
    """How many image resamples each seed needs: one per slot that drew it."""
    return np.bincount(slots.ravel(), minlength=seeds)


def two_level_means(slots: np.ndarray, values: Sequence[np.ndarray | None]) -> np.ndarray:
    """Per two-level resample, the mean over its slots of ``values[seed]``, each slot taking its
    seed's next image resample (``values[j]`` holds at least :func:`slot_counts` ``[j]`` of them, in
    slot order). Seeds with ``None`` (a metric they do not define) are left out of the mean; NaN
    for a resample that drew none of the others."""
    flat = slots.ravel()
    rows = np.repeat(np.arange(len(slots)), slots.shape[1])
    total, count = np.zeros(len(slots)), np.zeros(len(slots))
    for j, v in enumerate(values):
        if v is None:
            continue
        mine = flat == j
        np.add.at(total, rows[mine], np.asarray(v, np.float64)[: int(mine.sum())])
        np.add.at(count, rows[mine], 1.0)
    return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``values`` (NaNs left out)."""
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)
