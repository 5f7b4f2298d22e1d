"""Data layer: readers, splits, long-tail statistics, transforms, datasets and calibration sets."""

from fopro_edge.data.calibration import stratified_calibration_indices
from fopro_edge.data.datasets import CheckedDataLoader, ImageDataset, build_sampler
from fopro_edge.data.images import ImageList, drop_unreadable, find_unreadable, open_rgb, to_rgb
from fopro_edge.data.longtail import LongTailStats, compute_longtail_stats, longtail_counts
from fopro_edge.data.sources import (
    ISIC2019_CLASSES,
    load_digits_longtail,
    make_synthetic_csv_split,
    make_synthetic_tree,
    read_csv_split,
    scan_folder_tree,
)
from fopro_edge.data.splits import DataSplits, build_splits, check_splits, save_manifest, stratified_split_indices
from fopro_edge.data.synthetic import synthetic_image, synthetic_splits
from fopro_edge.data.transforms import build_transform

__all__ = [
    "CheckedDataLoader",
    "DataSplits",
    "ISIC2019_CLASSES",
    "ImageDataset",
    "ImageList",
    "LongTailStats",
    "build_sampler",
    "build_splits",
    "build_transform",
    "check_splits",
    "compute_longtail_stats",
    "drop_unreadable",
    "find_unreadable",
    "load_digits_longtail",
    "longtail_counts",
    "make_synthetic_csv_split",
    "make_synthetic_tree",
    "open_rgb",
    "read_csv_split",
    "save_manifest",
    "scan_folder_tree",
    "stratified_calibration_indices",
    "stratified_split_indices",
    "synthetic_image",
    "synthetic_splits",
    "to_rgb",
]
