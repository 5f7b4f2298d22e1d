"""The backend registry: each runtime the export can target is one :class:`Backend` entry.

An entry says everything the rest of the tool needs about a runtime: its name (``--target``,
``export/<name>.yaml``, the recipe's ``export.<name>``), its profile type, its export steps, the
runtime that runs its files, their suffixes, how to open a runner, how to read the precision of a
file back, and how to install it. The CLI, the profiles, the export pipeline and the benchmark
look backends up here and nowhere else. The INT8 step itself is one function for every backend
(:func:`fopro_edge.deploy.int8.int8_step`); an entry's flow hands it an adapter.

The four built-in entries are registered on first use; others come from :func:`register` or from
the ``fopro_edge.backends`` entry-point group (each entry point is a callable returning a Backend).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fopro_edge.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fopro_edge.backends"


@dataclass(frozen=True)
class Backend:
    name: str
    title: str
    profile: type  # the export profile dataclass (frozen, with a ``precision`` Literal)
    flow: Callable[[Any], list[Any]]  # ExportContext -> [StepResult]: the ONNX step, then the target's own
    runtime: str  # the runtime that runs its artifacts (the benchmark's backend name)
    suffixes: tuple[str, ...]  # artifact files that runtime opens
    open_runner: Callable[..., Any]  # (path, *, precision, threads, options) -> runner, not yet entered
    read_precision: Callable[[Path], str]  # fp32 | fp16 | int8 | unknown, read from the file
    requires: tuple[str, ...] = ()  # Python modules the runtime needs
    install_hint: str = ""
    runner_options: Callable[[Any], dict[str, Any]] = field(default=lambda profile: {})  # from the export profile
    # built on the device from the export's ONNX files (TensorRT engines): those ONNX files are build
    # inputs, not artifacts, and files found later beside the export manifest are measured too
    built_on_device: bool = False
    opens_onnx: bool = False  # its runner also opens the fp32 ONNX file (the bench's same-runtime FP32 baseline)

    def missing(self) -> list[str]:
        return [m for m in self.requires if not _importable(m)]

    def require(self) -> None:
        """:class:`MissingDependencyError` (exit code 3) naming the install command when absent."""
        absent = self.missing()
        if absent:
            raise MissingDependencyError(f"{self.install_hint} (missing: {', '.join(absent)})")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it (import blocked)
        return False


_REGISTRY: dict[str, Backend] = {}
_LOADED = False


def register(backend: Backend, *, replace: bool = False) -> Backend:
    _load()
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"backend '{backend.name}' is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    _load()
    return tuple(_REGISTRY)


def get(name: str, key: str = "--target") -> Backend:
    """The entry of ``name``; a one-line :class:`ConfigError` naming ``key`` when unknown."""
    _load()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{key}: unknown target '{name}' ({hint}choose one of: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def runtimes() -> tuple[str, ...]:
    _load()
    return tuple(dict.fromkeys(b.runtime for b in _REGISTRY.values()))


def for_runtime(runtime: str) -> Backend:
    """The entry that opens ``runtime``'s files (the one named like it when several share it)."""
    _load()
    found = [b for b in _REGISTRY.values() if b.runtime == runtime]
    if not found:
        raise ConfigError(f"unknown runtime '{runtime}' (known: {', '.join(runtimes())})")
    return next((b for b in found if b.name == runtime), found[0])


def for_artifact(path: str | Path) -> Backend | None:
    """The runtime entry that opens a file with this suffix (None when no runtime does)."""
    suffix = Path(path).suffix
    _load()
    for b in _REGISTRY.values():
        if suffix in b.suffixes:
            return for_runtime(b.runtime)
    return None


def artifact_suffixes() -> tuple[str, ...]:
    _load()
    return tuple(dict.fromkeys(s for b in _REGISTRY.values() for s in b.suffixes))


# --------------------------------------------------------------------------- built-in entries


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    """A callable that imports ``module`` on first call (keeps the registry light to import)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = attr
    return call


def _ort_runner(path: Path, *, precision: str, threads: int | None, options: Mapping[str, Any]) -> Any:
    from fopro_edge.deploy.runners import OrtRunner

    return OrtRunner(path, precision=precision, threads=threads, providers=options.get("providers"))


def _ov_runner(path: Path, *, precision: str, threads: int | None, options: Mapping[str, Any]) -> Any:
    from fopro_edge.deploy.runners import OpenVINORunner

    return OpenVINORunner(path, precision=precision, inference_precision=options.get("inference_precision", "f32"),
                          threads=threads, performance_hint=options.get("performance_hint", "latency"),
                          device=options.get("device", "CPU"))


def _trt_runner(path: Path, *, precision: str, threads: int | None, options: Mapping[str, Any]) -> Any:
    from fopro_edge.deploy.runners import TensorRTRunner

    return TensorRTRunner(path, precision=precision)


def _builtins() -> list[Backend]:
    from fopro_edge.deploy import profiles as P
    from fopro_edge.deploy.runners import ORT_HINT, OPENVINO_HINT, TENSORRT_HINT

    pipeline, precision = "fopro_edge.deploy.pipeline", "fopro_edge.deploy.precision"
    onnx = dict(runtime="onnxruntime", suffixes=(".onnx",), open_runner=_ort_runner,
                read_precision=_lazy(precision, "onnx_precision"), requires=("onnx", "onnxruntime"), install_hint=ORT_HINT)
    return [
        Backend("onnx", "ONNX fp32", P.OnnxProfile, _lazy(pipeline, "flow_onnx"), **onnx),
        Backend("onnxruntime", "ONNX Runtime (fp32, INT8 QDQ)", P.OnnxRuntimeProfile,
                _lazy(pipeline, "flow_onnxruntime"), **onnx),
        Backend("openvino", "OpenVINO IR (fp32, fp16, INT8 through NNCF)", P.OpenVINOProfile,
                _lazy(pipeline, "flow_openvino"), "openvino", (".xml",), _ov_runner,
                _lazy(precision, "ir_precision"), ("openvino", "nncf", "onnx", "onnxruntime"), OPENVINO_HINT,
                runner_options=lambda profile: {"inference_precision": profile.inference_precision}, opens_onnx=True),
        Backend("tensorrt", "TensorRT engine (from a TensorRT-ready ONNX / INT8 QDQ)", P.TensorRTProfile,
                _lazy(pipeline, "flow_tensorrt"), "tensorrt", (".engine", ".plan", ".trt"), _trt_runner,
                _lazy(precision, "engine_precision"), ("onnx", "onnxruntime"), TENSORRT_HINT, built_on_device=True),
    ]


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for b in _builtins():
        _REGISTRY[b.name] = b
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            b = ep.load()()
            _REGISTRY.setdefault(b.name, b)
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not take the built-in targets down
            log.warning("backend plug-in %s could not be loaded: %s", ep.name, e)
