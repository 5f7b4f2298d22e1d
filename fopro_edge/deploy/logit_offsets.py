"""Per-class logit offsets: the systematic part of INT8's error, fitted and folded back out.

INT8 error is partly per-image noise and partly a shift of each class's logit that every image
shares. On MobileNetV3-Large seed 0 of the digits demo (OpenVINO, AVX2 CPU) the offsets of digit_8
and digit_4 are +0.71 and +0.67, and the rare close calls that IR lost without them went to those two
classes (benchmarks/results/int8_seeds_avx2_offsets_*.md). The shift is fitted on class-stratified
calibration images (train split: never a check image) against the FP32 student,
``quantized ≈ scale · fp32 + offset[class]`` with one common scale, and the artifact subtracts the
offsets with an ``Add`` on its output. A shift of all logits by the same
amount changes no prediction, so the offsets are centred.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LogitOffsets:
    offsets: tuple[float, ...]  # per class, centred; the artifact subtracts them
    scale: float  # the common scale of the INT8 logits against the FP32 ones (no prediction depends on it)
    images: int  # calibration images they were fitted on

    def to_dict(self) -> dict[str, Any]:
        return {"offsets": [round(v, 4) for v in self.offsets], "scale": round(self.scale, 4), "images": self.images}

    @property
    def largest(self) -> float:
        return max((abs(v) for v in self.offsets), default=0.0)


def fit_offsets(quantized: np.ndarray, reference: np.ndarray) -> LogitOffsets:
    """Least squares of ``quantized`` on ``reference`` (both images x classes) with one common scale
    and one offset per class."""
    q = np.asarray(quantized, np.float64)
    r = np.asarray(reference, np.float64)
    if q.shape != r.shape or q.ndim != 2 or len(q) == 0:
        raise ValueError(f"logit offsets need two equal (images, classes) arrays, got {q.shape} and {r.shape}")
    qc, rc = q - q.mean(0), r - r.mean(0)
    denom = float((rc * rc).sum())
    scale = float((qc * rc).sum() / denom) if denom > 0 else 1.0
    offsets = q.mean(0) - scale * r.mean(0)
    offsets -= offsets.mean()
    return LogitOffsets(tuple(float(v) for v in offsets), scale, len(q))
