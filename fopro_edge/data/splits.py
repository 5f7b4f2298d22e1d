"""Train/val/test splits from a recipe's ``data`` section, checked, with a JSON manifest."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fopro_edge.config import DataConfig
from fopro_edge.data.images import ImageList, drop_unreadable
from fopro_edge.data.sources import load_digits_longtail, read_csv_split, scan_folder_tree
from fopro_edge.data.synthetic import synthetic_splits
from fopro_edge.errors import DataError
from fopro_edge.io import atomic_write_json

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SOURCE_KEY = {"folder": "data.root", "csv": "data.train_csv", "digits": "data.demo", "synthetic": "data.synthetic"}


@dataclass
class DataSplits:
    train: ImageList
    val: ImageList
    test: ImageList
    class_names: tuple[str, ...]
    source: str = ""
    skipped: list[str] = field(default_factory=list)  # unreadable images dropped (data.bad_images: skip)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> ImageList:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} (one of {', '.join(SPLITS)})")
        return getattr(self, name)

    def to_manifest(self) -> dict[str, Any]:
        """Class names and, per split, the image ids, labels and class counts."""
        return {
            "source": self.source,
            "class_names": list(self.class_names),
            "skipped_images": {"count": len(self.skipped), "files": list(self.skipped)},
            "splits": {
                name: {
                    "count": len(s),
                    "class_counts": s.counts().tolist(),
                    "ids": s.ids(),
                    "labels": s.labels.tolist(),
                }
                for name, s in ((n, self.split(n)) for n in SPLITS)
            },
        }


def save_manifest(splits: DataSplits, path: str | Path) -> None:
    atomic_write_json(path, splits.to_manifest())


def stratified_split_indices(
    labels: np.ndarray, fractions: Sequence[float], seed: int
) -> tuple[list[np.ndarray], list[int]]:
    """Per-class seeded split into (rest, part_1, ..., part_m) index arrays (sorted).

    A class with at least m+1 images gives each part ``max(1, round(n * fraction))`` images and
    keeps at least one in ``rest``; a smaller class stays whole in ``rest`` (returned as the
    second value, the list of such class ids).
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    too_small: list[int] = []
    for c in np.unique(labels).tolist():
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        if n < len(fractions) + 1:
            too_small.append(c)
            parts[0].append(idx)
            continue
        take = [max(1, math.floor(n * f + 0.5)) for f in fractions]
        while sum(take) > n - 1:
            j = int(np.argmax(take))
            take[j] -= 1
        start = 0
        for j, m in enumerate(take, start=1):
            parts[j].append(idx[start:start + m])
            start += m
        parts[0].append(idx[start:])
    out = [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
    return out, too_small


def build_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Build and check the train/val/test splits named by ``cfg.source``."""
    skipped: list[str] = []
    if cfg.source == "folder":
        train, val, test = _folder_splits(cfg, seed, skipped)
    elif cfg.source == "csv":
        train, val, test = _csv_splits(cfg, seed, skipped)
    elif cfg.source == "digits":
        train, val, test = load_digits_longtail(cfg.demo, seed)
    elif cfg.source == "synthetic":
        train, val, test = synthetic_splits(cfg.synthetic, seed)
    else:
        raise DataError(f"data.source: unknown source '{cfg.source}' (choose folder, csv, digits or synthetic)")
    splits = DataSplits(train, val, test, train.class_names, cfg.source, skipped)
    where = {"folder": cfg.root, "csv": cfg.train_csv}.get(cfg.source)
    check_splits(splits, _SOURCE_KEY.get(cfg.source, "data"), where)
    logger.info(
        "data (%s): %d classes; train %d, val %d, test %d images",
        cfg.source, splits.num_classes, len(train), len(val), len(test),
    )
    return splits


def check_splits(splits: DataSplits, key: str = "data", where: str | None = None) -> None:
    """Fail with a :class:`DataError` on an unusable split; warn on id overlap between splits.

    Messages start with ``where`` (the data folder or CSV file) when given, then ``key``.
    """
    names = splits.class_names
    key_only, key = key, (f"{where}: {key}" if where else key)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{key}: duplicate class names: {', '.join(dup)} (class names must be unique)")
    for name in SPLITS:
        s = splits.split(name)
        if s.class_names != names:
            raise DataError(f"{key}: the {name} split has different classes than the training split")
    if len(splits.train) == 0:
        raise DataError(f"{key}: the training split is empty (no images; check {key_only})")
    if len(names) < 2:
        raise DataError(f"{key}: only one class ({', '.join(names)}); a classifier needs at least 2 (check {key_only})")
    counts = splits.train.counts()
    for k in np.flatnonzero(counts == 0).tolist():
        where = [n for n in ("val", "test") if splits.split(n).counts()[k] > 0]
        has = f"has {'/'.join(where)} images but " if where else "has "
        raise DataError(
            f"{key}: class '{names[k]}' {has}no training images (every class needs >= 1 training image; "
            "add some or remove the class)"
        )
    for name, fkey in (("val", "data.val_fraction"), ("test", "data.test_fraction")):
        s = splits.split(name)
        if len(s) == 0:
            raise DataError(f"{key}: the {name} split is empty (add images, or raise {fkey})")
        absent = [names[k] for k in np.flatnonzero(s.counts() == 0).tolist()]
        if absent:
            logger.warning("the %s split has no image of class(es): %s", name, ", ".join(absent))
    if not splits.train.in_memory:
        train_ids = set(splits.train.refs)
        for name in ("val", "test"):
            overlap = train_ids.intersection(splits.split(name).refs)
            if overlap:
                logger.warning("%d %s image(s) are also in train, e.g. %s", len(overlap), name, next(iter(overlap)))


def _folder_splits(cfg: DataConfig, seed: int, skipped: list[str]) -> tuple[ImageList, ImageList, ImageList]:
    if not cfg.root:
        raise DataError("data.root: required for data.source: folder (the class-per-folder tree)")
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        raise DataError(
            f"data.val_fraction + data.test_fraction = {cfg.val_fraction + cfg.test_fraction:g} must be < 1"
        )
    found = scan_folder_tree(cfg.root)
    images = drop_unreadable(found, cfg.bad_images, what=str(cfg.root))
    skipped.extend(_dropped(found, images))
    (tr, va, te), small = stratified_split_indices(images.labels, (cfg.val_fraction, cfg.test_fraction), seed)
    if small:
        logger.warning(
            "class(es) with fewer than 3 images stay in train only (no val/test images): %s",
            ", ".join(images.class_names[k] for k in small),
        )
    return images.subset(tr), images.subset(va), images.subset(te)


def _dropped(before: ImageList, after: ImageList) -> list[str]:
    if len(before) == len(after):
        return []
    kept = set(after.ids())
    return [i for i in before.ids() if i not in kept]


def _csv_splits(cfg: DataConfig, seed: int, skipped: list[str]) -> tuple[ImageList, ImageList, ImageList]:
    if not cfg.train_csv:
        raise DataError("data.train_csv: required for data.source: csv")
    image_dir = Path(cfg.root) if cfg.root else Path(cfg.train_csv).parent
    if not cfg.root:
        logger.info("data.root not set: reading images from the train CSV's folder %s", image_dir)
    if not image_dir.is_dir():
        raise DataError(f"data.root: image folder not found: {image_dir}")

    def read(path: str, names: Sequence[str] | None) -> ImageList:
        skip = cfg.bad_images == "skip"  # then missing files are dropped (and counted) with the undecodable ones
        images = read_csv_split(
            path, image_dir, cfg.image_ext, cfg.image_column, cfg.label_column, names, check_files=not skip
        )
        kept = drop_unreadable(images, cfg.bad_images, what=str(path))
        skipped.extend(_dropped(images, kept))
        return kept

    train = read(cfg.train_csv, None)
    val = read(cfg.val_csv, train.class_names) if cfg.val_csv else None
    test = read(cfg.test_csv, train.class_names) if cfg.test_csv else None
    fractions = [f for f, have in ((cfg.val_fraction, val), (cfg.test_fraction, test)) if have is None]
    if fractions:
        parts, small = stratified_split_indices(train.labels, fractions, seed)
        if small:
            logger.warning(
                "class(es) too small to split stay in train only: %s", ", ".join(train.class_names[k] for k in small)
            )
        rest, held = train.subset(parts[0]), [train.subset(p) for p in parts[1:]]
        if val is None:
            val = held.pop(0)
            logger.info("data.val_csv not set: %d validation images split from train", len(val))
        if test is None:
            test = held.pop(0)
            logger.info("data.test_csv not set: %d test images split from train", len(test))
        train = rest
    assert val is not None and test is not None
    return train, val, test
