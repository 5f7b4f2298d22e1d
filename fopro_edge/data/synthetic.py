"""Generated long-tailed images with a learnable per-class pattern (tests and smoke runs).

Class ``k`` of ``C`` is a sinusoidal grating with its own hue, orientation and frequency (odd
classes square-wave), plus per-image jitter and noise, so a tiny model can learn it from 32×32.
"""

from __future__ import annotations

import colorsys
import csv
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from fopro_edge.config import SyntheticConfig
from fopro_edge.data.images import ImageList
from fopro_edge.data.longtail import longtail_counts

logger = logging.getLogger(__name__)

# HyperKvasir-style parents for the nested tree: class k goes under _TREE_PARENTS[k % 2].
_TREE_PARENTS = (("lower-gi-tract", "pathological-findings"), ("upper-gi-tract", "anatomical-landmarks"))


def synthetic_class_names(num_classes: int) -> tuple[str, ...]:
    """``pattern-00``, ``pattern-01``, ...: sorting by name keeps the class index order."""
    return tuple(f"pattern-{k:02d}" for k in range(num_classes))


def synthetic_image(label: int, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size×size×3 uint8 image of class ``label``."""
    t = label / num_classes
    hue = (t + rng.normal(0.0, 0.015)) % 1.0
    angle = np.pi * ((label * 0.618034) % 1.0) + rng.normal(0.0, 0.06)
    freq = (1.5 + 1.25 * (label % 4)) * (1.0 + rng.normal(0.0, 0.05))  # cycles per image
    phase = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    wave = np.sin(2.0 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    if label % 2:
        wave = np.sign(wave) * np.abs(wave) ** 0.25
    bright = np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.9))
    dark = bright * 0.3
    img = dark + (bright - dark) * ((wave + 1.0) / 2.0)[..., None]
    img = img * rng.uniform(0.85, 1.1) + rng.normal(0.0, 0.05, img.shape)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def synthetic_images(counts: list[int], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``counts[k]`` images of each class k: (N×size×size×3 uint8, N int64 labels)."""
    labels = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    images = np.stack([synthetic_image(int(y), len(counts), size, rng) for y in labels]) if len(labels) else (
        np.zeros((0, size, size, 3), np.uint8)
    )
    return images, labels


def synthetic_splits(cfg: SyntheticConfig, seed: int) -> tuple[ImageList, ImageList, ImageList]:
    """In-memory train (long-tailed) and balanced val/test (``eval_per_class`` each)."""
    rng = np.random.default_rng(seed)
    names = synthetic_class_names(cfg.num_classes)
    out = []
    offset = 0
    for counts in (
        longtail_counts(cfg.max_per_class, cfg.imbalance_ratio, cfg.num_classes),
        [cfg.eval_per_class] * cfg.num_classes,
        [cfg.eval_per_class] * cfg.num_classes,
    ):
        x, y = synthetic_images(counts, cfg.image_size, rng)
        ids = np.arange(offset, offset + len(y), dtype=np.int64)
        offset += len(y)
        out.append(ImageList(x, y, names, id_prefix="synthetic", source_ids=ids))
    return out[0], out[1], out[2]


def make_synthetic_tree(
    root: str | Path, cfg: SyntheticConfig, seed: int, *, nested: bool = True, image_format: str = "png"
) -> Path:
    """Write a long-tailed class-per-folder tree; ``nested`` uses the HyperKvasir layout
    ``root/<tract>/<category>/<class>/img_0001.<ext>``. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = synthetic_class_names(cfg.num_classes)
    counts = longtail_counts(cfg.max_per_class, cfg.imbalance_ratio, cfg.num_classes)
    ext = "jpg" if image_format.lower() in ("jpg", "jpeg") else image_format.lower()
    for k, (name, n) in enumerate(zip(names, counts)):
        folder = root.joinpath(*_TREE_PARENTS[k % 2], name) if nested else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            _save(synthetic_image(k, cfg.num_classes, cfg.image_size, rng), folder / f"img_{j + 1:04d}.{ext}")
    logger.info("wrote a synthetic tree of %d images in %d classes to %s", sum(counts), len(names), root)
    return root


def make_synthetic_csv_split(
    directory: str | Path, cfg: SyntheticConfig, seed: int, *, image_ext: str = ".jpg"
) -> dict[str, Path]:
    """Write ISIC-style ``train.csv``/``val.csv``/``test.csv`` (``image,finding_name,finding``,
    finding 0 = most frequent, long-tailed train, ``eval_per_class`` per class in val and test)
    and their images in ``directory/images``. Returns the paths under keys
    ``image_dir``, ``train``, ``val``, ``test``."""
    directory = Path(directory)
    image_dir = directory / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = synthetic_class_names(cfg.num_classes)
    plans = {
        "train": longtail_counts(cfg.max_per_class, cfg.imbalance_ratio, cfg.num_classes),
        "val": [cfg.eval_per_class] * cfg.num_classes,
        "test": [cfg.eval_per_class] * cfg.num_classes,
    }
    out: dict[str, Path] = {"image_dir": image_dir}
    n = 0
    for split, counts in plans.items():
        rows = []
        for k, count in enumerate(counts):
            for _ in range(count):
                n += 1
                image_id = f"SYN_{n:07d}"
                _save(synthetic_image(k, cfg.num_classes, cfg.image_size, rng), image_dir / f"{image_id}{image_ext}")
                rows.append((image_id, names[k], k))
        rows = [rows[i] for i in rng.permutation(len(rows))]
        path = directory / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "finding_name", "finding"])
            w.writerows(rows)
        out[split] = path
    return out


def _save(arr: np.ndarray, path: Path) -> None:
    im = Image.fromarray(arr, "RGB")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=95)
    else:
        im.save(path)
