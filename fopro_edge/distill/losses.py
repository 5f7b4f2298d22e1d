"""Losses of FoPro-KD. Balanced Softmax and the EKD alignment follow the released EKD code."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


SAMPLER_PRIORS = {"instance": "train counts", "sqrt": "proportional to sqrt(train counts)", "balanced": "uniform"}


def sampler_prior(class_counts: np.ndarray | list[int], sampler: str) -> np.ndarray:
    """The class prior of the batches ``sampler`` draws from a train split with ``class_counts``.

    ``instance``: n_c / N; ``sqrt``: proportional to sqrt(n_c); ``balanced``: uniform. Classes
    without train images are never drawn (prior 0).
    """
    if sampler not in SAMPLER_PRIORS:
        raise ValueError(f"unknown sampler {sampler!r} (one of {', '.join(SAMPLER_PRIORS)})")
    n = np.asarray(class_counts, dtype=np.float64)
    w = {"instance": n, "sqrt": np.sqrt(n), "balanced": (n > 0).astype(np.float64)}[sampler]
    return w / w.sum()


class BalancedSoftmax(nn.Module):
    """Cross-entropy on logits shifted by log class priors (training only).

    ``class_counts``: counts, or any unnormalised prior (e.g. :func:`sampler_prior`). With
    uniform priors the shift is a constant and the loss equals plain cross-entropy.
    """

    def __init__(self, class_counts: np.ndarray | list[int]) -> None:
        super().__init__()
        counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64))
        prior = counts / counts.sum()
        self.register_buffer("log_prior", torch.log(prior + 1e-12).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.log_prior, target)


def alignment_loss(
    student_proj: torch.Tensor, teacher_feat: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """EKD feature alignment: mean over the batch of 2 - 2 cos(q, t), in float32.

    ``weight``: one factor per sample (the released class-balanced variant weights by the label's class).
    """
    q = F.normalize(student_proj.float(), dim=-1)
    t = F.normalize(teacher_feat.float(), dim=-1)
    per_sample = 2 - 2 * (q * t).sum(dim=-1)
    return (per_sample if weight is None else per_sample * weight.float()).mean()


def effective_number_weights(class_counts: np.ndarray | list[int], beta: float = 0.9999) -> np.ndarray:
    """Class-balanced weights (Cui et al., 2019) as the released code computes them:
    (1 - beta) / (1 - beta^n_c), scaled to sum to the number of classes with train images (others 0)."""
    n = np.asarray(class_counts, dtype=np.float64)
    w = np.zeros_like(n)
    present = n > 0
    w[present] = (1.0 - beta) / (1.0 - np.power(beta, n[present]))
    return w / w.sum() * present.sum()
