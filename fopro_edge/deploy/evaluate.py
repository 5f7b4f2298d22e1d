"""Evaluate one artifact (or the PyTorch student) on a split, image by image against the student.

The same gate as ``export``, for a file made elsewhere or earlier, opened by the runtime the backend
registry names for its suffix (a user-supplied ``.onnx`` is first checked for FFT ops).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from fopro_edge.deploy.gate import GateReport
from fopro_edge.deploy.pipeline import ExportContext, resolve_source
from fopro_edge.deploy.profiles import GateConfig, OnnxProfile
from fopro_edge.deploy.runners import Runner, TorchRunner
from fopro_edge.errors import ConfigError

log = logging.getLogger(__name__)


def open_artifact(path: Path, *, inference_precision: str = "f32", threads: int | None = None) -> Runner:
    """A runner for an artifact file, from the backend registry entry of its suffix."""
    from fopro_edge.deploy import backends

    entry = backends.for_artifact(path)
    if entry is None:
        raise ConfigError(f"--artifact: {path}: unknown artifact type '{path.suffix}' "
                          f"(expected one of: {', '.join(backends.artifact_suffixes())})")
    options = {"inference_precision": inference_precision}
    return entry.open_runner(path, precision=entry.read_precision(path), threads=threads, options=options)


def _check_classes(path: Path, class_names: list[str]) -> None:
    if path.suffix.lower() != ".onnx":
        return
    from fopro_edge.deploy.onnx_backend import read_metadata

    raw = read_metadata(path).get("fopro_edge.class_names")
    if raw is not None and json.loads(raw) != class_names:
        raise ConfigError(f"--artifact: {path} was exported for classes {json.loads(raw)}, the checkpoint has {class_names}")


def evaluate(
    source: str | Path,
    artifact: str | Path | None = None,
    *,
    split: str = "val",
    inference_precision: str = "f32",
    threads: int | None = None,
    check: GateConfig | None = None,
) -> GateReport:
    """Per-class comparison of ``artifact`` (default: the student itself) with the PyTorch student."""
    checkpoint, _ = resolve_source(source)
    path = Path(artifact) if artifact is not None else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"--artifact: not found: {path}")
        if path.suffix.lower() == ".onnx":
            from fopro_edge.deploy.onnx_backend import assert_no_fft

            assert_no_fft(path)  # before any other work: a user-supplied graph may carry the Fourier prompt
    profile = OnnxProfile(threads=threads, check=replace(check or GateConfig(), split=split))
    x = ExportContext(checkpoint, "eval", profile, Path.cwd())
    if path is None:
        with TorchRunner(x.student, threads=threads) as r:
            return x.gate(r, step="pytorch", artifact=checkpoint, check_parity=True)
    _check_classes(path, x.class_names)
    with open_artifact(path, inference_precision=inference_precision, threads=threads) as r:
        exact = r.precision == "fp32" and r.info.get("inference_precision", "f32") == "f32"
        return x.gate(r, step=path.name, artifact=path, check_parity=exact)
