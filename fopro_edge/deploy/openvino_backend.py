"""OpenVINO IR (FP32, FP16-compressed weights) and INT8 through NNCF, with the calibration count
passed explicitly as ``subset_size`` and recorded in the IR."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fopro_edge.deploy import signal_stack
from fopro_edge.deploy.artifact import ModelArtifact
from fopro_edge.deploy.calibration import nncf_dataset
from fopro_edge.deploy.runners import OPENVINO_HINT
from fopro_edge.errors import MissingDependencyError

log = logging.getLogger(__name__)


def _ov():
    try:
        import openvino as ov
    except ImportError:
        raise MissingDependencyError(OPENVINO_HINT) from None
    return ov


def _nncf():
    try:
        import nncf
    except ImportError:
        raise MissingDependencyError(OPENVINO_HINT) from None
    return nncf


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF draws progress bars on stdout; a library must not print (kept at debug level)."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        if buf.getvalue().strip():
            log.debug("nncf: %s", buf.getvalue().strip()[-2000:])


def _set_rt_info(model: Any, metadata: Mapping[str, Any]) -> None:
    for k, v in metadata.items():
        model.set_rt_info(str(v), ["fopro_edge", k.removeprefix("fopro_edge.")])


def _save(model: Any, xml_path: Path, *, compress_to_fp16: bool, target_precision: str, parent: str | None,
          metadata: Mapping[str, Any]) -> ModelArtifact:
    ov = _ov()
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    return ModelArtifact.from_files(
        xml_path, "openvino", target_precision, extra_files=[xml_path.with_suffix(".bin")], parent=parent,
        metadata=dict(metadata),
    )


def read_onnx_as_ov(onnx_path: str | Path) -> Any:
    return _ov().convert_model(str(onnx_path))


def convert_ir(
    onnx_path: str | Path, xml_path: str | Path, *, precision: str, metadata: Mapping[str, str], parent: str | None = None
) -> ModelArtifact:
    """ONNX -> IR. ``precision="fp16"`` stores weights as fp16 (``compress_to_fp16``); the math
    precision at run time is the runtime's ``INFERENCE_PRECISION_HINT``, not the file's."""
    model = read_onnx_as_ov(onnx_path)
    _set_rt_info(model, {**metadata, "weights_precision": precision})
    return _save(model, Path(xml_path), compress_to_fp16=precision == "fp16", target_precision=precision,
                 parent=parent, metadata={"weights": precision})


@dataclass(frozen=True)
class NNCFSettings:
    """One NNCF recipe (what a repair try changes is recorded from here)."""

    preset: str = "mixed"
    fast_bias_correction: bool = True
    range_estimator: str = "minmax"  # default (NNCF's own) | minmax | mean_minmax | mean_quantile
    ignored_types: tuple[str, ...] = ()
    ignored_patterns: tuple[str, ...] = ()
    ignored_onnx_nodes: tuple[str, ...] = ()  # the most sensitive nodes, from the ranking
    overflow_fix: str = "first_layer_only"  # enable: 7-bit weights everywhere (CPUs without VNNI) | first_layer_only | disable

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ignored_scope(s: NNCFSettings):
    nncf = _nncf()
    patterns = list(s.ignored_patterns)
    # An ONNX node "/a/Conv" becomes OpenVINO op "/a/Conv/WithoutBiases" (+ the bias Add "/a/Conv").
    patterns += [re.escape(n) + r"(/.*)?" for n in s.ignored_onnx_nodes]
    if not patterns and not s.ignored_types:
        return None
    return nncf.IgnoredScope(patterns=patterns, types=list(s.ignored_types), validate=True)


def _advanced(s: NNCFSettings):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    kwargs: dict[str, Any] = {"overflow_fix": OverflowFix(s.overflow_fix)}
    if s.range_estimator != "default":
        kwargs["activations_range_estimator_params"] = {
            "minmax": RangeEstimatorParametersSet.MINMAX, "mean_minmax": RangeEstimatorParametersSet.MEAN_MINMAX,
            "mean_quantile": RangeEstimatorParametersSet.MEAN_QUANTILE}[s.range_estimator]
    return AdvancedQuantizationParameters(**kwargs)


def quantize_ir(
    onnx_path: str | Path,
    xml_path: str | Path,
    images: np.ndarray,
    settings: NNCFSettings,
    *,
    metadata: Mapping[str, str],
    parent: str | None = None,
) -> ModelArtifact:
    """INT8 IR through ``nncf.quantize`` with ``subset_size = len(images)`` (one image per item),
    so NNCF's default cap of 300 never silently drops calibration images."""
    nncf = _nncf()
    model = read_onnx_as_ov(onnx_path)
    subset = int(len(images))
    with _quiet(), signal_stack.kept():  # NNCF compiles models in Cores of its own
        q = nncf.quantize(
            model,
            nncf_dataset(images),
            preset=nncf.QuantizationPreset(settings.preset),
            subset_size=subset,
            fast_bias_correction=settings.fast_bias_correction,
            ignored_scope=_ignored_scope(settings),
            advanced_parameters=_advanced(settings),
        )
    meta = {**settings.to_dict(), "subset_size": subset, "calibration_images": subset, "api": "nncf.quantize"}
    _set_rt_info(q, {**metadata, "weights_precision": "int8", "nncf_subset_size": subset})
    return _save(q, Path(xml_path), compress_to_fp16=False, target_precision="int8", parent=parent, metadata=meta)


def quantize_ir_with_accuracy_control(
    onnx_path: str | Path,
    xml_path: str | Path,
    images: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    settings: NNCFSettings,
    *,
    class_names: Sequence[str],
    rare_ids: Sequence[int],
    max_drop: float,
    metadata: Mapping[str, str],
    inference_precision: str = "f32",
    parent: str | None = None,
) -> ModelArtifact:
    """INT8 IR through ``nncf.quantize_with_accuracy_control``, driven by this project's
    rare-class score (mean rare-class recall; see :func:`fopro_edge.deploy.gate.rare_class_score`):
    NNCF reverts the layers that cost the most of it until the drop is within ``max_drop``."""
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from fopro_edge.deploy.gate import rare_class_score

    num_classes = len(class_names)

    def validate(compiled: Any, items: Any) -> float:
        preds, labels = [], []
        for image, label in items:
            preds.append(int(np.argmax(compiled(image)[0])))
            labels.append(int(label))
        return rare_class_score(np.asarray(labels), np.asarray(preds), num_classes, rare_ids)

    model = read_onnx_as_ov(onnx_path)
    subset = int(len(images))
    with _quiet(), signal_stack.kept():  # NNCF compiles models in Cores of its own
        q = nncf.quantize_with_accuracy_control(
            model,
            nncf_dataset(images),
            nncf_dataset(val_images, val_labels),
            validate,
            max_drop=max_drop,
            preset=nncf.QuantizationPreset(settings.preset),
            subset_size=subset,
            fast_bias_correction=settings.fast_bias_correction,
            ignored_scope=_ignored_scope(settings),
            advanced_quantization_parameters=_advanced(settings),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                ranking_subset_size=int(len(val_images))
            ),
        )
    meta = {**settings.to_dict(), "subset_size": subset, "calibration_images": subset,
            "api": "nncf.quantize_with_accuracy_control", "metric": "mean rare-class recall",
            "max_drop": max_drop, "validation_images": int(len(val_images))}
    _set_rt_info(q, {**metadata, "weights_precision": "int8", "nncf_subset_size": subset})
    return _save(q, Path(xml_path), compress_to_fp16=False, target_precision="int8", parent=parent, metadata=meta)


def save_ir(model: Any, xml_path: str | Path, *, metadata: Mapping[str, Any], parent: str | None,
            artifact_metadata: Mapping[str, Any]) -> ModelArtifact:
    """An INT8 OpenVINO model (e.g. converted from a fake-quantized PyTorch model) saved as IR."""
    _set_rt_info(model, {**metadata, "weights_precision": "int8"})
    return _save(model, Path(xml_path), compress_to_fp16=False, target_precision="int8", parent=parent,
                 metadata=dict(artifact_metadata))


_WEIGHTED = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"})
_PASS_THROUGH = frozenset({"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze"})
_INT_TYPES = frozenset({"i8", "u8", "i4", "u4"})


def int8_weighted_ops(xml_path: str | Path) -> tuple[int, int]:
    """``(quantized, total)``: weighted ops of an IR whose constant weight is stored in int8 or
    passes a FakeQuantize, of all weighted ops with a constant weight."""
    model = _ov().Core().read_model(str(xml_path))
    quantized = total = 0
    for op in model.get_ops():
        if op.get_type_name() not in _WEIGHTED or op.get_input_size() < 2:
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in _PASS_THROUGH:
            node = node.input_value(0).get_node()
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            source = node.input_value(0).get_node()
            while source.get_type_name() in _PASS_THROUGH:
                source = source.input_value(0).get_node()
            if source.get_type_name() == "Constant":
                quantized += 1
                total += 1
        elif kind == "Constant":
            total += 1
            quantized += node.get_output_element_type(0).get_type_name() in _INT_TYPES
    return quantized, total


def read_rt_info(xml_path: str | Path, section: Sequence[str] = ("fopro_edge",)) -> dict[str, str]:
    """Flat ``{key: value}`` of one rt_info section of an IR (``("nncf", "quantization")`` holds
    NNCF's parameters, ``subset_size`` included)."""
    ov = _ov()
    model = ov.Core().read_model(str(xml_path))
    path = list(section)
    if not model.has_rt_info(path):
        return {}
    out = {}
    for k, v in model.get_rt_info(path).astype(dict).items():
        if isinstance(v, dict):
            out[k] = "{...}"  # a nested section
            continue
        try:
            out[k] = v.astype(str) if hasattr(v, "astype") else str(v)
        except RuntimeError:
            out[k] = "{...}"
    return out


def opset() -> Any:
    """OpenVINO's opset 13 node factories: ``openvino.opset13`` (2025 on) or ``openvino.runtime.opset13``."""
    _ov()
    try:
        from openvino import opset13
    except ImportError:  # openvino < 2025
        from openvino.runtime import opset13
    return opset13


def subtract_from_logits(xml_path: str | Path, values: Sequence[float]) -> None:
    """Rewrite the IR so that its output is what it was minus ``values`` (one per class): an ``Add``
    of a constant in front of the result, which takes over the output's tensor names. rt_info stays."""
    ov = _ov()
    ops = opset()
    xml_path = Path(xml_path)
    model = ov.Core().read_model(str(xml_path))
    result = model.get_results()[0]
    source = result.input_value(0)
    add = ops.add(source, ops.constant(-np.asarray(values, np.float32).reshape(1, -1)), name="logit_offsets")
    names = source.get_names()
    source.get_tensor().set_names(set())
    add.output(0).get_tensor().set_names(names)
    result.input(0).replace_source_output(add.output(0))
    model.validate_nodes_and_infer_types()
    tmp = xml_path.with_name(f".{xml_path.stem}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    del model, result, source, add  # release the mapped .bin before it is replaced
    tmp.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
    tmp.replace(xml_path)
