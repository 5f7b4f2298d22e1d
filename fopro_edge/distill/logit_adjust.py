"""Test-time logit adjustment (Menon et al., 2021): predict argmax(z - tau * log prior).

The prior is the train split's class frequencies; ``tau`` is fixed in the recipe or chosen on the
validation split's balanced accuracy from :data:`TAU_GRID`. The student's evaluation applies it,
and :func:`bake_into` adds it to the classifier's bias so every exported artifact returns the
adjusted logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TAU_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def train_prior(class_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Class frequencies of the train split; a class without train images counts as one image
    (log 0 would make it win every prediction)."""
    n = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    return n / n.sum()


def adjusted_predictions(logits: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """argmax over classes of ``logits - tau * log(prior)``."""
    z = np.asarray(logits, dtype=np.float64)
    if tau:
        z = z - tau * np.log(np.asarray(prior, dtype=np.float64))[None, :]
    return z.argmax(axis=1)


def choose_tau(
    y_true: np.ndarray, logits: np.ndarray, prior: np.ndarray, grid: Sequence[float] = TAU_GRID
) -> tuple[float, dict[float, float]]:
    """The grid's tau with the best balanced accuracy (the smallest one on a tie) and every tau's score."""
    from sklearn.metrics import balanced_accuracy_score

    scores = {float(t): float(balanced_accuracy_score(y_true, adjusted_predictions(logits, prior, t))) for t in grid}
    best = max(scores.values())
    return min(t for t, s in scores.items() if s == best), scores


def bake_into(student, tau: float, prior: Sequence[float] | np.ndarray):
    """``student`` (a copy) whose logits already include ``- tau * log(prior)``: the shift added to
    the classifier's bias, so every exported artifact gives the adjusted logits. ``tau == 0``:
    the student itself."""
    if not tau:
        return student
    import copy

    import torch

    head = student.backbone.get_classifier()
    if not isinstance(head, torch.nn.Linear) or head.bias is None:
        raise ValueError(f"logit adjustment needs a linear classifier with a bias, the student has {type(head).__name__}")
    adjusted = copy.deepcopy(student)
    shift = torch.as_tensor(-tau * np.log(np.asarray(prior, dtype=np.float64)), dtype=head.bias.dtype)
    with torch.no_grad():
        adjusted.backbone.get_classifier().bias.add_(shift)
    return adjusted
