"""Calibration and check images for the export steps, and the runtime adapters that feed them.

Calibration images are a class-stratified subset of the train split with every rare class present
(:func:`fopro_edge.data.stratified_calibration_indices`); the indices are saved in
``calibration.json`` so every target calibrates on the same images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fopro_edge.errors import ConfigError
from fopro_edge.io import atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "fopro-edge-calibration/1"


@dataclass(frozen=True)
class CalibrationSet:
    """Indices into the train split, with what is needed to check they still fit it."""

    indices: tuple[int, ...]
    class_counts: dict[str, int]
    rare_classes: tuple[str, ...]
    rare_missing: tuple[str, ...]
    requested_size: int
    seed: int
    split: str = "train"
    source: str = "stratified"  # stratified | file
    train_size: int = 0

    def __len__(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "split": self.split,
            "count": len(self.indices),
            "requested_size": self.requested_size,
            "seed": self.seed,
            "source": self.source,
            "train_size": self.train_size,
            "class_counts": self.class_counts,
            "rare_classes": list(self.rare_classes),
            "rare_missing": list(self.rare_missing),
            "indices": list(self.indices),
        }


def _describe(indices: np.ndarray, labels: np.ndarray, class_names: Sequence[str], rare: Sequence[str]) -> tuple[dict, tuple]:
    counts = np.bincount(labels[indices], minlength=len(class_names)) if len(indices) else np.zeros(len(class_names), int)
    by_name = {str(n): int(c) for n, c in zip(class_names, counts, strict=True)}
    missing = tuple(n for n in rare if by_name.get(n, 0) == 0)
    return by_name, missing


def select_calibration(
    train_labels: np.ndarray,
    class_names: Sequence[str],
    rare_classes: Sequence[str],
    size: int,
    seed: int,
) -> CalibrationSet:
    """A class-stratified subset of ``size`` train images (all of them if fewer), every rare class in."""
    from fopro_edge.data import stratified_calibration_indices

    labels = np.asarray(train_labels, dtype=np.int64)
    index = {n: i for i, n in enumerate(class_names)}
    rare_ids = [index[n] for n in rare_classes if n in index]
    idx = np.asarray(stratified_calibration_indices(labels, size, rare_ids, seed, class_names=class_names), np.int64)
    counts, missing = _describe(idx, labels, class_names, rare_classes)
    return CalibrationSet(
        indices=tuple(int(i) for i in idx), class_counts=counts, rare_classes=tuple(rare_classes),
        rare_missing=missing, requested_size=size, seed=seed, train_size=len(labels),
    )


def save_calibration(path: str | Path, cal: CalibrationSet, extra: dict[str, Any] | None = None) -> None:
    atomic_write_json(path, {**cal.to_dict(), **(extra or {})})


def load_calibration(
    path: str | Path, train_labels: np.ndarray, class_names: Sequence[str], rare_classes: Sequence[str], key: str
) -> CalibrationSet:
    """Read a ``calibration.json`` and check it fits this train split. Missing rare classes are
    allowed (a deliberate experiment) but logged as a warning and recorded."""
    import json

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: calibration file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{key}: {path} is not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("indices"), list):
        raise ConfigError(f"{key}: {path} has no 'indices' list (expected a calibration.json written by fopro-edge export)")
    labels = np.asarray(train_labels, dtype=np.int64)
    idx = np.asarray(raw["indices"], dtype=np.int64)
    train_size = raw.get("train_size")
    if train_size and int(train_size) != len(labels):
        raise ConfigError(
            f"{key}: {path} was made for a train split of {train_size} images, this one has {len(labels)} (another run?)"
        )
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(labels):
        raise ConfigError(f"{key}: {path}: indices must lie in [0, {len(labels)}) (the train split has {len(labels)} images)")
    counts, missing = _describe(idx, labels, class_names, rare_classes)
    if missing:
        log.warning("calibration file %s holds no image of rare class(es): %s", path, ", ".join(missing))
    return CalibrationSet(
        indices=tuple(int(i) for i in idx), class_counts=counts, rare_classes=tuple(rare_classes), rare_missing=missing,
        requested_size=len(idx), seed=int(raw.get("seed", 0)), source=f"file:{path}", train_size=len(labels),
    )


def load_images(image_list: Any, indices: Sequence[int], image_size: int) -> np.ndarray:
    """Images ``indices`` of an :class:`~fopro_edge.data.ImageList`, eval-transformed: float32 NCHW in [0, 1]."""
    from fopro_edge.data import build_transform

    tf = build_transform(image_size, augment="none", training=False)
    if len(indices) == 0:
        return np.zeros((0, 3, image_size, image_size), np.float32)
    return np.stack([tf(image_list.load(int(i))).numpy() for i in indices]).astype(np.float32, copy=False)


class CheckImages:
    """The labelled check images, decoded once when they fit in ``cache_mb``, else per pass."""

    def __init__(self, image_list: Any, image_size: int, *, batch_size: int = 32, max_images: int | None = None,
                 cache_mb: int = 512) -> None:
        n = len(image_list)
        if max_images is not None and max_images < n:
            from fopro_edge.data import stratified_calibration_indices

            self.indices = np.asarray(stratified_calibration_indices(image_list.labels, max_images, [], 0), np.int64)
        else:
            self.indices = np.arange(n, dtype=np.int64)
        self.image_list = image_list
        self.labels = np.asarray(image_list.labels, np.int64)[self.indices]
        self.image_size = image_size
        self.batch_size = batch_size
        self._cache: np.ndarray | None = None
        if len(self.indices) * 3 * image_size * image_size * 4 <= cache_mb * (1 << 20):
            self._cache = load_images(image_list, self.indices, image_size)

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.indices), self.batch_size):
            if self._cache is not None:
                yield self._cache[start:start + self.batch_size]
            else:
                yield load_images(self.image_list, self.indices[start:start + self.batch_size], self.image_size)


def ort_reader(images: np.ndarray, input_name: str, batch_size: int = 8, *, fixed_batch: bool = False):
    """An ONNX Runtime ``CalibrationDataReader`` over an image array (rewindable).

    ``fixed_batch``: the model's batch dimension is fixed to ``batch_size``; a last partial batch
    is dropped (zero padding would distort the ranges).
    """
    from onnxruntime.quantization import CalibrationDataReader

    if fixed_batch and len(images) < batch_size:
        raise ConfigError(f"calibration: {len(images)} image(s) cannot fill one batch of the fixed size {batch_size}")
    stop = (len(images) // batch_size) * batch_size if fixed_batch else len(images)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._pos >= stop:
                return None
            batch = images[self._pos:self._pos + batch_size]
            self._pos += batch_size
            return {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

        def rewind(self) -> None:
            self._pos = 0

        def __len__(self) -> int:
            return (stop + batch_size - 1) // batch_size

    return _Reader()


def nncf_dataset(images: np.ndarray, labels: np.ndarray | None = None):
    """An ``nncf.Dataset`` with one image per item, so ``subset_size`` counts images.

    With ``labels`` the items are ``(image, label)`` pairs (for accuracy control's validation);
    the transform hands NNCF the image alone.
    """
    import nncf

    if labels is None:
        return nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    items = [(images[i:i + 1], int(labels[i])) for i in range(len(images))]
    return nncf.Dataset(items, lambda item: item[0])
