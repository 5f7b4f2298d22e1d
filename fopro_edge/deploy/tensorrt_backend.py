"""TensorRT: the portable part (TensorRT-ready ONNX, QDQ for INT8, the exact ``trtexec`` command)
and, where an NVIDIA GPU and the ``tensorrt`` package are present, the engine build through the
TensorRT 10 Python API with a timing cache and build metadata.

Engines are specific to a GPU model and a TensorRT version: build them on the device that runs
them (on a Jetson, with the same command), never copy them between machines.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fopro_edge.deploy.artifact import ModelArtifact
from fopro_edge.deploy.runners import TENSORRT_HINT
from fopro_edge.errors import ConfigError, FoproEdgeError, MissingDependencyError
from fopro_edge.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


class EngineBuildError(FoproEdgeError):
    """TensorRT could not parse the ONNX model or build the engine."""


def tensorrt_status() -> tuple[bool, str]:
    """``(True, "")`` when an engine can be built here, else ``(False, why not)``."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt Python package is not installed"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no NVIDIA GPU is visible (torch.cuda.is_available() is false)"
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False, "torch is needed to drive the GPU"
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken install raises many kinds of errors
        return False, f"import tensorrt failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return True, ""


@dataclass(frozen=True)
class EngineSpec:
    """What the engine is built for (mirrors the ONNX model's input)."""

    input_name: str
    image_size: int
    dynamic_batch: bool
    batch_size: int
    max_batch_size: int
    workspace_mb: int

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        s = self.image_size
        if not self.dynamic_batch:
            fixed = (self.batch_size, 3, s, s)
            return fixed, fixed, fixed
        return (1, 3, s, s), (max(1, self.batch_size), 3, s, s), (max(self.max_batch_size, self.batch_size), 3, s, s)


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in s)


def trtexec_command(onnx_name: str, engine_name: str, precision: str, spec: EngineSpec, *,
                    timing_cache: str = "timing.cache", strongly_typed: bool = False) -> str:
    """The ``trtexec`` command that builds the engine (paths relative to the export folder).

    TensorRT 10 (JetPack 6): ``--fp16`` for FP16; ``--int8 --fp16`` for the QDQ model (INT8 where
    the Q/DQ nodes say so, and the builder may pick FP16 kernels for every other layer).
    ``strongly_typed`` (TensorRT >= 10.12, the only mode of 11): ``--stronglyTyped`` and no precision
    flags; precision comes from the graph alone, so the layers of the QDQ model that carry no Q/DQ
    run in FP32. The two builds of one QDQ model therefore differ in numerics (FP16 vs FP32 between
    the INT8 layers): verify the engine that was built, with its step's bundle.
    """
    args = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}"]
    if precision == "fp32":
        args.append("--noTF32")  # fp32 means fp32: no TF32 matmuls/convolutions on Ampere and later
    if strongly_typed:
        args.append("--stronglyTyped")
    elif precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", "--fp16"]
    if spec.dynamic_batch:
        mn, opt, mx = spec.shapes()
        args += [f"--minShapes={spec.input_name}:{_shape(mn)}", f"--optShapes={spec.input_name}:{_shape(opt)}",
                 f"--maxShapes={spec.input_name}:{_shape(mx)}"]
    args += [f"--timingCacheFile={timing_cache}", f"--memPoolSize=workspace:{spec.workspace_mb}M"]
    return " ".join(shlex.quote(a) for a in args)


def write_build_script(out_dir: Path, onnx_name: str, engine_name: str, precision: str, spec: EngineSpec) -> Path:
    """``build_engine.sh``: the exact commands to build and smoke-test the engine on the target."""
    cmd = trtexec_command(onnx_name, engine_name, precision, spec)
    strong = trtexec_command(onnx_name, engine_name, precision, spec, strongly_typed=True)
    fp16_note = (
        "# TensorRT >= 11 removed --fp16: an FP16 engine there needs an FP16 ONNX (e.g. ModelOpt AutoCast).\n"
        if precision == "fp16" else f"# TensorRT >= 10.12 / 11 (strongly typed):\n#   {strong}\n"
    )
    text = (
        "#!/bin/sh\n"
        "# Build the TensorRT engine ON THE DEVICE THAT RUNS IT (e.g. the Jetson): engines are specific to\n"
        "# the GPU model and the TensorRT version. Run from this folder. Written by fopro-edge export.\n"
        f"# precision: {precision}; input {spec.input_name} float32 RGB [0,1] NCHW, "
        f"batch {'dynamic ' + '/'.join(_shape(s) for s in spec.shapes()) if spec.dynamic_batch else spec.batch_size}\n"
        "# TensorRT 10 (JetPack 6):\n"
        "set -e\ncd \"$(dirname \"$0\")\"\n"
        f"{cmd}\n"
        f"{fp16_note}"
        "# Then check it with the rare-class gate on the images the export checked (fopro-edge without torch):\n"
        f"#   fopro-edge verify {engine_name} --bundle {Path(onnx_name).parent}/verify-bundle\n"
    )
    path = out_dir / "build_engine.sh"
    atomic_write_text(path, text)
    path.chmod(0o755)
    return path


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    spec: EngineSpec,
    *,
    timing_cache: str | Path | None = None,
    parent: str | None = None,
) -> ModelArtifact:
    """Build and serialize an engine with the TensorRT Python API; write ``<engine>.json`` with the
    TensorRT version, GPU name and build settings; load/save the timing cache."""
    ok, why = tensorrt_status()
    if not ok:
        raise MissingDependencyError(f"cannot build a TensorRT engine here: {why}. {TENSORRT_HINT}")
    import tensorrt as trt
    import torch

    major = int(trt.__version__.split(".")[0])
    strongly_typed = major >= 11
    if strongly_typed and precision == "fp16":
        raise ConfigError(
            f"precision: TensorRT {trt.__version__} builds strongly typed networks only; an FP16 engine needs an FP16 "
            "ONNX (ModelOpt AutoCast) — use TensorRT 10, or --precision int8 (QDQ) / fp32"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT could not parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if not strongly_typed:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # honours the Q/DQ nodes (explicit quantization)
    cache_path = Path(timing_cache) if timing_cache else Path(engine_path).with_name("timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if spec.dynamic_batch:
        profile = builder.create_optimization_profile()
        profile.set_shape(spec.input_name, *spec.shapes())
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build the {precision} engine (see the log above)")
    build_s = time.perf_counter() - t0
    atomic_write_bytes(Path(engine_path), bytes(serialized))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    props = torch.cuda.get_device_properties(0)
    meta: dict[str, Any] = {
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{props.major}.{props.minor}",
        "precision": precision,
        "strongly_typed": strongly_typed,
        "shapes": [list(s) for s in spec.shapes()],
        "workspace_mb": spec.workspace_mb,
        "timing_cache": cache_path.name,
        "build_seconds": round(build_s, 2),
        "onnx": Path(onnx_path).name,
        "command_equivalent": trtexec_command(Path(onnx_path).name, Path(engine_path).name, precision, spec,
                                              timing_cache=cache_path.name, strongly_typed=strongly_typed),
    }
    atomic_write_json(Path(engine_path).with_suffix(".json"), meta)
    log.info("TensorRT %s engine built in %.1f s on %s", precision, build_s, meta["gpu"])
    return ModelArtifact.from_files(engine_path, "tensorrt", precision, parent=parent, metadata=meta)


def engine_metadata(engine_path: str | Path) -> dict[str, Any]:
    p = Path(engine_path).with_suffix(".json")
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
