"""Long-tail classification metrics: per-class table, group, tail and rare-class recall, confusion matrix.

A class absent from ``y_true`` has no defined recall (or F1): it is reported as ``None`` and left
out of every mean (balanced accuracy, macro F1, group and rare recall). Precision of a class that is
never predicted is 0 (``zero_division=0``). All numbers are plain Python types (JSON-ready).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from fopro_edge.data.longtail import tail_members

log = logging.getLogger(__name__)

GROUPS: tuple[str, ...] = ("many", "medium", "few")


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _labels(y: Any, num_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} holds class indices outside [0, {num_classes})")
    return arr


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    *,
    train_counts: Sequence[int] | Mapping[str, int],
    groups: Mapping[str, str],
    rare_classes: Sequence[str],
    tail_below: int | None = None,
) -> dict[str, Any]:
    """Metrics of integer predictions against integer labels (indices into ``class_names``).

    ``train_counts``: per class, aligned with ``class_names`` or keyed by name. ``groups``: class
    name -> ``many`` | ``medium`` | ``few``. ``tail_below``: the tail is the classes of fewer train
    images (default: the medium and few groups). Returns ``balanced_accuracy``, ``macro_f1``,
    ``accuracy``, ``per_class`` (name, precision, recall, f1, support, train_count, group, rare),
    ``group_recall``, ``tail_recall`` with its ``tail_classes``, ``rare_recall``,
    ``confusion_matrix`` (rows: true, columns: predicted, class order), ``num_samples``, ``num_classes``.
    """
    names = [str(c) for c in class_names]
    num_classes = len(names)
    if num_classes == 0:
        raise ValueError("class_names is empty")
    yt, yp = _labels(y_true, num_classes, "y_true"), _labels(y_pred, num_classes, "y_pred")
    if len(yt) != len(yp):
        raise ValueError(f"y_true and y_pred differ in length: {len(yt)} != {len(yp)}")
    if len(yt) == 0:
        raise ValueError("no samples to evaluate")

    if isinstance(train_counts, Mapping):
        missing = [c for c in names if c not in train_counts]
        if missing:
            raise ValueError(f"train_counts lacks classes: {missing}")
        counts = [int(train_counts[c]) for c in names]
    else:
        counts = [int(c) for c in train_counts]
        if len(counts) != num_classes:
            raise ValueError(f"train_counts has {len(counts)} entries for {num_classes} classes")
    bad_groups = {c: g for c, g in groups.items() if g not in GROUPS}
    if bad_groups:
        raise ValueError(f"unknown groups {bad_groups}; expected one of {GROUPS}")
    unknown_rare = [c for c in rare_classes if c not in names]
    if unknown_rare:
        raise ValueError(f"rare_classes not among the class names: {unknown_rare}")
    rare = set(rare_classes)

    labels = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        yt, yp, labels=labels, average=None, zero_division=0
    )
    cm = confusion_matrix(yt, yp, labels=labels)

    per_class: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        present = int(support[i]) > 0
        per_class.append(
            {
                "name": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]) if present else None,
                "f1": float(f1[i]) if present else None,
                "support": int(support[i]),
                "train_count": counts[i],
                "group": groups.get(name),
                "rare": name in rare,
            }
        )
    absent = [row["name"] for row in per_class if row["recall"] is None]
    if absent:
        log.debug("classes absent from the evaluated labels (recall undefined): %s", absent)

    recalls = [row["recall"] for row in per_class]
    tail = tail_members([row["group"] for row in per_class], counts, tail_below) or ()
    return {
        "num_samples": int(len(yt)),
        "num_classes": num_classes,
        "accuracy": float(accuracy_score(yt, yp)),
        # Mean recall over the classes present in y_true: sklearn's balanced_accuracy_score.
        "balanced_accuracy": _mean(recalls),
        "macro_f1": _mean([row["f1"] for row in per_class]),
        "group_recall": {g: _mean([r["recall"] for r in per_class if r["group"] == g]) for g in GROUPS},
        "tail_recall": _mean([r for r, t in zip(recalls, tail) if t]),
        "tail_classes": [n for n, t in zip(names, tail) if t],
        "rare_recall": _mean([r["recall"] for r in per_class if r["rare"]]),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }
