"""What to measure: :class:`Target` (one model on one backend), how to open its runner, and how
to find the targets of a run directory or of artifact paths named on the command line."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fopro_edge.deploy import backends
from fopro_edge.errors import ConfigError

log = logging.getLogger(__name__)

ROLES = ("student", "teacher", "artifact")
# ONNX files that are steps on the way, not deployable artifacts.
_INTERMEDIATE = re.compile(r"(^\.|\.tmp$|[._-](pre|preprocessed|prep|infer|shape)\.onnx$)")


@dataclass(frozen=True)
class Target:
    """One model on one backend.

    ``precision`` is what the artifact holds (fp32 / fp16 / int8); OpenVINO's compute precision is
    ``options["inference_precision"]`` (f32 / bf16 / f16 / auto) and the report states what the
    runtime really used. ``model`` says how to build a PyTorch module (pytorch targets only):
    ``{"source": "checkpoint", "path": ...}``, ``{"source": "teacher", "recipe": ...}`` or
    ``{"source": "timm", "model": ..., "num_classes": ..., "seed": ...}``.
    """

    name: str
    backend: str
    precision: str = "fp32"
    role: str = "artifact"
    path: str | None = None
    model: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    size_bytes: int | None = None
    gate: str | None = None  # PASSED / FAILED when the export step's check report is known
    group: str | None = None  # the student these numbers compare with (speed-up baseline)

    def __post_init__(self) -> None:
        known = ("pytorch", *backends.runtimes())
        if self.backend not in known:
            raise ConfigError(f"target {self.name}: backend '{self.backend}' is not one of {', '.join(known)}")
        if self.role not in ROLES:
            raise ConfigError(f"target {self.name}: role '{self.role}' is not one of {', '.join(ROLES)}")

    @property
    def is_eager_baseline(self) -> bool:
        return self.backend == "pytorch" and not self.options.get("compile")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Target:
        return cls(**dict(d))


# ----------------------------------------------------------------------------- runners


def build_torch_model(spec: Mapping[str, Any]) -> tuple[Any, int]:
    """``(module in eval mode, image size)`` from a pytorch target's ``model`` spec."""
    source = spec.get("source")
    if source == "checkpoint":
        from fopro_edge.distill.checkpoint import load_student

        model, info = load_student(spec["path"])
        return model, int(info.image_size)
    if source == "teacher":
        from fopro_edge.config import load_recipe
        from fopro_edge.models.teacher import build_teacher

        recipe = load_recipe(spec["recipe"], check_paths=False)
        teacher = build_teacher(recipe.teacher).eval()
        return teacher, int(teacher.image_size)
    if source == "timm":
        from fopro_edge.bench.models import random_init_student

        model = random_init_student(spec["model"], int(spec.get("num_classes", 1000)), seed=int(spec.get("seed", 0)))
        return model, int(spec.get("image_size", 224))
    raise ConfigError(f"model spec: unknown source {source!r} (checkpoint, teacher or timm)")


def open_runner(target: Target, threads: int | None) -> tuple[Any, int | None]:
    """``(runner, image size)`` of ``target``: a runner of :mod:`fopro_edge.deploy.runners`, not yet
    entered, and the input size its model expects (``None`` when the graph leaves it open)."""
    from fopro_edge.deploy import runners

    opts = dict(target.options)
    if target.backend == "pytorch":
        if not target.model:
            raise ConfigError(f"target {target.name}: a pytorch target needs a model spec")
        model, size = build_torch_model(target.model)
        if opts.get("compile"):
            import torch

            model = torch.compile(model)
        return runners.TorchRunner(model, threads=threads, device=opts.get("device", "cpu")), size
    if target.path is None:
        raise ConfigError(f"target {target.name}: no artifact path")
    runner = backends.for_runtime(target.backend).open_runner(Path(target.path), precision=target.precision,
                                                             threads=threads, options=opts)
    return runner, runner.image_size


# ----------------------------------------------------------------------------- discovery


def artifact_files(path: Path) -> list[Path]:
    """The files that make up an artifact: the IR's ``.bin``; an ONNX file's external data."""
    files = [path]
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        files.append(path.with_suffix(".bin"))
    if path.suffix == ".onnx":
        files += [p for p in (path.with_name(path.name + ".data"), path.with_suffix(".data")) if p.is_file()]
    return files


def artifact_size(path: Path) -> int:
    return sum(p.stat().st_size for p in artifact_files(path))


def targets_for_artifact(
    path: str | Path,
    *,
    openvino_precisions: Sequence[str] | None = None,
    ort_providers: Sequence[Sequence[str]] | None = None,
    precision: str | None = None,
    gate: str | None = None,
    group: str | None = None,
    label: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> list[Target]:
    """Targets of one artifact file, on the runtime the backend registry names for its suffix:
    ONNX Runtime (one per provider list), OpenVINO (one per inference precision; default: the export
    profile's in ``options``, else f32), TensorRT, or a plug-in runtime. ``options``: runner options."""
    p = Path(path)
    entry = backends.for_artifact(p)
    kinds = ", ".join(backends.artifact_suffixes())
    if not p.is_file():
        raise ConfigError(f"--artifact: {p} does not exist (give an artifact file: {kinds})")
    if entry is None:
        raise ConfigError(f"--artifact: {p}: unknown artifact type '{p.suffix}' (expected one of: {kinds})")
    size = artifact_size(p)
    stem = label or p.stem
    prec = precision or entry.read_precision(p)
    base = dict(options or {})
    if entry.runtime == "onnxruntime":
        variants = []
        for providers in ort_providers or [["CPUExecutionProvider"]]:
            ep = providers[0].replace("ExecutionProvider", "")
            variants.append(("" if ep == "CPU" else f" [{ep}]", {**base, "providers": list(providers)}))
    elif entry.runtime == "openvino":
        ips = list(openvino_precisions or (base.get("inference_precision", "f32"),))
        variants = [(f" ({ip})" if len(ips) > 1 else "", {**base, "inference_precision": ip}) for ip in ips]
    else:
        variants = [("", base)]
    return [Target(f"{stem}{suffix}", entry.runtime, prec, path=str(p), size_bytes=size, gate=gate, group=group,
                   options=options) for suffix, options in variants]


@dataclass(frozen=True)
class FoundArtifact:
    """An exported file found in a run: from an export manifest (``export.json``) or by its name."""

    path: Path
    label: str
    precision: str | None = None
    gate: str | None = None  # PASSED / FAILED / UNVERIFIED
    options: dict[str, Any] = field(default_factory=dict)  # runner options of its export profile (OpenVINO precision)


def _manifest_path(p: Path, manifest: Path, out_dir: Path | None) -> Path:
    """An artifact path of ``export.json``, re-rooted at the manifest's folder (the run may have moved)."""
    if out_dir:
        try:
            return manifest.parent / p.relative_to(out_dir)
        except ValueError:
            pass
    return p if p.is_absolute() else manifest.parent / p


def read_export_manifests(export_root: Path) -> list[FoundArtifact]:
    """Artifacts listed by ``export/<target>/export.json`` (written by ``fopro-edge export``).

    The fp32 ONNX step that every target starts with is listed once; the ONNX files of a backend
    that builds from them (TensorRT) are inputs to the build, not deployment artifacts, and are left out.
    """
    from fopro_edge.deploy.pipeline import read_export

    out: list[FoundArtifact] = []
    seen: set[Any] = set()
    for manifest in sorted(export_root.glob("*/export.json")):
        try:
            result = read_export(manifest)
            entry = backends.get(result.target, f"{manifest}: target")
            options = entry.runner_options(result.typed_profile())
        except ConfigError as e:
            log.warning("%s; skipped", e)
            continue
        for step in result.steps:
            art = step.artifact
            if art is None:
                continue
            path = _manifest_path(art.path, manifest, result.out_dir)
            if entry.built_on_device and path.suffix == ".onnx":
                continue
            meta = art.metadata
            key = (("onnx", art.parent, meta.get("opset"), meta.get("dynamic_batch"), meta.get("batch_size"))
                   if step.name == "onnx" else art.sha256)
            if key in seen or art.sha256 in seen:
                continue
            seen.update({key, art.sha256})
            if not path.is_file():
                log.warning("%s lists %s, which is missing; skipped", manifest, path)
                continue
            label = "onnx" if step.name == "onnx" else f"{result.target}/{step.name}"
            out.append(FoundArtifact(path, label, art.precision, step.status,
                                     options if backends.for_artifact(path) is entry else {}))
    return out


def scan_export_dir(export_root: Path) -> list[FoundArtifact]:
    """Artifacts found by file name when no manifest lists them; a ``FAILED`` marker or a
    ``check.json`` next to a file gives its gate status."""
    out = []
    for p in find_artifacts(export_root):
        gate = None
        if (p.parent / "FAILED").is_file():
            gate = "FAILED"
        elif (p.parent / "check.json").is_file():
            try:
                gate = json.loads((p.parent / "check.json").read_text(encoding="utf-8")).get("status")
            except (OSError, json.JSONDecodeError):
                gate = None
        out.append(FoundArtifact(p, _artifact_label(p, export_root), gate=gate))
    return out


def run_targets(
    run_dir: str | Path,
    *,
    artifacts: Iterable[str | Path] = (),
    teacher: bool = True,
    student: bool = True,
    compile_student: bool = False,
    openvino_precisions: Sequence[str] | None = None,
    ort_providers: Sequence[Sequence[str]] | None = None,
    device: str = "cpu",
) -> list[Target]:
    """The student (PyTorch eager, the baseline), the teacher, and every exported artifact of a run
    (or only ``artifacts``, when given). OpenVINO artifacts run with the inference precision of
    their export profile unless ``openvino_precisions`` is given."""
    from fopro_edge.distill.rundir import RunDir

    rd = RunDir(Path(run_dir))
    if not rd.path.is_dir():
        raise ConfigError(f"--run: {rd.path} is not a directory (give a run directory written by fopro-edge distill)")
    ckpt = rd.best_checkpoint if rd.best_checkpoint.is_file() else rd.last_checkpoint
    group = image_size = None
    out: list[Target] = []
    if ckpt.is_file():
        import torch

        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        group = state["recipe"]["student"]["model"]
        image_size = state.get("image_size")  # the student's input: every artifact of the run takes it
        teacher_model = state["recipe"]["teacher"]["model"]
        size = _state_dict_bytes(state["student"])
        spec = {"source": "checkpoint", "path": str(ckpt)}
        if student:
            out.append(Target(f"{group} (student)", "pytorch", "fp32", role="student", path=str(ckpt),
                              model=spec, options={"device": device}, size_bytes=size, group=group))
        if compile_student:
            out.append(Target(f"{group} (student, torch.compile)", "pytorch", "fp32", role="student",
                              path=str(ckpt), model=spec, options={"device": device, "compile": True},
                              size_bytes=size, group=group))
        if teacher:
            if not rd.recipe.is_file():
                raise ConfigError(f"--run: {rd.recipe} is missing (the teacher baseline is built from it; or pass --no-teacher)")
            out.append(Target(f"{teacher_model} (teacher)", "pytorch", "fp32", role="teacher",
                              model={"source": "teacher", "recipe": str(rd.recipe)}, options={"device": device}))
    elif student or teacher or compile_student:
        raise ConfigError(f"--run: {rd.path} has no checkpoint (checkpoints/best.pt); train it first or pass --no-student --no-teacher")
    export_root = rd.path / "export"
    if artifacts:
        found = [FoundArtifact(Path(a), _artifact_label(Path(a), export_root)) for a in artifacts]
        listed = {f.path.resolve(): f for f in (read_export_manifests(export_root) if export_root.is_dir() else [])}
        found = [listed.get(f.path.resolve(), f) for f in found]
    elif export_root.is_dir():
        found = read_export_manifests(export_root)
        listed = {f.path.resolve() for f in found}
        scanned = scan_export_dir(export_root)
        # engines built on the device with build_engine.sh are not in the manifest (its step says UNVERIFIED)
        found += [f for f in scanned if _built_on_device(f.path) and f.path.resolve() not in listed] if found else scanned
    else:
        found = []
    if not found:
        log.warning("no exported artifact under %s: only the PyTorch baselines are measured", export_root)
    for f in found:
        out += [replace(t, image_size=image_size) for t in targets_for_artifact(
            f.path, openvino_precisions=openvino_precisions, ort_providers=ort_providers, precision=f.precision,
            gate=f.gate, group=group, label=f.label, options=f.options)]
    return _unique_names(out + same_runtime_fp32(out))


def same_runtime_fp32(targets: Sequence[Target]) -> list[Target]:
    """The FP32 ONNX artifact, opened by each runtime that has an INT8 artifact of the same network but no
    FP32 one (OpenVINO runs the ONNX file itself), with that INT8 artifact's runner options: what its
    speed-up is measured against."""
    arts = [t for t in targets if t.role == "artifact" and t.path]
    onnx = next((t for t in arts if t.precision == "fp32" and Path(t.path).suffix == ".onnx"), None)
    if onnx is None:
        return []
    def key(t: Target) -> tuple:
        return t.backend, t.group, json.dumps(t.options, sort_keys=True)

    have = {key(t) for t in arts if t.precision == "fp32"}
    out = []
    for t in arts:
        if t.precision == "int8" and key(t) not in have and backends.for_runtime(t.backend).opens_onnx:
            have.add(key(t))
            suffix = "".join(f" ({v})" for k, v in t.options.items() if k == "inference_precision")
            out.append(replace(onnx, name=f"{onnx.name} (in {t.backend}){suffix}", backend=t.backend,
                               options=dict(t.options)))
    return out


def artifact_targets(
    artifacts: Iterable[str | Path],
    *,
    openvino_precisions: Sequence[str] | None = None,
    ort_providers: Sequence[Sequence[str]] | None = None,
) -> list[Target]:
    """Targets of artifact files named without a run (no PyTorch baselines)."""
    out: list[Target] = []
    for p in artifacts:
        out += targets_for_artifact(p, openvino_precisions=openvino_precisions, ort_providers=ort_providers)
    return _unique_names(out)


def find_artifacts(root: str | Path) -> list[Path]:
    """Deployable artifact files under ``root`` (sorted), intermediates skipped."""
    root = Path(root)
    found = [
        p for p in root.rglob("*")
        if p.is_file() and p.suffix in backends.artifact_suffixes()
        and not _INTERMEDIATE.search(p.name) and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(found)


def _built_on_device(path: Path) -> bool:
    entry = backends.for_artifact(path)
    return entry is not None and entry.built_on_device


def _artifact_label(path: Path, export_root: Path) -> str:
    try:
        rel = Path(path).resolve().relative_to(export_root.resolve())
    except ValueError:
        return Path(path).stem
    return str(rel.with_suffix(""))


def _state_dict_bytes(sd: Mapping[str, Any]) -> int:
    return int(sum(t.numel() * t.element_size() for t in sd.values() if hasattr(t, "numel")))


def _unique_names(targets: list[Target]) -> list[Target]:
    seen: dict[str, int] = {}
    out = []
    for t in targets:
        n = seen.get(t.name, 0)
        seen[t.name] = n + 1
        out.append(t if n == 0 else replace(t, name=f"{t.name} #{n + 1}"))
    return out
