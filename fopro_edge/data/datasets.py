"""Torch datasets over an ImageList, and class-rebalancing samplers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from fopro_edge.data.images import ImageList
from fopro_edge.errors import DataError, FoproEdgeError

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


class CheckedDataLoader(DataLoader):
    """A DataLoader whose worker failures surface as one-line errors.

    PyTorch re-raises an error from a worker process with the worker's whole traceback as its
    message; a :class:`FoproEdgeError` (e.g. an unreadable image) gets its own one-line message
    back, and a worker that died (killed, out of memory) becomes a :class:`DataError`.
    """

    def __iter__(self):
        it = super().__iter__()
        try:
            while True:
                error: FoproEdgeError | None = None
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except FoproEdgeError as e:
                    error = type(e)(worker_message(e))
                except RuntimeError as e:
                    if "DataLoader worker" not in str(e) or "Original Traceback" in str(e):
                        raise  # not a dead worker: a bug inside one keeps its traceback
                    first = str(e).strip().splitlines()[0]
                    error = DataError(
                        f"data.num_workers: a data loader worker failed ({first}); "
                        "set data.num_workers: 0 to see the failing image, or lower data.batch_size if memory is short"
                    )
                if error is not None:
                    raise error  # outside the except block: no chained worker traceback
                yield batch
        finally:
            # Stop the workers now (error, or the consumer stopped early): left to garbage collection,
            # the iterator sits in a reference cycle and its late shutdown waits out a join timeout
            # per worker (seconds). A second call after a normal end is a no-op.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


def worker_message(e: BaseException) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker."""
    text = str(e)
    if "DataLoader worker" not in text or "Traceback" not in text:
        return text
    last = next((line for line in reversed(text.splitlines()) if line.strip()), text)
    for prefix in (f"{type(e).__module__}.{type(e).__qualname__}: ", f"{type(e).__qualname__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


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
