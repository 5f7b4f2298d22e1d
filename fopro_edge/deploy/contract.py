"""The preprocessing contract: how an image file becomes a model input, written into every artifact
(ONNX metadata ``fopro_edge.preprocessing``, the IR's rt_info, the verification bundle) and applied
by ``predict`` with PIL alone, exactly as the eval transform does (torchvision resizes PIL images
with PIL): RGB, resize the short side (antialiased), centre crop, [0, 1] float32 NCHW. The mean/std
normalisation is inside the model."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fopro_edge.errors import ConfigError

_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values


def preprocessing_contract(image_size: int, mean: Sequence[float], std: Sequence[float], *,
                           interpolation: str = "bilinear") -> dict[str, Any]:
    return {
        "color": "RGB", "layout": "NCHW", "dtype": "float32", "value_range": [0.0, 1.0],
        "resize": {"short_side": int(image_size), "interpolation": interpolation, "antialias": True},
        "center_crop": [int(image_size), int(image_size)],
        "normalize": {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "applied": "inside the model"},
    }


def contract_of(artifact: Path) -> dict[str, Any] | None:
    """The contract an ONNX model or OpenVINO IR carries (``None`` when it has none)."""
    suffix = artifact.suffix.lower()
    if suffix == ".onnx":
        from fopro_edge.deploy.onnx_backend import read_metadata

        raw = read_metadata(artifact).get("fopro_edge.preprocessing")
    elif suffix == ".xml":
        from fopro_edge.deploy.openvino_backend import read_rt_info

        raw = read_rt_info(artifact).get("preprocessing")
    else:
        return None
    return json.loads(raw) if raw else None


def prepare_image(path: str | Path, contract: Mapping[str, Any]) -> np.ndarray:
    """One image file as the model input (3 x S x S float32 in [0, 1])."""
    from PIL import Image

    from fopro_edge.data.images import open_rgb

    resize, (ch, cw) = contract["resize"], contract["center_crop"]
    mode = resize.get("interpolation", "bilinear")
    if mode not in _FILTERS:
        raise ConfigError(f"preprocessing contract: unknown interpolation '{mode}' (one of {', '.join(_FILTERS)})")
    im = open_rgb(path)
    w, h = im.size
    short, size = min(w, h), int(resize["short_side"])
    if short != size:  # torchvision's Resize(int): the short side to size, the long side truncated
        long = int(size * max(w, h) / short)
        im = im.resize((size, long) if w <= h else (long, size), Image.Resampling(_FILTERS[mode]))
    w, h = im.size
    if (w, h) != (cw, ch):
        if w < cw or h < ch:
            raise ConfigError(f"{path}: {w}x{h} after resizing is smaller than the {cw}x{ch} crop")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        im = im.crop((left, top, left + cw, top + ch))
    return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
