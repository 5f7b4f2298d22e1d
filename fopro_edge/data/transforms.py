"""Image transforms: PIL RGB -> float tensor 3×H×W in [0, 1], never normalised.

Normalisation lives inside the models, so every runtime (PyTorch, ONNX, OpenVINO, TensorRT)
is fed the same [0, 1] RGB NCHW input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from fopro_edge.errors import DataError

AUGMENTS = ("none", "light", "timm")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
INTERPOLATION = "bilinear"  # the default of every split, so also of a run's eval transform
EVAL_CROP_PCT = 1.0  # eval: resize the short side to image_size, then centre crop it


class _ToRGB:
    """Make sure a PIL image is RGB (picklable, for DataLoader workers)."""

    def __call__(self, im: Image.Image) -> Image.Image:
        return im if im.mode == "RGB" else im.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def build_transform(
    image_size: int, augment: str, training: bool, *, interpolation: str = INTERPOLATION, flips: bool = True
) -> Callable[[Image.Image], torch.Tensor]:
    """The transform for one split.

    Eval (and ``augment="none"``): resize the short side to ``image_size`` + centre crop.
    ``"light"``: the same, then random h/v flips, a small random affine (rotation <= 15°, scale
    0.9-1.1) and mild colour jitter. ``"timm"``: timm's RandomResizedCrop (scale 0.35-1) + flips +
    colour jitter (no RandAugment). ``flips=False`` drops the flips (e.g. digits, text, laterality).
    """
    from torchvision import transforms as T
    from timm.data import create_transform

    if augment not in AUGMENTS:
        raise DataError(f"data.augment: unknown value '{augment}' (choose one of: {', '.join(AUGMENTS)})")
    if interpolation not in _INTERPOLATIONS:
        raise DataError(f"interpolation: unknown value '{interpolation}' (choose one of: {', '.join(_INTERPOLATIONS)})")
    if image_size < 1:
        raise DataError(f"data.image_size: must be >= 1, got {image_size}")
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if training and augment == "timm":
        tf = create_transform(
            image_size, is_training=True, scale=(0.35, 1.0), hflip=0.5 * flips, vflip=0.5 * flips, color_jitter=0.2,
            auto_augment=None, re_prob=0.0, interpolation=interpolation, mean=zero, std=one,
        )
        return T.Compose([_ToRGB(), tf])
    if training and augment == "light":
        mode = T.InterpolationMode(interpolation)
        return T.Compose([
            _ToRGB(),
            T.Resize(image_size, interpolation=mode, antialias=True),
            T.CenterCrop(image_size),
            T.RandomHorizontalFlip(0.5 * flips),
            T.RandomVerticalFlip(0.5 * flips),
            T.RandomAffine(degrees=15, scale=(0.9, 1.1), interpolation=mode),
            T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
            T.ToTensor(),
        ])
    tf = create_transform(image_size, is_training=False, crop_pct=EVAL_CROP_PCT, interpolation=interpolation, mean=zero, std=one)
    return T.Compose([_ToRGB(), tf])
