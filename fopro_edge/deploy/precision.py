"""What precision an artifact file holds, read from the file itself (for files named on the
command line or found without an export manifest)."""

from __future__ import annotations

import re
from pathlib import Path

from fopro_edge.errors import ConfigError, MissingDependencyError


def onnx_precision(path: Path) -> str:
    """From the file's ``fopro_edge.precision`` metadata (every export writes it), else from its ops.
    Without the ``onnx`` package the metadata is read through ONNX Runtime; a file that does not
    carry it then stops with the install hint (exit 3) rather than be guessed fp32."""
    try:
        import onnx
    except ImportError:
        return _precision_from_runtime_metadata(Path(path))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ConfigError(f"--artifact: {path} is not a readable ONNX model ({type(e).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("fopro_edge.precision"):
        return meta["fopro_edge.precision"]
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"} & ops:
        return "int8"
    return "fp32"


def runtime_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props``, read through ONNX Runtime (no onnx package needed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError(f"reading {path} needs onnx or onnxruntime: pip install onnxruntime") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise ConfigError(f"--artifact: {path} is not a readable ONNX model ({type(e).__name__})") from None
    return dict(session.get_modelmeta().custom_metadata_map)


def _precision_from_runtime_metadata(path: Path) -> str:
    precision = runtime_metadata(path).get("fopro_edge.precision")
    if not precision:
        raise MissingDependencyError(f"{path} does not record its precision in its metadata; reading it from the "
                                     "graph needs onnx: pip install onnx")
    return precision


def ir_precision(path: Path) -> str:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    m = re.search(r'<weights_precision\s+value="(\w+)"', text)
    if m:
        return m.group(1)
    if 'type="FakeQuantize"' in text:
        return "int8"
    if re.search(r'type="Const"[^>]*>\s*<data[^>]*element_type="f16"', text):
        return "fp16"
    return "fp32"


def engine_precision(path: Path) -> str:
    """A TensorRT engine does not say; ``build_engine.sh`` names it ``model.<precision>.engine``."""
    low = Path(path).name.lower()
    return next((p for p in ("int8", "fp16", "fp32") if p in low), "unknown")
