"""Torch datasets over an ImageList, and class-rebalancing samplers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from fopro_edge.data.images import ImageList

SAMPLERS = ("instance", "balanced", "sqrt")


class ImageDataset(Dataset):
    """Yields ``(image_tensor, label, index)``; ``index`` is the position in ``images``."""

    def __init__(self, images: ImageList, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.transform(self.images.load(i)), int(self.images.labels[i]), int(i)


def build_sampler(
    labels: Sequence[int] | np.ndarray, kind: str, num_samples: int | None = None, seed: int = 0
) -> Sampler | None:
    """``None`` for "instance" (plain shuffling); otherwise a seeded WeightedRandomSampler with
    per-image weight 1/n_c ("balanced") or 1/sqrt(n_c) ("sqrt"), drawing ``num_samples``
    (default: the number of labels) with replacement."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r} (one of {', '.join(SAMPLERS)})")
    if kind == "instance":
        return None
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) == 0:
        raise ValueError("cannot build a sampler over no labels")
    counts = np.bincount(y).astype(np.float64)
    per_class = np.zeros_like(counts)
    present = counts > 0
    per_class[present] = 1.0 / (counts[present] if kind == "balanced" else np.sqrt(counts[present]))
    weights = torch.as_tensor(per_class[y], dtype=torch.double)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(weights, num_samples or len(y), replacement=True, generator=generator)
