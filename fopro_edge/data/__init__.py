"""Data layer: readers, splits, long-tail statistics, transforms, datasets and calibration sets.

Attributes load their module on first use (PEP 562), so the torch-free parts (image reading)
import without torch."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CheckedDataLoader": "datasets",
    "DataSplits": "splits",
    "ISIC2019_CLASSES": "sources",
    "ImageDataset": "datasets",
    "ImageList": "images",
    "LongTailStats": "longtail",
    "build_sampler": "datasets",
    "build_splits": "splits",
    "build_transform": "transforms",
    "check_splits": "splits",
    "compute_longtail_stats": "longtail",
    "drop_unreadable": "images",
    "find_unreadable": "images",
    "load_digits_longtail": "sources",
    "longtail_counts": "longtail",
    "make_synthetic_csv_split": "sources",
    "make_synthetic_tree": "sources",
    "open_rgb": "images",
    "read_csv_split": "sources",
    "save_manifest": "splits",
    "scan_folder_tree": "sources",
    "stratified_calibration_indices": "calibration",
    "stratified_split_indices": "splits",
    "synthetic_image": "synthetic",
    "synthetic_splits": "synthetic",
    "to_rgb": "images",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
