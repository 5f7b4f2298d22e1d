"""Class-stratified calibration subsets for INT8 quantisation: every class, rare ones certainly."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from fopro_edge.errors import DataError

logger = logging.getLogger(__name__)


def stratified_calibration_indices(
    labels: Sequence[int] | np.ndarray,
    size: int,
    rare_class_ids: Sequence[int],
    seed: int,
    *,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Sorted indices of a ``size``-image calibration subset of ``labels``.

    Each present class first gets an equal share (``size // classes``, or all its images if it has
    fewer); the slots left are filled from the remaining images in proportion to what each class
    has left. When ``size`` is below the number of classes, the rare classes get one image each
    first, then the other classes one each in seeded order. Deterministic given ``seed``;
    ``size >= len(labels)`` returns every index.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(y)
    if size < 1:
        raise DataError(f"calibration size must be >= 1, got {size}")

    def name(k: int) -> str:
        return f"'{class_names[k]}'" if class_names is not None and 0 <= k < len(class_names) else f"{k}"

    counts = np.bincount(y, minlength=max([int(k) + 1 for k in rare_class_ids] + [1]))
    rare = list(dict.fromkeys(int(k) for k in rare_class_ids))
    absent = [k for k in rare if counts[k] == 0]
    if absent:
        raise DataError(
            f"calibration: the image pool has no image of rare class(es) {', '.join(name(k) for k in absent)} "
            "(use a pool/split that contains them)"
        )
    if size >= n:
        return np.arange(n, dtype=np.int64)

    rng = np.random.default_rng(seed)
    classes = np.flatnonzero(counts > 0)
    perms = {int(c): rng.permutation(np.flatnonzero(y == c)) for c in classes}
    take = np.zeros(len(counts), dtype=np.int64)
    if size < len(classes):
        if size < len(rare):
            raise DataError(
                f"calibration: size {size} is smaller than the number of rare classes ({len(rare)}); raise the size"
            )
        others = [int(c) for c in rng.permutation(classes) if int(c) not in rare]
        for c in (rare + others)[:size]:
            take[c] = 1
        logger.warning(
            "calibration size %d < %d classes: %d class(es) left out", size, len(classes), len(classes) - size
        )
    else:
        share = size // len(classes)
        take[classes] = np.minimum(counts[classes], share)
        left = size - int(take.sum())
        remaining = counts - take
        if left > 0 and remaining.sum() > 0:
            exact = left * remaining / remaining.sum()
            extra = np.floor(exact).astype(np.int64)
            order = np.argsort(-(exact - extra), kind="stable")  # largest remainders first
            for c in order[: left - int(extra.sum())]:
                extra[c] += 1
            take += np.minimum(extra, remaining)
    idx = np.concatenate([perms[int(c)][: take[c]] for c in classes])
    return np.sort(idx).astype(np.int64)
