"""Train/val/test splits from a recipe's ``data`` section, checked, with a JSON manifest.

Folder trees are split by ``data.val_fraction``/``data.test_fraction``, by a stratified k-fold
(``data.folds``, ``data.fold``) or by a split file (``data.split_file``); a pre-split tree
(``root/{train,val,test}/<class>``) is used as given. The split seed is ``data.split_seed``, or
the recipe's seed when it is not set.
"""

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
from fopro_edge.data.sources import (
    find_presplit_folders,
    load_digits_longtail,
    read_csv_split,
    scan_folder_tree,
    scan_presplit_tree,
)
from fopro_edge.data.splitfile import read_split_file
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
    plan: dict[str, Any] = field(default_factory=dict)  # how the splits were made: seed, layout, folds, split file

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
            "split": self.plan,
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
    """Build and check the train/val/test splits named by ``cfg.source``.

    ``seed`` is the recipe's seed; ``data.split_seed``, when set, replaces it for the split only.
    """
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    skipped: list[str] = []
    plan: dict[str, Any] = {"seed": split_seed, "layout": cfg.source}
    if cfg.source == "folder":
        train, val, test = _folder_splits(cfg, split_seed, skipped, plan)
    elif cfg.source == "csv":
        train, val, test = _csv_splits(cfg, split_seed, skipped, plan)
    elif cfg.source == "digits":
        train, val, test = load_digits_longtail(cfg.demo, split_seed)
    elif cfg.source == "synthetic":
        train, val, test = synthetic_splits(cfg.synthetic, split_seed)
    else:
        raise DataError(f"data.source: unknown source '{cfg.source}' (choose folder, csv, digits or synthetic)")
    splits = DataSplits(train, val, test, train.class_names, cfg.source, skipped, plan)
    where = {"folder": cfg.root, "csv": cfg.train_csv}.get(cfg.source)
    check_splits(splits, _SOURCE_KEY.get(cfg.source, "data"), where)
    logger.info(
        "data (%s, %s): %d classes; train %d, val %d, test %d images",
        cfg.source, plan["layout"], splits.num_classes, len(train), len(val), len(test),
    )
    return splits


def stratified_kfold_indices(labels: np.ndarray, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, test) index arrays (sorted): test is fold ``fold`` of a shuffled stratified k-fold
    (scikit-learn's ``StratifiedKFold`` seeded with ``seed``)."""
    from sklearn.model_selection import StratifiedKFold  # lazy: the train extra

    labels = np.asarray(labels, dtype=np.int64)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    rest, test = list(skf.split(np.zeros((len(labels), 1)), labels))[fold]
    return np.sort(rest), np.sort(test)


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


Triple = tuple[ImageList, ImageList, ImageList]


def _folder_splits(cfg: DataConfig, seed: int, skipped: list[str], plan: dict[str, Any]) -> Triple:
    """A class-per-folder tree: used as given when pre-split, else split by a split file, by
    stratified k-fold, or by the val/test fractions."""
    if not cfg.root:
        raise DataError("data.root: required for data.source: folder (the class-per-folder tree)")
    root = Path(cfg.root).expanduser().resolve()
    folders = _presplit_folders(cfg, root)
    if folders is not None:
        return _presplit_splits(cfg, folders, seed, skipped, plan)
    plan["layout"] = "tree"
    found = scan_folder_tree(root)
    if cfg.split_file:
        return _split_file_splits(cfg, found, root, seed, skipped, plan)
    images = _readable(found, cfg, skipped, str(root))
    if _kfold(cfg):
        return _kfold_splits(cfg, images, root, seed, plan)
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        raise DataError(
            f"data.val_fraction + data.test_fraction = {cfg.val_fraction + cfg.test_fraction:g} must be < 1"
        )
    plan.update(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    (tr, va, te), small = stratified_split_indices(images.labels, (cfg.val_fraction, cfg.test_fraction), seed)
    if small:
        logger.warning(
            "class(es) with fewer than 3 images stay in train only (no val/test images): %s",
            ", ".join(images.class_names[k] for k in small),
        )
    return images.subset(tr), images.subset(va), images.subset(te)


def _kfold(cfg: DataConfig) -> bool:
    return cfg.folds is not None and cfg.folds > 1


def _readable(images: ImageList, cfg: DataConfig, skipped: list[str], what: str) -> ImageList:
    kept = drop_unreadable(images, cfg.bad_images, what=what)
    skipped.extend(_dropped(images, kept))
    return kept


def _dropped(before: ImageList, after: ImageList) -> list[str]:
    if len(before) == len(after):
        return []
    kept = set(after.ids())
    return [i for i in before.ids() if i not in kept]


def _presplit_folders(cfg: DataConfig, root: Path) -> dict[str, Path] | None:
    """The split folders when ``root`` is a pre-split tree (declared, or detected by data.layout: auto)."""
    if cfg.layout == "tree" or not root.is_dir():
        return None
    folders = find_presplit_folders(root)
    if folders is None:
        if cfg.layout == "presplit":
            raise DataError(
                f"{root}: data.layout: presplit, but the root has no train/ folder beside val/ or test/ "
                "(expected root/train/<class>/..., root/test/<class>/...)"
            )
        return None
    if _kfold(cfg) or cfg.split_file:
        key = "data.folds" if _kfold(cfg) else "data.split_file"
        names = ", ".join(f"{p.name}/" for p in folders.values())
        raise DataError(
            f"{root}: {key}: the root is a pre-split tree ({names}), used as given; "
            "set data.layout: tree to merge and re-split it"
        )
    return folders


def _presplit_splits(
    cfg: DataConfig, folders: dict[str, Path], seed: int, skipped: list[str], plan: dict[str, Any]
) -> Triple:
    lists = scan_presplit_tree(folders)
    parts = {split: _readable(images, cfg, skipped, str(folders[split])) for split, images in lists.items()}
    plan.update(layout="presplit", folders={split: str(path) for split, path in folders.items()})
    return _draw_missing(parts["train"], parts.get("val"), parts.get("test"), cfg, seed, "folder", plan)


def _kfold_splits(cfg: DataConfig, images: ImageList, root: Path, seed: int, plan: dict[str, Any]) -> Triple:
    """Test: fold ``data.fold`` of a stratified k-fold over all images; val: drawn from the rest."""
    assert cfg.folds is not None
    if cfg.fold >= cfg.folds:
        raise DataError(f"{root}: data.fold: {cfg.fold} is out of range (folds are 0..{cfg.folds - 1})")
    counts = images.counts()
    small = [k for k in range(images.num_classes) if counts[k] < cfg.folds]
    if small:
        k = small[0]
        raise DataError(
            f"{root}: data.folds: class '{images.class_names[k]}' has {counts[k]} image(s), fewer than "
            f"data.folds = {cfg.folds} (every fold needs an image of every class; lower data.folds)"
        )
    plan.update(folds=cfg.folds, fold=cfg.fold, val_fraction=cfg.val_fraction)
    rest, test = stratified_kfold_indices(images.labels, cfg.folds, cfg.fold, seed)
    return _val_from(images.subset(rest), images.subset(test), cfg, seed)


def _val_from(rest: ImageList, test: ImageList, cfg: DataConfig, seed: int) -> Triple:
    """Split a stratified ``data.val_fraction`` of ``rest`` off as val; the remainder trains."""
    (tr, va), small = stratified_split_indices(rest.labels, (cfg.val_fraction,), seed)
    if small:
        logger.warning(
            "class(es) with fewer than 2 images outside the test split stay in train only (no val images): %s",
            ", ".join(rest.class_names[k] for k in small),
        )
    return rest.subset(tr), rest.subset(va), test


def _split_file_splits(
    cfg: DataConfig, found: ImageList, root: Path, seed: int, skipped: list[str], plan: dict[str, Any]
) -> Triple:
    """Splits from ``data.split_file``: named train/val/test rows, or fold numbers (test: ``data.fold``)."""
    path = str(cfg.split_file)
    assign = read_split_file(path, found, root)
    plan["split_file"] = path
    if assign.named is not None:
        if cfg.fold or _kfold(cfg):
            key = "data.fold" if cfg.fold else "data.folds"
            raise DataError(f"{path}: {key}: this split file names its splits (train/val/test), it has no fold numbers")
        named = np.asarray(assign.named)
        parts = {
            s: _readable(found.subset(np.flatnonzero(named == s)), cfg, skipped, f"{path} ({s})")
            for s in SPLITS if (named == s).any()
        }
        if "train" not in parts:
            raise DataError(f"{path}: no row has split 'train' (every class needs training images)")
        return _draw_missing(parts["train"], parts.get("val"), parts.get("test"), cfg, seed, "split_file", plan)
    assert assign.folds is not None
    folds = assign.fold_numbers()
    if len(folds) < 2:
        raise DataError(f"{path}: every row is fold {folds[0]}; a fold file needs at least 2 folds")
    if _kfold(cfg) and cfg.folds != len(folds):
        raise DataError(f"{path}: data.folds: {cfg.folds}, but the file has {len(folds)} folds ({_listed(folds)})")
    if cfg.fold not in folds:
        raise DataError(f"{path}: data.fold: {cfg.fold} is not a fold of this file (folds: {_listed(folds)})")
    plan.update(folds=len(folds), fold=cfg.fold, val_fraction=cfg.val_fraction)
    in_test = assign.folds == cfg.fold
    rest = _readable(found.subset(np.flatnonzero(~in_test)), cfg, skipped, f"{path} (other folds)")
    test = _readable(found.subset(np.flatnonzero(in_test)), cfg, skipped, f"{path} (fold {cfg.fold})")
    return _val_from(rest, test, cfg, seed)


def _listed(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


_MISSING = {
    "csv": ("data.val_csv not set", "data.test_csv not set"),
    "folder": ("no val/ folder", "no test/ folder"),
    "split_file": ("no 'val' rows in data.split_file", "no 'test' rows in data.split_file"),
}


def _draw_missing(
    train: ImageList, val: ImageList | None, test: ImageList | None, cfg: DataConfig, seed: int,
    kind: str, plan: dict[str, Any],
) -> Triple:
    """Draw a missing val and/or test split from train, stratified, with data.val_fraction / data.test_fraction."""
    fractions = [f for f, have in ((cfg.val_fraction, val), (cfg.test_fraction, test)) if have is None]
    if not fractions:
        return train, val, test  # type: ignore[return-value]
    parts, small = stratified_split_indices(train.labels, fractions, seed)
    if small:
        logger.warning(
            "class(es) too small to split stay in train only: %s", ", ".join(train.class_names[k] for k in small)
        )
    rest, held = train.subset(parts[0]), [train.subset(p) for p in parts[1:]]
    why_val, why_test = _MISSING[kind]
    drawn = []
    if val is None:
        val = held.pop(0)
        drawn.append("val")
        logger.info("%s: %d validation images split from train", why_val, len(val))
    if test is None:
        test = held.pop(0)
        drawn.append("test")
        logger.info("%s: %d test images split from train", why_test, len(test))
    plan["drawn_from_train"] = drawn
    return rest, val, test


def _csv_splits(cfg: DataConfig, seed: int, skipped: list[str], plan: dict[str, Any]) -> Triple:
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
        return _readable(images, cfg, skipped, str(path))

    train = read(cfg.train_csv, None)
    val = read(cfg.val_csv, train.class_names) if cfg.val_csv else None
    test = read(cfg.test_csv, train.class_names) if cfg.test_csv else None
    return _draw_missing(train, val, test, cfg, seed, "csv", plan)
