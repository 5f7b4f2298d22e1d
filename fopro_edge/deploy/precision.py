"""What precision an artifact file holds, read from the file itself (for files named on the
command line or found without an export manifest)."""

from __future__ import annotations

import re
from pathlib import Path

from fopro_edge.errors import ConfigError


def onnx_precision(path: Path) -> str:
    try:
        import onnx
    except ImportError:
        return "fp32"
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
