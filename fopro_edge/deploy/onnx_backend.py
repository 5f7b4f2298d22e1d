"""ONNX export of the student (normalisation baked in), metadata, checker and the no-FFT assertion."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fopro_edge.deploy.artifact import ModelArtifact
from fopro_edge.deploy.contract import preprocessing_contract
from fopro_edge.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

ONNX_HINT = "ONNX export needs onnx and onnxruntime: pip install 'fopro-edge[onnx]'"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
META_PREFIX = "fopro_edge."

# Spectral ops that must never reach a deployed graph (the Fourier prompt is training-only).
FFT_OP_TYPES = frozenset({"DFT", "STFT", "FFT", "IFFT", "RFFT", "IRFFT", "Rfft", "Irfft", "FFT2", "IFFT2"})
_FFT_SUBSTRINGS = ("fft", "dft", "stft")


class ForbiddenOpError(ConfigError):
    """A graph holds an op that must not be deployed (DFT/STFT/FFT)."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(ONNX_HINT) from None
    return onnx


def _iter_nodes(graph, where: str = "graph") -> Iterator[tuple[str, Any]]:
    """Every node of a graph, its subgraphs (If/Loop/Scan bodies) included."""
    for node in graph.node:
        yield where, node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _iter_nodes(attr.g, f"{where}/{node.name or node.op_type}.{attr.name}")
            for i, g in enumerate(attr.graphs):
                yield from _iter_nodes(g, f"{where}/{node.name or node.op_type}.{attr.name}[{i}]")


def find_fft_ops(model_or_path: Any) -> list[str]:
    """Descriptions (``where: op_type 'name'``) of every DFT/STFT/FFT-like node, functions included."""
    onnx = _onnx()
    model = onnx.load(str(model_or_path), load_external_data=False) if isinstance(model_or_path, (str, Path)) else model_or_path
    found = []
    sources = [("graph", model.graph)] + [(f"function {f.domain}:{f.name}", f) for f in model.functions]
    for label, container in sources:
        for where, node in _iter_nodes(container, label):
            op = node.op_type
            if op in FFT_OP_TYPES or any(s in op.lower() for s in _FFT_SUBSTRINGS):
                found.append(f"{where}: {node.domain or 'ai.onnx'}:{op} '{node.name}'")
    return found


def assert_no_fft(model_or_path: Any, what: str | None = None) -> None:
    """Raise :class:`ForbiddenOpError` if the graph holds any DFT/STFT/FFT-like op.

    Works on exported and user-supplied ONNX files alike.
    """
    found = find_fft_ops(model_or_path)
    if found:
        name = what or (str(model_or_path) if isinstance(model_or_path, (str, Path)) else "ONNX model")
        more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
        raise ForbiddenOpError(
            f"{name}: {len(found)} FFT-like op(s) in the graph: {'; '.join(found[:3])}{more} — the Fourier prompt "
            "is training-only; export the Student alone (no FPG, no EKD heads)"
        )


def build_metadata(info: Any, *, opset: int, dynamic_batch: bool, batch_size: int, mean: Any, std: Any) -> dict[str, str]:
    """``metadata_props`` of an exported student (all values are strings; lists as JSON)."""
    size = info.image_size
    batch = "N" if dynamic_batch else str(batch_size)
    la = getattr(info, "logit_adjust", None) or {}
    adjust = {f"{META_PREFIX}logit_adjust": json.dumps({"tau": float(la["tau"]), "class_prior": list(la["class_prior"]),
                                                        "applied": "in the classifier bias: logits - tau * log(prior)"})
              } if la.get("tau") else {}
    return {**adjust,
        f"{META_PREFIX}format": "fopro-edge-student/1",
        f"{META_PREFIX}model": str(info.model),
        f"{META_PREFIX}class_names": json.dumps(list(info.class_names)),
        f"{META_PREFIX}rare_classes": json.dumps(list(info.rare_classes)),
        f"{META_PREFIX}input_size": json.dumps([3, size, size]),
        f"{META_PREFIX}input": f"{INPUT_NAME}: float32 RGB in [0, 1], NCHW {batch}x3x{size}x{size}; normalisation is inside the graph",
        f"{META_PREFIX}normalization": json.dumps({"mean": [float(v) for v in mean], "std": [float(v) for v in std]}),
        f"{META_PREFIX}preprocessing": json.dumps(preprocessing_contract(size, mean, std)),
        f"{META_PREFIX}source_checkpoint": Path(info.checkpoint).name,
        f"{META_PREFIX}source_checkpoint_sha256": str(info.sha256),
        f"{META_PREFIX}opset": str(opset),
        f"{META_PREFIX}precision": "fp32",  # a quantized copy overwrites it (copy_metadata)
    }


def set_metadata(model: Any, metadata: Mapping[str, str]) -> None:
    """Replace/add ``metadata_props`` entries on an in-memory ONNX model."""
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=str(v))


def read_metadata(model_or_path: Any) -> dict[str, str]:
    """``metadata_props`` as a dict; of a file, through ONNX Runtime where the onnx package is absent
    (a device may have the runtime alone)."""
    if isinstance(model_or_path, (str, Path)):
        try:
            import onnx
        except ImportError:
            from fopro_edge.deploy.precision import runtime_metadata

            return runtime_metadata(Path(model_or_path))
        model_or_path = onnx.load(str(model_or_path), load_external_data=False)
    return {p.key: p.value for p in model_or_path.metadata_props}


def copy_metadata(src: str | Path, dst: str | Path, extra: Mapping[str, str] | None = None) -> None:
    """Carry the student's metadata onto a derived model file (e.g. after quantization)."""
    onnx = _onnx()
    model = onnx.load(str(dst))
    set_metadata(model, {**read_metadata(src), **(extra or {})})
    onnx.save(model, str(dst))


def check_model(path: str | Path) -> None:
    """``onnx.checker`` (full check, with shape inference) + the no-FFT assertion."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        first = (str(e).strip().splitlines() or ["invalid model"])[0]
        raise ConfigError(f"{path}: onnx.checker rejected the model: {first}") from None
    assert_no_fft(path)


def export_onnx(
    student: Any,
    info: Any,
    out_path: str | Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    batch_size: int = 1,
) -> ModelArtifact:
    """Export ``student`` (a :class:`~fopro_edge.models.student.Student`) to ONNX with the legacy
    TorchScript exporter (``dynamo=False``: it honours opset 17 and writes one self-contained file),
    add the metadata, run ``onnx.checker`` and assert that no FFT op is present."""
    onnx = _onnx()
    import torch

    if opset < 17:
        raise ConfigError(f"opset: {opset} is too old (>= 17 needed)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = info.image_size
    student = student.eval().cpu()
    dummy = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))  # global RNG untouched
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation + tracer warnings
        torch.onnx.export(
            student,
            (dummy,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(tmp))
    meta = build_metadata(
        info, opset=opset, dynamic_batch=dynamic_batch, batch_size=batch_size,
        mean=student.mean.flatten().tolist(), std=student.std.flatten().tolist(),
    )
    set_metadata(model, meta)
    model.producer_name = "fopro-edge"
    onnx.save(model, str(tmp))
    tmp.replace(out_path)
    check_model(out_path)
    log.info("ONNX: %s (opset %d, %s batch)", out_path, opset, "dynamic" if dynamic_batch else f"fixed {batch_size}")
    return ModelArtifact.from_files(
        out_path, "onnx", "fp32", parent=info.sha256,
        metadata={"opset": opset, "dynamic_batch": dynamic_batch, "batch_size": batch_size, "input_name": INPUT_NAME},
    )


def subtract_from_logits(path: str | Path, values: Sequence[float]) -> None:
    """Rewrite ``path`` so that its output ``logits`` is what it was minus ``values`` (one per class):
    an ``Add`` of a constant after the last node. Metadata and everything else stay as they are."""
    import numpy as np

    onnx = _onnx()
    from onnx import helper, numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    g = model.graph
    raw = f"{OUTPUT_NAME}_before_offsets"
    for node in g.node:
        node.output[:] = [raw if o == OUTPUT_NAME else o for o in node.output]
        node.input[:] = [raw if i == OUTPUT_NAME else i for i in node.input]
    const = numpy_helper.from_array(-np.asarray(values, np.float32).reshape(1, -1), "logit_offsets")
    g.initializer.append(const)
    g.node.append(helper.make_node("Add", [raw, const.name], [OUTPUT_NAME], name="logit_offsets"))
    onnx.checker.check_model(model)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
