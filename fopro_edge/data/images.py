"""ImageList: labelled images held as file paths or as an in-memory uint8 array, loaded as RGB."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fopro_edge.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass
class ImageList:
    """Labelled images: ``refs`` are file paths (str) or a uint8 array N×H×W or N×H×W×C.

    ``source_ids`` (array refs only) are the images' indices in their source, so ``id(i)`` stays
    stable through :meth:`subset`; ``id_prefix`` names that source (``"digits:17"``).
    """

    refs: list[str] | np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    id_prefix: str = "array"
    source_ids: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.class_names = tuple(str(c) for c in self.class_names)
        if isinstance(self.refs, np.ndarray):
            if self.refs.dtype != np.uint8 or self.refs.ndim not in (3, 4):
                raise ValueError(
                    f"in-memory images must be uint8 N×H×W[×C], got {self.refs.dtype} {self.refs.shape}"
                )
            if self.refs.ndim == 4 and self.refs.shape[-1] not in (1, 3, 4):
                raise ValueError(f"in-memory images need 1, 3 or 4 channels, got {self.refs.shape[-1]}")
            if self.source_ids is None:
                self.source_ids = np.arange(len(self.refs), dtype=np.int64)
            self.source_ids = np.asarray(self.source_ids, dtype=np.int64).reshape(-1)
        else:
            self.refs = [str(r) for r in self.refs]
            self.source_ids = None
        if len(self.refs) != len(self.labels):
            raise ValueError(f"{len(self.refs)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            lo, hi = self.labels.min(), self.labels.max()
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}), got {lo}..{hi}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.refs, np.ndarray)

    def counts(self) -> np.ndarray:
        """Images per class (length ``num_classes``)."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def id(self, i: int) -> str:
        """A stable identifier: the file path, or ``"<prefix>:<source index>"``."""
        if isinstance(self.refs, np.ndarray):
            assert self.source_ids is not None
            return f"{self.id_prefix}:{int(self.source_ids[i])}"
        return self.refs[i]

    def ids(self) -> list[str]:
        return [self.id(i) for i in range(len(self))]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageList:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if isinstance(self.refs, np.ndarray):
            assert self.source_ids is not None
            return ImageList(self.refs[idx], self.labels[idx], self.class_names, self.id_prefix, self.source_ids[idx])
        return ImageList([self.refs[i] for i in idx], self.labels[idx], self.class_names, self.id_prefix)

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as an 8-bit RGB PIL image; an unreadable file raises :class:`DataError`."""
        if isinstance(self.refs, np.ndarray):
            arr = self.refs[i]
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))
        return open_rgb(self.refs[i])


def open_rgb(path: str | Path, *, draft: int | None = None) -> Image.Image:
    """Open an image file fully decoded as 8-bit RGB, or raise a one-line :class:`DataError`.

    ``draft`` lets JPEG decode at a reduced scale (for fast checks).
    """
    try:
        with Image.open(path) as im:
            if draft is not None:
                im.draft("RGB", (draft, draft))
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found (fix the path, or set data.bad_images: skip)") from None
    except DataError:
        raise
    except Exception as e:  # PIL raises many types (OSError, ValueError, SyntaxError, DecompressionBombError)
        reason = " ".join(str(e).split()) or type(e).__name__
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            reason = "zero-byte file"
        raise DataError(
            f"{path}: cannot read image ({reason}); fix or remove the file, or set data.bad_images: skip"
        ) from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparency is composited on black; 16-bit images are scaled by 255/65535 (the full 16-bit
    range), 32-bit integer images the same when they fit in 16 bits, else min-max stretched; float
    images in [0, 1] are scaled by 255, other float ranges min-max stretched.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(im), mode), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, ...


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    a = a.astype(np.float64)
    if a.ndim == 3:
        a = a[..., 0]
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        a = a * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def find_unreadable(images: ImageList, *, decode: bool = True, workers: int | None = None) -> list[int]:
    """Indices of file images that cannot be used: missing or zero-byte, and (``decode``) undecodable."""
    if images.in_memory:
        return []

    def bad(i: int) -> bool:
        path = images.refs[i]
        try:
            if os.path.getsize(path) == 0:
                return True
        except OSError:
            return True
        if not decode:
            return False
        try:
            open_rgb(path, draft=64)
        except DataError:
            return True
        return False

    n = len(images)
    if not decode:
        return [i for i in range(n) if bad(i)]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        flags = list(pool.map(bad, range(n), chunksize=64))
    return [i for i, f in enumerate(flags) if f]


def drop_unreadable(images: ImageList, policy: str, *, what: str = "data") -> ImageList:
    """Apply ``data.bad_images``: "error" fails fast on missing/zero-byte files (the rest fail when
    loaded); "skip" decodes every file once and drops the unreadable ones with a warning."""
    if images.in_memory:
        return images
    skip = policy == "skip"
    bad = find_unreadable(images, decode=skip)
    if not bad:
        return images
    first = images.refs[bad[0]]
    if not skip:
        size = os.path.getsize(first) if os.path.isfile(first) else None
        reason = "file not found" if size is None else "zero-byte file"
        raise DataError(
            f"{first}: cannot read image ({reason}; {len(bad)} such file(s) in {what}); "
            "fix or remove the file, or set data.bad_images: skip"
        )
    logger.warning("%s: skipping %d unreadable image(s) (data.bad_images: skip), first: %s", what, len(bad), first)
    keep = np.setdiff1d(np.arange(len(images)), np.asarray(bad, dtype=np.int64))
    return images.subset(keep)
