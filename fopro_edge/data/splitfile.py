"""Split files for class-per-folder trees (``data.split_file``): the split or fold of every image.

A CSV (comma, semicolon or tab separated) with a path column (``path``, or ``file-name`` as in
HyperKvasir's ``official_splits/2_fold_split.csv``) and a split column (``split``, ``fold`` or
``split-index``). Paths are relative to ``data.root``; a bare file name matches the one image of
that name anywhere in the tree. Split values are all ``train``/``val``/``test``, or all fold
numbers. The class always comes from the image's folder; other columns are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fopro_edge.data.csvtable import read_csv_table, require_values
from fopro_edge.data.images import ImageList
from fopro_edge.errors import DataError

PATH_COLUMNS = ("path", "file-name")
SPLIT_COLUMNS = ("split", "fold", "split-index")
NAMED_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitAssignment:
    """Per image of the tree (same order): its named split, or its fold number."""

    named: tuple[str, ...] | None  # "train" | "val" | "test" per image, for a named split file
    folds: np.ndarray | None  # int fold per image, for a fold file

    def fold_numbers(self) -> list[int]:
        return sorted(set(self.folds.tolist())) if self.folds is not None else []


def read_split_file(path: str | Path, images: ImageList, root: str | Path) -> SplitAssignment:
    """Assign every image of ``images`` (a scanned tree under ``root``) from the split file."""
    path, root = Path(path), Path(root)
    rows = _read_rows(path)
    where = _image_index(images, root)
    values: list[str | None] = [None] * len(images)
    first_line: dict[int, int] = {}
    for line, name, value in rows:
        i = _match(path, line, name, where, root)
        if i in first_line:
            raise DataError(f"{path}: line {line}: '{name}' is listed twice (first on line {first_line[i]})")
        first_line[i] = line
        values[i] = value
    unlisted = [i for i, v in enumerate(values) if v is None]
    if unlisted:
        first = os.path.relpath(images.refs[unlisted[0]], root)
        raise DataError(
            f"{path}: {len(unlisted)} image(s) under data.root are not listed, first: {first} "
            "(give every image a split, or remove it from the tree)"
        )
    return _assignment(path, rows, [str(v) for v in values])


def _read_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, path value, split value) per non-empty row."""
    header, rows = read_csv_table(path, "split file", "path,split")
    header = [h.lower() for h in header]
    pi = _column(path, header, PATH_COLUMNS)
    si = _column(path, header, SPLIT_COLUMNS)
    for line, r in rows:
        require_values(path, line, r, header, (pi, si))
    return [(line, r[pi], r[si]) for line, r in rows]


def _column(path: Path, header: list[str], names: tuple[str, ...]) -> int:
    for n in names:
        if n in header:
            return header.index(n)
    raise DataError(
        f"{path}: no {' or '.join(repr(n) for n in names)} column (columns present: {', '.join(header)}); "
        "a split file has columns path,split"
    )


@dataclass(frozen=True)
class _Index:
    by_rel: dict[str, int]
    by_name: dict[str, list[int]]


def _image_index(images: ImageList, root: Path) -> _Index:
    by_rel: dict[str, int] = {}
    by_name: dict[str, list[int]] = {}
    for i, ref in enumerate(images.refs):
        rel = Path(os.path.relpath(ref, root)).as_posix()
        by_rel[rel] = i
        by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(i)
    return _Index(by_rel, by_name)


def _match(path: Path, line: int, name: str, where: _Index, root: Path) -> int:
    rel = os.path.normpath(name.replace("\\", "/")).replace(os.sep, "/")
    if os.path.isabs(rel):
        rel = Path(os.path.relpath(rel, root)).as_posix()
    if rel in where.by_rel:
        return where.by_rel[rel]
    hits = where.by_name.get(rel, []) if "/" not in rel else []
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise DataError(
            f"{path}: line {line}: '{name}' matches {len(hits)} images in different folders "
            "(give its path relative to data.root)"
        )
    raise DataError(f"{path}: line {line}: '{name}' is not an image under data.root {root} (paths are relative to data.root)")


def _assignment(path: Path, rows: list[tuple[int, str, str]], values: list[str]) -> SplitAssignment:
    kinds = ["named" if v in NAMED_SPLITS else "fold" if v.isdigit() else "bad" for _, _, v in rows]
    for (line, _, value), kind in zip(rows, kinds):
        if kind == "bad":
            raise DataError(f"{path}: line {line}: split '{value}' is not train, val, test or a fold number")
        if kind != kinds[0]:
            raise DataError(
                f"{path}: line {line}: split '{value}' mixes fold numbers and named splits (use one kind in a file)"
            )
    if kinds[0] == "named":
        return SplitAssignment(tuple(values), None)
    return SplitAssignment(None, np.asarray([int(v) for v in values], dtype=np.int64))
