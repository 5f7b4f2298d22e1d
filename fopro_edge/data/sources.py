"""Dataset readers: class-per-folder trees (one tree, or pre-split), ISIC-style CSV splits, the digits demo.

``ImageList`` and the synthetic generators are re-exported here so every data source is one import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fopro_edge.config import DemoConfig
from fopro_edge.data.csvtable import read_csv_table, require_values
from fopro_edge.data.images import IMAGE_EXTENSIONS, ImageList
from fopro_edge.data.longtail import longtail_counts
from fopro_edge.data.synthetic import make_synthetic_csv_split, make_synthetic_tree
from fopro_edge.errors import DataError

__all__ = [
    "ISIC2019_CLASSES",
    "ImageList",
    "find_presplit_folders",
    "load_digits_longtail",
    "make_synthetic_csv_split",
    "make_synthetic_tree",
    "read_csv_split",
    "scan_folder_tree",
    "scan_presplit_tree",
]

logger = logging.getLogger(__name__)

# FoPro-KD ISIC-2019 splits: `finding` ranks the classes by frequency; `finding_name` is the
# class's column in the original ISIC-2019 ground truth (MEL, NV, BCC, AK, BKL, DF, VASC, SCC).
ISIC2019_CLASSES = ("NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF")
_ISIC2019_ORIGINAL_ORDER = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
_ISIC_HEADER = ["image", "finding_name", "finding"]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def scan_folder_tree(root: str | Path) -> ImageList:
    """Read a class-per-folder tree; nested folders allowed, the class is the leaf folder name.

    A folder that directly holds image files is a class; hidden files and folders are skipped;
    images directly in ``root`` belong to no class and are ignored (with a warning).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (fix data.root)")
    found: dict[str, tuple[str, list[str]]] = {}
    stray = 0
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        files = sorted(
            f for f in filenames if not _hidden(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        )
        if not files:
            continue
        if os.path.samefile(dirpath, root):
            stray += len(files)
            continue
        name = os.path.basename(dirpath)
        if name in found:
            raise DataError(
                f"{root}: class name '{name}' is used by two folders: {found[name][0]} and {dirpath} "
                "(class = leaf folder name; rename one of them)"
            )
        found[name] = (dirpath, [os.path.join(dirpath, f) for f in files])
    if stray:
        logger.warning("%s: ignoring %d image(s) directly in the root (not in a class folder)", root, stray)
    if not found:
        exts = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise DataError(
            f"{root}: no images found (expected class folders of {exts} files, "
            f"e.g. {root}/<class>/img.jpg; check data.root)"
        )
    names = tuple(sorted(found))
    refs: list[str] = []
    labels: list[int] = []
    for k, name in enumerate(names):
        files = found[name][1]
        refs.extend(files)
        labels.extend([k] * len(files))
    logger.info("%s: %d images in %d classes", root, len(refs), len(names))
    return ImageList(refs, np.asarray(labels, dtype=np.int64), names, id_prefix="file")


# A pre-split tree: root/train/<class>/..., root/val/<class>/... (optional), root/test/<class>/...
PRESPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def find_presplit_folders(root: str | Path) -> dict[str, Path] | None:
    """The split folders of a pre-split tree (``train/`` beside ``val/`` and/or ``test/``), else None.

    Other folders beside the split folders are an error: the tree would be ambiguous.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        return None
    subdirs = {d.name: d for d in root.iterdir() if d.is_dir() and not _hidden(d.name)}
    if "train" not in subdirs:
        return None
    found = {"train": subdirs["train"]}
    for split in ("val", "test"):
        names = [n for n in PRESPLIT_FOLDERS[split] if n in subdirs]
        if len(names) > 1:
            raise DataError(f"{root}: data.layout: both {names[0]}/ and {names[1]}/ look like the {split} split (keep one)")
        if names:
            found[split] = subdirs[names[0]]
    if len(found) == 1:
        return None
    others = sorted(set(subdirs) - {p.name for p in found.values()})
    if others:
        raise DataError(
            f"{root}: data.layout: the root holds split folders ({', '.join(p.name + '/' for p in found.values())}) "
            f"and also {others[0]}/ (move it into a split folder, or set data.layout: tree to read the root as one tree)"
        )
    return found


def scan_presplit_tree(folders: dict[str, Path]) -> dict[str, ImageList]:
    """Scan each split folder as a class-per-folder tree, labelled with the training classes.

    A val/test class without a training folder is an error; a training class missing from
    val/test is allowed (the split check warns).
    """
    lists = {split: scan_folder_tree(path) for split, path in folders.items()}
    names = lists["train"].class_names
    index = {n: k for k, n in enumerate(names)}
    for split in ("val", "test"):
        if split not in lists:
            continue
        s = lists[split]
        extra = [n for n in s.class_names if n not in index]
        if extra:
            raise DataError(
                f"{folders[split]}: class '{extra[0]}' has no folder in {folders['train']} "
                "(the class sets of the split folders must agree; every class needs training images)"
            )
        remap = np.asarray([index[n] for n in s.class_names], dtype=np.int64)
        lists[split] = ImageList(s.refs, remap[s.labels], names, id_prefix=s.id_prefix)
    return lists


def read_csv_split(
    csv_path: str | Path,
    image_dir: str | Path | None,
    image_ext: str = ".jpg",
    image_column: str = "image",
    label_column: str = "finding",
    class_names: Sequence[str] | None = None,
    *,
    check_files: bool = True,
    on_missing: str = "error",
) -> ImageList:
    """Read one CSV split (the FoPro-KD ISIC-2019 format is ``image,finding_name,finding``).

    ``image`` is the image id (the extension ``image_ext`` is added unless present) inside
    ``image_dir`` (default: the CSV's folder). Integer labels are class indices; string labels are
    class names (sorted). Pass the training split's ``class_names`` when reading val/test.
    ``on_missing="skip"`` drops rows whose image file is missing instead of failing.
    """
    csv_path = Path(csv_path)
    image_dir = Path(image_dir) if image_dir is not None else csv_path.parent
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV file not found (fix data.train_csv/val_csv/test_csv)")
    header, rows = _read_rows(csv_path, image_column, label_column)
    ids = [r[0] for r in rows]
    raw = [r[1] for r in rows]

    ints = _as_ints(raw)
    if ints is not None:
        y = np.asarray(ints, dtype=np.int64)
        if y.min() < 0:
            raise DataError(
                f"{csv_path}: column '{label_column}' has a negative label ({y.min()}); labels are class indices from 0"
            )
        if class_names is not None:
            names = tuple(class_names)
            if y.max() >= len(names):
                raise DataError(
                    f"{csv_path}: label {y.max()} in column '{label_column}' is not a training class "
                    f"(the training split has {len(names)} classes, 0..{len(names) - 1})"
                )
        else:
            names = _integer_class_names(csv_path, header, label_column, rows, y)
    else:
        if class_names is not None:
            names = tuple(class_names)
            unknown = sorted(set(raw) - set(names))
            if unknown:
                raise DataError(
                    f"{csv_path}: class(es) {', '.join(repr(u) for u in unknown[:5])} in column '{label_column}' "
                    "are not in the training split (every val/test class needs training images)"
                )
        else:
            names = tuple(sorted(set(raw)))
        index = {n: i for i, n in enumerate(names)}
        y = np.asarray([index[v] for v in raw], dtype=np.int64)

    ext = image_ext if image_ext.startswith(".") or not image_ext else f".{image_ext}"
    paths = [
        str(image_dir / (i if os.path.splitext(i)[1].lower() in IMAGE_EXTENSIONS else f"{i}{ext}")) for i in ids
    ]
    if len(set(ids)) != len(ids):
        logger.warning("%s: %d duplicate image id(s)", csv_path, len(ids) - len(set(ids)))
    images = ImageList(paths, y, names, id_prefix="file")
    if check_files:
        missing = _missing_files(paths, image_dir)
        if missing:
            if on_missing == "skip":
                first = paths[missing[0]]
                logger.warning("%s: skipping %d row(s) whose image is missing, first: %s", csv_path, len(missing), first)
                images = images.subset(np.setdiff1d(np.arange(len(paths)), missing))
            else:
                raise DataError(
                    f"{csv_path}: {len(missing)} of {len(paths)} image files not found (first: {paths[missing[0]]}); "
                    "check data.root and data.image_ext, or set data.bad_images: skip"
                )
    return images


def _read_rows(csv_path: Path, image_column: str, label_column: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(header, rows of (image id, label, finding_name or ""))."""
    header, rows = read_csv_table(csv_path, "CSV file", "image,finding_name,finding")
    for col, key in ((image_column, "data.image_column"), (label_column, "data.label_column")):
        if col not in header:
            raise DataError(f"{csv_path}: column '{col}' not found (columns present: {', '.join(header)}); fix {key}")
    ii, li = header.index(image_column), header.index(label_column)
    ni = header.index("finding_name") if "finding_name" in header else None
    for line, r in rows:
        require_values(csv_path, line, r, header, (ii, li))
    return header, [(r[ii], r[li], r[ni] if ni is not None else "") for _, r in rows]


def _as_ints(values: list[str]) -> list[int] | None:
    try:
        return [int(v) for v in values]
    except ValueError:
        return None


def _integer_class_names(
    csv_path: Path, header: list[str], label_column: str, rows: list, y: np.ndarray
) -> tuple[str, ...]:
    """Names for integer labels: a real-name ``finding_name`` column, the ISIC-2019 names, or class_<k>."""
    num = int(y.max()) + 1
    if "finding_name" in header and label_column != "finding_name":
        by_label: dict[int, set[str]] = {}
        for (_, _, name), k in zip(rows, y.tolist()):
            by_label.setdefault(k, set()).add(name)
        named = [next(iter(v)) for v in by_label.values() if len(v) == 1]
        one_to_one = all(len(v) == 1 for v in by_label.values()) and len(set(named)) == len(named)
        if one_to_one and _as_ints(named) is None:  # finding_name holds real names
            return tuple(next(iter(by_label[k])) if k in by_label else f"class_{k}" for k in range(num))
        if header == _ISIC_HEADER and label_column == "finding" and num == len(ISIC2019_CLASSES):
            expected = {k: {str(_ISIC2019_ORIGINAL_ORDER.index(n))} for k, n in enumerate(ISIC2019_CLASSES)}
            if any(by_label.get(k, expected[k]) != expected[k] for k in range(num)):
                logger.warning(
                    "%s: finding_name does not match the usual ISIC-2019 order; names may be wrong", csv_path
                )
            return ISIC2019_CLASSES
    return tuple(f"class_{k}" for k in range(num))


def _missing_files(paths: list[str], image_dir: Path) -> list[int]:
    try:
        listing = set(os.listdir(image_dir))
    except OSError:
        listing = set()
    prefix = str(image_dir) + os.sep
    missing = []
    for i, p in enumerate(paths):
        rel = p[len(prefix):] if p.startswith(prefix) else None
        if rel is not None and os.sep not in rel and "/" not in rel:
            if rel not in listing:
                missing.append(i)
        elif not os.path.isfile(p):
            missing.append(i)
    return missing


def load_digits_longtail(cfg: DemoConfig, seed: int) -> tuple[ImageList, ImageList, ImageList]:
    """The offline demo: scikit-learn's real 8×8 digits as a long-tailed train split and balanced
    val/test (``eval_per_class`` each). The head-to-tail class order is drawn from ``seed``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    y = np.asarray(d.target, dtype=np.int64)
    num = 10
    names = tuple(f"digit_{k}" for k in range(num))
    rng = np.random.default_rng(seed)
    order = rng.permutation(num)  # order[r]: the class with the r-th largest train count
    counts = longtail_counts(cfg.max_per_class, cfg.imbalance_ratio, num)
    want = np.empty(num, dtype=np.int64)
    want[order] = counts
    e = cfg.eval_per_class
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in range(num):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < 2 * e + 1:
            raise DataError(f"data.demo.eval_per_class: {e} is too large (digit {c} has {len(idx)} images; lower it)")
        rest = idx[2 * e:]
        n = int(want[c])
        if n > len(rest):
            logger.warning("digits demo: digit %d has only %d images left for training (wanted %d)", c, len(rest), n)
            n = len(rest)
        parts[0].append(rest[:n])
        parts[1].append(idx[:e])
        parts[2].append(idx[e:2 * e])
    out = []
    for p in parts:
        idx = np.sort(np.concatenate(p))
        out.append(ImageList(x[idx], y[idx], names, id_prefix="digits", source_ids=idx))
    return out[0], out[1], out[2]
