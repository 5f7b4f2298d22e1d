"""Export profiles: one frozen dataclass per target, loaded strictly from ``export/<target>.yaml``.

Layers, later wins: the dataclass defaults < ``export/<target>.yaml`` (or ``--profile FILE``) <
the recipe's ``export.<target>`` section < command-line overrides. Every layer is validated on its
own, so an error names the file (or the command line) and the dotted key, in the recipe's format:
``FILE: dotted.key: problem (did you mean ...)``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fopro_edge.errors import ConfigError
from fopro_edge.schema import convert_section, parse_override, range_, read_yaml_mapping

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class GateConfig:
    """The rare-class gate run after every step (artifact vs the PyTorch student, image by image)."""

    split: Literal["val", "test"] = "val"  # the images repair tries are scored and selected on
    confirm_split: Literal["auto", "val", "test", "none"] = "auto"  # the kept artifact's one confirmation (auto: the other split)
    max_images: int | None = field(default=None, metadata=range_(1))  # None: the whole split
    batch_size: int = field(default=32, metadata=range_(1))
    max_balanced_accuracy_drop: float = field(default=0.02, metadata=range_(0.0, 1.0))
    # rare images the PyTorch student gets right outside a close call that the artifact gets wrong, summed
    max_rare_clear_losses: int = field(default=0, metadata=range_(0))
    close_call_gap: float = field(default=0.5, metadata=range_(0.0, 1.0))  # PyTorch top-2 probability gap below
    # which an image is a close call: judged as a group (see deploy.gate), not one by one (0: none is)
    rare_margin_test: bool = True  # fail when the rare margins erode (paired interval wholly below -tolerance)
    rare_margin_tolerance: float = field(default=0.05, metadata=range_(0.0, 1.0))  # of the rare margins' mean size
    max_rare_recall_drop: float = field(default=0.10, metadata=range_(0.0, 1.0))  # per rare class
    allow_missing_rare: bool = False  # a rare class with no check image fails unless this is true
    max_class_recall_drop: float | None = field(default=0.10, metadata=range_(0.0, 1.0))  # per non-rare class; None: off
    class_flip_allowance: int = field(default=1, metadata=range_(0))  # images a non-rare class may lose regardless
    max_flip_rate: float | None = field(default=0.05, metadata=range_(0.0, 1.0))  # changed / images, close calls aside
    max_fp32_logit_diff: float | None = field(default=0.01, metadata=range_(0.0))  # fp32 steps run in f32 only
    max_mean_kl: float | None = field(default=0.05, metadata=range_(0.0))  # fidelity, every step: mean
    # KL(student softmax || artifact softmax) over the check images, nats; None: off
    bootstrap: int = field(default=2000, metadata=range_(0))  # paired stratified resamples for the intervals; 0: off
    confidence: float = field(default=0.95, metadata=range_(0.5, 0.999))  # interval coverage


@dataclass(frozen=True)
class CalibrationConfig:
    """INT8 calibration images: class-stratified from the train split, every rare class present."""

    size: int = field(default=300, metadata=range_(1))
    seed: int = field(default=0, metadata=range_(0))
    batch_size: int = field(default=8, metadata=range_(1))
    indices_file: str | None = None  # reuse a calibration.json written by an earlier export


@dataclass(frozen=True)
class OrtCalibrationConfig(CalibrationConfig):
    method: Literal["minmax", "entropy", "percentile"] = "minmax"


@dataclass(frozen=True)
class RepairConfig:
    """Bounded repair of a failed INT8 step. Order: quantization-aware distillation, (OpenVINO) accuracy
    control, sensitive layers in float, other calibration methods, a larger calibration set; the larger
    set comes first when the calibration set misses a rare class."""

    enabled: bool = True
    # clean: tries go on while the best one fails or flips a rare image right->wrong on the selection
    # split that is not a close call (max_rare_clear_losses may allow some; the aim is none);
    # passed: stop at the first pass
    until: Literal["clean", "passed"] = "clean"
    max_tries: int = field(default=6, metadata=range_(1, 50))
    qat: bool = True  # a QAT-KD try (method auto)
    calibration_size_factor: float = field(default=2.0, metadata=range_(1.0, 100.0))  # 1: no larger-set try
    float_layers: list[int] = field(default_factory=lambda: [3])
    ranking_images: int = field(default=64, metadata=range_(1))  # class-stratified, every rare class in


@dataclass(frozen=True)
class OrtRepairConfig(RepairConfig):
    methods: list[Literal["minmax", "entropy", "percentile"]] = field(default_factory=lambda: ["percentile"])


@dataclass(frozen=True)
class OpenVINORepairConfig(RepairConfig):
    range_estimators: list[Literal["minmax", "mean_minmax", "mean_quantile"]] = field(
        default_factory=lambda: ["mean_quantile"]
    )
    accuracy_control: bool = True  # nncf.quantize_with_accuracy_control on the rare-class score


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware distillation: the fake-quantized student fine-tuned against the FP32 student."""

    steps: int = field(default=300, metadata=range_(1))  # optimizer steps at most
    lr: float = field(default=1e-5, metadata=range_(0.0))
    batch_size: int = field(default=32, metadata=range_(1))
    temperature: float = field(default=2.0, metadata=range_(0.1))  # logit KD from the FP32 student
    bsm_weight: float = field(default=0.5, metadata=range_(0.0))  # + Balanced Softmax (prior follows the sampler)
    sampler: Literal["instance", "balanced", "sqrt"] = "sqrt"  # rare classes drawn more often
    eval_every: int = field(default=25, metadata=range_(1))  # steps between scores on the selection images
    patience: int = field(default=4, metadata=range_(1))  # scores without improvement before stopping
    device: str = "auto"  # auto: CUDA when present


@dataclass(frozen=True)
class QuantizationConfig:
    """How INT8 is made, and for which CPU."""

    method: Literal["auto", "ptq", "qat"] = "auto"  # auto: PTQ, then QAT-KD when the gate fails
    deploy_cpu: Literal["auto", "avx2", "vnni", "arm"] = "auto"  # auto: this CPU (stated in the report)
    # subtract the per-class shift INT8 leaves in the logits, fitted on the calibration images
    # against the FP32 student (deploy/logit_offsets.py; ONNX Runtime and OpenVINO)
    logit_offsets: bool = True


@dataclass(frozen=True)
class OrtQuantConfig(QuantizationConfig):
    """ONNX Runtime static QDQ quantization."""

    activation_type: Literal["auto", "u8", "s8"] = "auto"  # auto: by the deployment CPU (timed here when it is this CPU)
    per_channel: bool = True
    reduce_range: Literal["auto", True, False] = "auto"  # auto: 7-bit weights where the deployment CPU lacks VNNI
    timing_runs: int = field(default=30, metadata=range_(3))
    timing_warmup: int = field(default=5, metadata=range_(0))


@dataclass(frozen=True)
class NNCFConfig:
    """NNCF post-training quantization of the OpenVINO IR."""

    preset: Literal["performance", "mixed"] = "mixed"  # asymmetric activations (hard-swish outputs dip below 0)
    fast_bias_correction: bool = True
    range_estimator: Literal["default", "minmax", "mean_minmax", "mean_quantile"] = "minmax"  # measured: docs/export.md
    ignored_types: list[str] = field(default_factory=list)
    ignored_patterns: list[str] = field(default_factory=list)
    accuracy_control: bool = False  # true: the first try already uses quantize_with_accuracy_control
    overflow_fix: Literal["auto", "enable", "first_layer_only", "disable"] = "auto"  # auto: enable where the deployment CPU lacks VNNI
    max_drop: float = field(default=0.05, metadata=range_(0.0, 1.0))  # of the rare-class score
    accuracy_control_images: int = field(default=300, metadata=range_(2))


@dataclass(frozen=True)
class _Common:
    opset: int = field(default=17, metadata=range_(17, 23))
    dynamic_batch: bool = True
    batch_size: int = field(default=1, metadata=range_(1))  # the fixed batch when dynamic_batch is false
    threads: int | None = field(default=None, metadata=range_(1))  # runtime threads for checks and timing
    check: GateConfig = field(default_factory=GateConfig)


@dataclass(frozen=True)
class OnnxProfile(_Common):
    precision: Literal["fp32"] = "fp32"


@dataclass(frozen=True)
class OnnxRuntimeProfile(_Common):
    precision: Literal["fp32", "int8"] = "int8"
    quantization: OrtQuantConfig = field(default_factory=OrtQuantConfig)
    calibration: OrtCalibrationConfig = field(default_factory=OrtCalibrationConfig)
    repair: OrtRepairConfig = field(default_factory=OrtRepairConfig)
    qat: QATConfig = field(default_factory=QATConfig)


@dataclass(frozen=True)
class OpenVINOProfile(_Common):
    precision: Literal["fp32", "fp16", "int8"] = "int8"
    inference_precision: Literal["f32", "bf16", "f16", "auto"] = "f32"
    performance_hint: Literal["latency", "throughput"] = "latency"
    device: str = "CPU"
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    nncf: NNCFConfig = field(default_factory=NNCFConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    repair: OpenVINORepairConfig = field(default_factory=OpenVINORepairConfig)
    qat: QATConfig = field(default_factory=QATConfig)


@dataclass(frozen=True)
class TensorRTProfile(_Common):
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    dynamic_batch: bool = False
    max_batch_size: int = field(default=8, metadata=range_(1))  # upper bound of the profile when dynamic
    build_engine: bool = False  # true: a missing GPU / tensorrt is an error
    workspace_mb: int = field(default=1024, metadata=range_(16))
    quantize_op_types: list[str] = field(default_factory=lambda: ["Conv", "Gemm", "MatMul"])
    quantization: QuantizationConfig = field(default_factory=lambda: QuantizationConfig(method="ptq"))
    calibration: OrtCalibrationConfig = field(default_factory=OrtCalibrationConfig)
    repair: OrtRepairConfig = field(default_factory=lambda: OrtRepairConfig(qat=False))


Profile = OnnxProfile | OnnxRuntimeProfile | OpenVINOProfile | TensorRTProfile

def targets() -> tuple[str, ...]:
    """Every registered target (see :mod:`fopro_edge.deploy.backends`)."""
    from fopro_edge.deploy import backends

    return backends.names()


def profile_type(target: str, key: str = "--target") -> type:
    from fopro_edge.deploy import backends

    return backends.get(target, key).profile


def check_target(target: str, key: str = "--target") -> str:
    profile_type(target, key)
    return target


def default_profile_dir() -> Path:
    """``export/`` at the repository root (next to the ``fopro_edge`` package)."""
    return Path(__file__).resolve().parents[2] / "export"


def default_profile_path(target: str) -> Path:
    return default_profile_dir() / f"{target}.yaml"


def precisions(target: str) -> tuple[str, ...]:
    """The precisions ``target`` can export."""
    import typing

    return typing.get_args(typing.get_type_hints(profile_type(target))["precision"])


def read_profile_file(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "export profile")


def validate_layer(target: str, raw: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Check one layer of settings (unknown keys, types, ranges); raise a one-line ConfigError."""
    profile = convert_section(profile_type(target), dict(raw), prefix=prefix, source=source)
    repair = getattr(profile, "repair", None)
    if repair is not None and any(k < 1 for k in repair.float_layers):
        key = f"{prefix}.repair.float_layers" if prefix else "repair.float_layers"
        raise ConfigError(f"{source}: {key}: layer counts must be >= 1, e.g. [1, 3, 6]")


def validate_recipe_export(export: Mapping[str, Any], source: str) -> None:
    """Check a recipe's free-form ``export`` section: ``{target: {key: value}}``."""
    if not isinstance(export, Mapping):
        raise ConfigError(f"{source}: export: expected a mapping of targets, got {type(export).__name__}")
    for target, raw in export.items():
        if target not in targets():
            close = difflib.get_close_matches(str(target), targets(), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known targets: {', '.join(targets())}"
            raise ConfigError(f"{source}: export.{target}: unknown target ({hint})")
        if raw is None:
            continue
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: export.{target}: expected a mapping (section), got {type(raw).__name__}")
        validate_layer(target, raw, source, f"export.{target}")


def overrides_to_dict(items: Sequence[str], source: str = "--set") -> dict[str, Any]:
    """``["check.split=test", "nncf.preset=mixed"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        keys, value = parse_override(item, source)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source} {item}: '{k}' is set both as a value and as a section")
        node[keys[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_profile(
    target: str,
    *,
    profile_file: str | Path | None = None,
    recipe_export: Mapping[str, Any] | None = None,
    recipe_source: str = "<recipe>",
    overrides: Mapping[str, Any] | None = None,
    override_source: str = "command line",
) -> Profile:
    """The merged, validated profile of ``target`` (see the module docstring for the layers)."""
    check_target(target)
    path = Path(profile_file) if profile_file else default_profile_path(target)
    layers: list[dict[str, Any]] = []
    if path.is_file() or profile_file:
        raw = read_profile_file(path)
        validate_layer(target, raw, str(path))
        layers.append(raw)
    else:
        log.warning("no export profile at %s: using the built-in defaults of target '%s'", path, target)
    if recipe_export:
        validate_recipe_export(recipe_export, recipe_source)
        section = recipe_export.get(target) or {}
        if section:
            layers.append(dict(section))
    if overrides:
        validate_layer(target, overrides, override_source)
        layers.append(dict(overrides))
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    return convert_section(profile_type(target), merged, source="merged export profile")


def profile_to_dict(profile: Any) -> dict[str, Any]:
    return dataclasses.asdict(profile)
