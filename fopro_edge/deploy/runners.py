"""One runner interface for every runtime, used by the gate and by the benchmark tool.

A runner is a context manager with ``name``, ``precision``, ``batch_size`` (``None`` when the
batch dimension is dynamic), ``image_size`` (the static spatial input size, ``None`` when the graph
leaves it open), ``info`` (what the runtime actually uses, e.g. OpenVINO's inference
precision) and ``infer(batch) -> logits`` on float32 RGB [0, 1] NCHW arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fopro_edge.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

ORT_HINT = "target 'onnxruntime' needs onnx and onnxruntime: pip install 'fopro-edge[onnx]'"
OPENVINO_HINT = "target 'openvino' needs openvino and nncf: pip install 'fopro-edge[openvino]'"
TENSORRT_HINT = (
    "target 'tensorrt' needs an NVIDIA GPU with the tensorrt Python package (TensorRT 10; on a Jetson it comes "
    "with JetPack): pip install 'fopro-edge[tensorrt]'"
)


@runtime_checkable
class Runner(Protocol):
    name: str
    precision: str
    batch_size: int | None
    image_size: int | None
    info: dict[str, Any]

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...


class _Base:
    name = "runner"
    precision = "fp32"
    batch_size: int | None = None
    image_size: int | None = None

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the runtime's resources (idempotent)."""


class TorchRunner(_Base):
    """The PyTorch student (the reference every artifact is compared with)."""

    name = "pytorch"

    def __init__(self, model, *, threads: int | None = None, device: str = "cpu") -> None:
        super().__init__()
        import torch

        self._torch = torch
        self.model = model.to(device).eval()
        self.device = device
        self.threads = threads
        self._old_threads: int | None = None
        self.info = {"device": device, "torch": torch.__version__}
        # on CUDA, the bench loop also records CUDA events on this stream (copies and kernels)
        self.stream = torch.cuda.current_stream(torch.device(device)) if device.startswith("cuda") else None

    def __enter__(self):
        if self.threads:
            self._old_threads = self._torch.get_num_threads()
            self._torch.set_num_threads(self.threads)
        return self

    def close(self) -> None:
        if self._old_threads is not None:
            self._torch.set_num_threads(self._old_threads)
            self._old_threads = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.model(x).float().cpu().numpy()


class OrtRunner(_Base):
    """An ONNX model in ONNX Runtime (CPU by default)."""

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        precision: str = "fp32",
        threads: int | None = None,
        providers: list[str] | None = None,
        emulate_qdq: bool = False,
    ) -> None:
        """``emulate_qdq``: run Q/DQ nodes as written (no graph optimisation, so no fused integer
        kernels): the exact int32-accumulation result that TensorRT computes, on any CPU."""
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError(ORT_HINT) from None
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if emulate_qdq:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        self.precision = precision
        self.session = ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.batch_size, self.image_size = _static_dims(inp.shape)
        self.info = {
            "providers": self.session.get_providers(),
            "threads": threads or "default",
            "onnxruntime": ort.__version__,
            **({"qdq": "emulated (Q/DQ ops run as written, no fused kernels)"} if emulate_qdq else {}),
        }

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


_OV_PRECISION = {"f32": "f32", "bf16": "bf16", "f16": "f16"}
_OV_TYPE_NAMES = {"float32": "f32", "f32": "f32", "bfloat16": "bf16", "bf16": "bf16", "float16": "f16", "f16": "f16"}


def ov_precision_name(value: Any) -> str:
    """``<Type: 'bfloat16'>`` -> ``bf16``."""
    text = str(getattr(value, "get_type_name", lambda: value)()) if not isinstance(value, str) else value
    text = text.replace("<Type: '", "").replace("'>", "").strip().lower()
    return _OV_TYPE_NAMES.get(text, text)


class OpenVINORunner(_Base):
    """An OpenVINO IR (or ONNX) model compiled with an explicit inference precision.

    ``inference_precision="auto"`` leaves the choice to OpenVINO (bf16 on CPUs with bf16 units);
    ``info["inference_precision"]`` always holds what the compiled model actually uses.
    """

    name = "openvino"

    def __init__(
        self,
        path: str | Path,
        *,
        precision: str = "fp32",
        inference_precision: str = "f32",
        threads: int | None = None,
        performance_hint: str = "latency",
        device: str = "CPU",
    ) -> None:
        super().__init__()
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError(OPENVINO_HINT) from None
        if inference_precision not in (*_OV_PRECISION, "auto"):
            raise ConfigError(f"inference_precision: '{inference_precision}' is not one of f32, bf16, f16, auto")
        config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint.upper()}
        if performance_hint == "latency":
            config["NUM_STREAMS"] = "1"
        if inference_precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[inference_precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        from fopro_edge.deploy import signal_stack

        signal_stack.remember()  # OpenVINO swaps the thread's signal stack: see close()
        core = ov.Core()
        model = core.read_model(str(path))
        self.precision = precision
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        self.batch_size, self.image_size = _static_dims([d.get_length() if d.is_static else None for d in shape])
        try:
            actual = ov_precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        except RuntimeError:  # devices without the property
            actual = "unknown"
        self.info = {
            "device": device,
            "inference_precision_requested": inference_precision,
            "inference_precision": actual,
            "performance_hint": performance_hint,
            "threads": threads or "default",
            "openvino": ov.get_version(),
        }

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)}, share_inputs=True)
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def close(self) -> None:
        from fopro_edge.deploy import signal_stack

        self.request = None
        self.compiled = None
        signal_stack.repair()


class TensorRTRunner(_Base):
    """A serialized TensorRT engine (TensorRT 10 tensor API), fed through torch CUDA tensors."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, *, precision: str = "fp16", device: int = 0) -> None:
        super().__init__()
        try:
            import tensorrt as trt
        except ImportError:
            raise MissingDependencyError(TENSORRT_HINT) from None
        import torch

        if not torch.cuda.is_available():
            raise MissingDependencyError("a TensorRT engine needs an NVIDIA GPU (torch.cuda.is_available() is false)")
        self._torch = torch
        self.device = torch.device("cuda", device)
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ConfigError(f"{engine_path}: TensorRT could not load the engine (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.batch_size, self.image_size = _static_dims([int(d) for d in self.engine.get_tensor_shape(self.input_name)])
        self.max_batch = self.batch_size or int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.precision = precision
        self.info = {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(self.device)}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > self.max_batch:  # the engine's optimization profile caps the batch
            return np.concatenate([self.infer(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)])
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ConfigError(f"TensorRT engine: input shape {tuple(x.shape)} is outside its optimization profile "
                              f"{[tuple(d) for d in self.engine.get_tensor_profile_shape(self.input_name, 0)]}")
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        y = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, y.data_ptr())
        stream = torch.cuda.current_stream(self.device)  # the stream the copies above were queued on
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return y.cpu().numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None


def _static_dims(dims: Any) -> tuple[int | None, int | None]:
    """``(batch, spatial size)`` of an NCHW input shape; ``None`` where a dimension is dynamic."""
    dims = list(dims)

    def static(d: Any) -> int | None:
        return int(d) if isinstance(d, int) and d > 0 else None

    return (static(dims[0]) if dims else None), (static(dims[-1]) if len(dims) == 4 else None)


def iter_chunks(images: np.ndarray, batch_size: int | None, default: int = 32) -> Iterator[tuple[np.ndarray, int]]:
    """Split ``images`` into batches of the runner's size; the last one padded with zeros.

    Yields ``(batch, n_valid)``.
    """
    size = batch_size or default
    for start in range(0, len(images), size):
        chunk = images[start:start + size]
        n = len(chunk)
        if batch_size and n < batch_size:
            pad = np.zeros((batch_size - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        yield chunk, n


def predict(runner: Runner, batches: Iterable[np.ndarray], default_batch: int = 32) -> np.ndarray:
    """Logits of ``runner`` over an iterable of image batches (fixed-batch runners are padded)."""
    outs: list[np.ndarray] = []
    for batch in batches:
        for chunk, n in iter_chunks(batch, runner.batch_size, default_batch):
            outs.append(np.asarray(runner.infer(chunk), dtype=np.float32)[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
