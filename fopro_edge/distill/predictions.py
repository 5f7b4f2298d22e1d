"""A run's per-image test predictions: ``metrics/test_predictions.npz``.

Written by the distill evaluation next to ``metrics.json`` (before it, so a run whose metrics exist
has its predictions too), read by ``fopro-edge ablate`` for paired comparisons image by image.
Arrays, in test-split order: ``ids`` (the image ids of ``splits.json``), ``labels``, ``logits`` (the
plain student logits, float32), ``predictions`` (what ``metrics.json`` was computed from: the argmax
of the logits after the run's logit adjustment) and ``tau`` (that adjustment). No pickled objects.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fopro_edge.errors import DataError
from fopro_edge.io import atomic_write_bytes

KEYS = ("ids", "labels", "logits", "predictions", "tau")


@dataclass(frozen=True)
class TestPredictions:
    __test__ = False  # not a pytest class

    ids: np.ndarray  # str
    labels: np.ndarray  # int64
    logits: np.ndarray  # float32, images x classes
    predictions: np.ndarray  # int64
    tau: float


def save_predictions(
    path: str | Path, *, ids: Sequence[str], labels: np.ndarray, logits: np.ndarray, predictions: np.ndarray, tau: float
) -> Path:
    """Write the arrays atomically as an uncompressed ``.npz``."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    predictions = np.asarray(predictions, np.int64).reshape(-1)
    logits = np.asarray(logits, np.float32)
    if not (len(ids) == len(labels) == len(predictions) == len(logits)):
        raise ValueError(f"lengths differ: {len(ids)} ids, {len(labels)} labels, {len(predictions)} predictions, "
                         f"{len(logits)} logit rows")
    buf = io.BytesIO()
    np.savez(buf, ids=np.asarray(list(ids), dtype=str), labels=labels, logits=logits, predictions=predictions,
             tau=np.float64(tau))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_predictions(path: str | Path) -> TestPredictions:
    """Read and check a file written by :func:`save_predictions`; :class:`DataError` naming the file otherwise."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)} (re-run the evaluation that wrote it)")
            p = TestPredictions(z["ids"].astype(str), z["labels"].astype(np.int64), z["logits"].astype(np.float32),
                                z["predictions"].astype(np.int64), float(z["tau"]))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable predictions file ({e}); delete it to fall back to metrics.json") from None
    n = len(p.labels)
    if not (p.ids.shape == (n,) and p.predictions.shape == (n,) and p.logits.ndim == 2 and len(p.logits) == n):
        raise DataError(f"{path}: arrays of different lengths (ids {p.ids.shape}, labels {p.labels.shape}, "
                        f"predictions {p.predictions.shape}, logits {p.logits.shape})")
    return p
