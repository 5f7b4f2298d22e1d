"""ONNX Runtime static INT8 (QDQ): pre-processing, quantization, activation-format choice by
timing, TensorRT explicit-quantization rules, and the per-node sensitivity ranking for repair."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fopro_edge.deploy.artifact import ModelArtifact
from fopro_edge.deploy.calibration import ort_reader
from fopro_edge.deploy.onnx_backend import INPUT_NAME, check_model, copy_metadata
from fopro_edge.deploy.runners import ORT_HINT, OrtRunner
from fopro_edge.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)


def _quant():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise MissingDependencyError(ORT_HINT) from None
    return quantization


class _DropRootInfo(logging.Filter):
    """ORT's quantizer logs chatter ("Created a copy of bias input ...") on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ORT's prints and root-logger INFO lines while quantizing (kept at debug level)."""
    root, flt, buf = logging.getLogger(), _DropRootInfo(), io.StringIO()
    root.addFilter(flt)
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        root.removeFilter(flt)
        if buf.getvalue().strip():
            log.debug("onnxruntime.quantization: %s", buf.getvalue().strip()[:2000])


def preprocess(src: str | Path, dst: str | Path) -> Path:
    """``quant_pre_process``: shape inference + graph optimisation before quantization."""
    q = _quant()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    del q
    with _quiet():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    return Path(dst)


@dataclass(frozen=True)
class QuantSettings:
    """One ORT quantization recipe (what a repair try changes is recorded from here)."""

    method: str = "minmax"  # minmax | entropy | percentile
    activation_type: str = "u8"  # u8 | s8
    per_channel: bool = True
    reduce_range: bool = False
    symmetric: bool = False  # TensorRT: symmetric activations and weights, float bias
    op_types: tuple[str, ...] = ()  # () = every op type ORT can quantize
    nodes_to_exclude: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantize_qdq(
    pre_path: str | Path,
    out_path: str | Path,
    images: np.ndarray,
    settings: QuantSettings,
    *,
    batch_size: int = 8,
    fixed_batch: bool = False,
    cache_path: str | Path | None = None,
    metadata_source: str | Path | None = None,
    target: str = "onnxruntime",
) -> ModelArtifact:
    """Static QDQ quantization of a pre-processed float model with int8 per-channel weights.

    ``cache_path`` reuses the calibration ranges between runs that differ only in format.
    """
    q = _quant()
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    if settings.method not in methods:
        raise ConfigError(f"calibration.method: '{settings.method}' is not one of {', '.join(methods)}")
    act = q.QuantType.QInt8 if settings.activation_type == "s8" else q.QuantType.QUInt8
    extra: dict[str, Any] = {"WeightSymmetric": True}
    if settings.symmetric:
        extra.update({"ActivationSymmetric": True, "QuantizeBias": False})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if settings.method != "minmax" and not fixed_batch:
        batch_size = 1  # histogram calibrators stack per-batch outputs: equal batch sizes are required
    reader = ort_reader(images, INPUT_NAME, batch_size, fixed_batch=fixed_batch)
    with _quiet():
        q.quantize_static(
            str(pre_path),
            str(out_path),
            reader,
            quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types) or None,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=act,
            weight_type=q.QuantType.QInt8,
            nodes_to_exclude=list(settings.nodes_to_exclude) or None,
            calibrate_method=methods[settings.method],
            extra_options=extra,
            **_cache_kwargs(q.quantize_static, cache_path),
        )
    if metadata_source:
        copy_metadata(metadata_source, out_path, {
            "fopro_edge.precision": "int8",
            "fopro_edge.quantization": _json({**settings.to_dict(), "calibration_images": int(len(images))}),
        })
    check_model(out_path)
    return ModelArtifact.from_files(
        out_path, target, "int8",
        metadata={**settings.to_dict(), "calibration_images": int(len(images)), "format": "QDQ"},
    )


def _cache_kwargs(quantize_static: Any, cache_path: str | Path | None) -> dict[str, Any]:
    """``calibration_cache_path`` where this onnxruntime has it (1.27+); older ones calibrate again."""
    if cache_path and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        return {"calibration_cache_path": str(cache_path)}
    return {}


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def time_model(path: str | Path, image: np.ndarray, *, threads: int | None, runs: int, warmup: int) -> dict[str, float]:
    """Batch-1 latency of an ONNX model in ORT on this CPU: median and min over ``runs`` calls (ms)."""
    x = np.ascontiguousarray(image[:1], dtype=np.float32)
    with OrtRunner(path, threads=threads) as r:
        for _ in range(warmup):
            r.infer(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            r.infer(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class ActivationChoice:
    chosen: str  # u8 | s8
    reason: str
    timings: dict[str, dict[str, float]]
    cpu: str
    threads: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_activation_type(
    pre_path: str | Path,
    work_dir: str | Path,
    images: np.ndarray,
    settings: QuantSettings,
    *,
    threads: int | None,
    runs: int,
    warmup: int,
    batch_size: int,
    fixed_batch: bool,
    float_path: str | Path | None = None,
) -> ActivationChoice:
    """Quantize with unsigned (U8S8) and signed (S8S8) activations, time both on this CPU at
    batch 1 and return the faster. Signed activations can run slower than fp32 in ORT on x86
    (MobileNetV3 / EfficientNet), so the choice is measured, not assumed."""
    work_dir = Path(work_dir)
    cache = work_dir / "calibration_ranges.json"
    cache.unlink(missing_ok=True)
    timings: dict[str, dict[str, float]] = {}
    for act in ("u8", "s8"):
        path = work_dir / f"probe_{act}.onnx"
        quantize_qdq(pre_path, path, images, QuantSettings(**{**settings.to_dict(), "activation_type": act}),
                     batch_size=batch_size, fixed_batch=fixed_batch, cache_path=cache)
        timings[act] = time_model(path, images, threads=threads, runs=runs, warmup=warmup)
        path.unlink(missing_ok=True)
    if float_path:
        timings["fp32"] = time_model(float_path, images, threads=threads, runs=runs, warmup=warmup)
    cache.unlink(missing_ok=True)
    chosen = min(("u8", "s8"), key=lambda a: timings[a]["median_ms"])
    other = "s8" if chosen == "u8" else "u8"
    reason = (f"{chosen} activations ran faster on this CPU: median {timings[chosen]['median_ms']:.3f} ms vs "
              f"{timings[other]['median_ms']:.3f} ms ({other}) at batch 1 over {runs} runs")
    log.info("ORT INT8 activation format: %s", reason)
    return ActivationChoice(chosen, reason, timings, cpu_name(), threads)


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def int8_weighted_ops(path: str | Path) -> tuple[int, int]:
    """``(quantized, total)``: weighted ops whose constant weight comes through DequantizeLinear, of
    all weighted ops with a constant weight."""
    import onnx

    g = onnx.load(str(path)).graph
    consts = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    producer = {o: n for n in g.node for o in n.output}
    quantized = total = 0
    for node in g.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        src = producer.get(node.input[1])
        if src is not None and src.op_type == "DequantizeLinear":
            q = producer.get(src.input[0])
            weight = src.input[0] in consts or (q is not None and q.op_type == "QuantizeLinear" and q.input[0] in consts)
            quantized += weight
            total += weight
        elif node.input[1] in consts:
            total += 1
    return quantized, total


# --------------------------------------------------------------------------- TensorRT QDQ rules


def check_trt_qdq(model_or_path: Any) -> list[str]:
    """Violations of TensorRT's explicit-quantization rules in a QDQ graph (empty = conforms): the
    placement (:func:`trt_placement_problems`), INT8 Q/DQ with zero points present and all 0
    (symmetric), per-tensor activation scales, per-channel weight scales on the output-channel axis,
    no INT32 bias DequantizeLinear."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    g = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in g.node:
        for name in node.input:
            consumers[name].append(node)
    out: list[str] = trt_placement_problems(model)
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return ["no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized graph"]
    for n in qdq:
        label = f"{n.op_type} '{n.name}'"
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        scale = consts.get(n.input[1])
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            out.append(f"{label}: no zero point (the type defaults to uint8; TensorRT needs int8 with zero point 0)")
        else:
            if zp.dtype != np.int8:
                out.append(f"{label}: zero point of type {zp.dtype} (TensorRT needs int8)")
            if np.any(zp != 0):
                out.append(f"{label}: non-zero zero point (asymmetric; TensorRT needs symmetric, zero point 0)")
        if scale is None:
            out.append(f"{label}: scale is not a constant")
            continue
        data = consts.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if data is not None and data.dtype == np.int32:
            out.append(f"{label}: INT32 bias dequantization (TensorRT reads INT8 Q/DQ only; keep biases in float)")
            continue
        if scale.size == 1:
            continue
        if data is None:
            out.append(f"{label}: per-channel scale on an activation (TensorRT needs per-tensor activation scales)")
            continue
        users = consumers.get(n.output[0], [])
        for u in users:
            want = _weight_output_axis(u, data.ndim)
            if want is None:
                continue
            ax = axis if axis >= 0 else axis + data.ndim
            if ax != want or scale.size != data.shape[want]:
                out.append(
                    f"{label}: per-channel weight scale on axis {ax} ({scale.size} values) for {u.op_type} "
                    f"'{u.name}'; the output-channel axis is {want} ({data.shape[want]} channels)"
                )
    return out


def _weight_output_axis(node: Any, ndim: int) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return ndim - 1
    return None


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _activation_qdq(g: Any) -> tuple[set[str], dict[str, Any], dict[str, list[Any]]]:
    """Initializer/constant names, producer of every tensor, consumers of every tensor."""
    consts = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in g.node:
        for name in n.input:
            consumers[name].append(n)
    return consts, producer, consumers


def trt_placement_problems(model: Any) -> list[str]:
    """Where Q/DQ sit against TensorRT's fusion rules: activations are quantized only as inputs of
    weighted ops and residual Adds (not at the output of a convolution in front of its activation,
    the squeeze-excitation gates or pooling), and a weighted op with INT8 weights reads an INT8 input."""
    g = model.graph
    consts, producer, consumers = _activation_qdq(g)
    out: list[str] = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] not in consts:
            for u in consumers[n.output[0]]:
                if u.op_type not in (*WEIGHTED_OPS, "Add"):
                    out.append(f"DequantizeLinear '{n.name}' feeds {u.op_type} '{u.name}' (TensorRT fuses Q/DQ only "
                               "in front of weighted ops and residual Adds)")
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1:
            w, x = producer.get(n.input[1]), producer.get(n.input[0])
            w_int8 = w is not None and w.op_type == "DequantizeLinear" and w.input[0] in consts
            if w_int8 and (x is None or x.op_type != "DequantizeLinear"):
                out.append(f"{n.op_type} '{n.name}': INT8 weights but a float input (TensorRT cannot run it in INT8)")
    return out


def place_for_tensorrt(path: str | Path) -> int:
    """Rewrite a QDQ model in place to TensorRT's placement: an activation's Q/DQ stays only for
    consumers that are weighted ops or Adds; every other consumer reads the float tensor again, and
    pairs left without consumers go. Returns how many consumer edges were moved off Q/DQ."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    consts, producer, consumers = _activation_qdq(g)
    moved, dead = 0, []
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] not in consts]:
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        for u in consumers[dq.output[0]]:
            if u.op_type in (*WEIGHTED_OPS, "Add"):
                continue
            for i, name in enumerate(u.input):
                if name == dq.output[0]:
                    u.input[i] = q.input[0]
                    moved += 1
    consts, producer, consumers = _activation_qdq(g)
    graph_outputs = {o.name for o in g.output}
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] not in consts]:
        if not consumers[dq.output[0]] and dq.output[0] not in graph_outputs:
            dead.append(dq)
    for n in dead:
        g.node.remove(n)
    consts, producer, consumers = _activation_qdq(g)
    for q in [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in consts]:
        if not consumers[q.output[0]]:
            g.node.remove(q)
    onnx.save(model, str(path))
    return moved


def assert_trt_qdq(path: str | Path) -> None:
    problems = check_trt_qdq(path)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(f"{path}: not a TensorRT explicit-quantization graph: {'; '.join(problems[:3])}{more}")


# --------------------------------------------------------------------------- sensitivity ranking


def rank_sensitive_nodes(
    float_path: str | Path,
    qdq_path: str | Path,
    images: np.ndarray,
    *,
    op_types: Sequence[str] = ("Conv", "Gemm", "MatMul"),
) -> list[tuple[str, float]]:
    """Quantizable nodes of ``float_path`` ranked by how much INT8 hurts them, worst first.

    Uses ORT's ``qdq_loss_debug``: the float and the QDQ model run on the same images, and each
    activation's SQNR (float vs QDQ, dB) is measured. A node's score is the SQNR it loses between
    its input and its output, so error accumulated upstream is not blamed on it.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )
    import onnx

    with tempfile.TemporaryDirectory(prefix="fopro-rank-") as tmp:
        aug_f, aug_q = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(float_path), str(aug_f))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
        f_acts = collect_activations(str(aug_f), ort_reader(images, INPUT_NAME, 1))
        q_acts = collect_activations(str(aug_q), ort_reader(images, INPUT_NAME, 1))
    errors = compute_activation_error(create_activation_matching(q_acts, f_acts))
    sqnr = {k: v["xmodel_err"] for k, v in errors.items() if "xmodel_err" in v}
    model = onnx.load(str(float_path))
    ranked: list[tuple[str, float]] = []
    for node in model.graph.node:
        if node.op_type not in op_types or not node.name:
            continue
        out = sqnr.get(node.output[0])
        if out is None:  # e.g. the output of a fused activation is quantized instead
            nxt = [n for n in model.graph.node if node.output[0] in n.input]
            out = next((sqnr[n.output[0]] for n in nxt if n.output and n.output[0] in sqnr), None)
        if out is None:
            continue
        ins = [sqnr[i] for i in node.input[:1] if i in sqnr]
        in_sqnr = min(ins) if ins else float(out)
        ranked.append((node.name, float(in_sqnr - out)))
    ranked.sort(key=lambda t: -t[1])
    return ranked
