"""One INT8 step for every backend: PTQ, the repair tries (QAT-KD, accuracy control, layers in
float, calibration), selection on the check split, and one confirmation of the kept artifact on
images that no try was scored on.

A backend supplies an :class:`Int8Backend`: how to quantize with a settings dict, how to turn a
QAT-KD model into its artifact, its runner, and how many weighted ops really take INT8 weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fopro_edge.deploy.artifact import ModelArtifact
from fopro_edge.deploy.cpu_target import Int8Scheme
from fopro_edge.deploy.repair import Outcome, TryPlan, plan_repairs, run_tries
from fopro_edge.deploy.runners import Runner, predict
from fopro_edge.errors import ConfigError

if TYPE_CHECKING:
    from fopro_edge.deploy.pipeline import ExportContext, StepResult

log = logging.getLogger(__name__)


@dataclass
class Int8Backend:
    """What the INT8 step needs from one runtime. ``settings`` dicts are the backend's own recipe."""

    step: str  # the step's folder name
    title: str
    suffix: str  # ".onnx" | ".xml"
    base_label: str
    base: dict[str, Any]  # the first try's settings
    method_key: str  # the settings key a "method" try changes
    exclude_key: str  # the settings key that lists layers kept in float
    quantize: Callable[[dict[str, Any], np.ndarray, Path, bool], ModelArtifact]  # (settings, images, path, accuracy control)
    runner: Callable[[Path], Runner]
    rank: Callable[[np.ndarray], list[tuple[str, float]]]  # most sensitive layers first
    coverage: Callable[[Path], tuple[int, int]]  # (weighted ops with INT8 weights, weighted ops)
    from_qat: Callable[[Any, Path], ModelArtifact] | None = None  # None: no QAT-KD for this backend
    subtract_from_logits: Callable[[Path, Any], None] | None = None  # None: no logit offsets for this backend
    qat_preset: str = "performance"
    check: Callable[[Path], None] = lambda path: None
    methods: tuple[str, ...] = ()
    accuracy_control: bool = False  # an accuracy-control repair try
    accuracy_control_first: bool = False  # the first try already uses accuracy control
    notes: list[str] = field(default_factory=list)
    report_notes: Callable[[Any], list[str]] = lambda report: []  # notes on the kept artifact's gate report
    cleanup: tuple[Path, ...] = ()  # work files removed when the step ends


def int8_step(x: ExportContext, onnx_step: StepResult, b: Int8Backend, scheme: Int8Scheme) -> StepResult:
    """PTQ (or QAT-KD), repaired while the gate fails, kept, confirmed once, reported."""
    p = x.profile
    d = x.out / b.step
    d.mkdir(parents=True, exist_ok=True)
    cal, _ = x.calibration()
    method = p.quantization.method
    if method == "qat" and b.from_qat is None:
        raise ConfigError(f"quantization.method: 'qat' is not available for target '{x.target}' (use ptq or auto)")
    notes: list[str] = [*scheme.notes, *b.notes]
    extra: dict[str, Any] = {"calibration": {"count": len(cal), "class_counts": cal.class_counts,
                                             "rare_missing": list(cal.rare_missing)},
                             "deploy_cpu": scheme.to_dict(), "method": method}
    if cal.rare_missing:
        notes.append(f"the first calibration set ({cal.source}) holds no image of rare class(es) {', '.join(cal.rare_missing)}")
    ranking: list[tuple[str, float]] = []

    def make(plan: TryPlan, best: Outcome | None, k: int) -> Outcome:
        path = d / f"try-{k}{b.suffix}"
        if plan.qat:
            result = _qat(x, b, scheme, probe=d / f"try-qat-probe{b.suffix}")
            art, offsets = _subtract_offsets(x, b, b.from_qat(result.model, path), None)
            extra["qat"] = result.summary()
            settings: dict[str, Any] = {"method": "qat-kd", "preset": b.qat_preset,
                                        "seven_bit_weights": scheme.reduce_range, "best_step": result.best_step,
                                        "steps": result.steps, "seconds": round(result.seconds, 1)}
            used = len(cal)
        else:
            prev = best.settings if best and best.settings.get("method") != "qat-kd" else {}
            size = plan.calibration_size or prev.get("calibration_size")
            c, images = x.calibration(size)
            settings = {**b.base, b.method_key: plan.method or prev.get(b.method_key, b.base[b.method_key])}
            if plan.float_layers:
                if not ranking:
                    ranking.extend(b.rank(x.ranking_images()))
                    extra["sensitivity_ranking"] = [{"node": n, "score": round(v, 4)} for n, v in ranking[:20]]
                settings[b.exclude_key] = tuple(n for n, _ in ranking[: plan.float_layers])
            art, offsets = _subtract_offsets(x, b, b.quantize(settings, images, path, plan.accuracy_control), size)
            settings = {**settings, "calibration_size": size, "accuracy_control": plan.accuracy_control}
            used = len(c)
        if offsets is not None:
            settings["logit_offsets"] = offsets.to_dict()
        b.check(art.path)
        quantized, total = b.coverage(art.path)
        settings["int8_weighted_ops"] = f"{quantized}/{total}"
        with b.runner(art.path) as r:
            report = x.gate(r, step=b.step, artifact=art.path, check_parity=False)
        return Outcome(art, report, settings, used)

    r = p.repair
    plans = plan_repairs(
        len(cal), len(x.splits.train), size_factor=r.calibration_size_factor, methods=b.methods,
        base_method=b.base[b.method_key], float_layers=r.float_layers,
        qat=method == "auto" and r.qat and b.from_qat is not None, accuracy_control=b.accuracy_control,
        rare_missing=bool(cal.rare_missing), max_tries=r.max_tries,
        method_noun="range estimator" if b.method_key == "range_estimator" else "calibration method",
    )
    first = (TryPlan("quantization-aware distillation (QAT-KD) from the FP32 student", qat=True) if method == "qat"
             else TryPlan(b.base_label, accuracy_control=b.accuracy_control_first))
    best, rlog = run_tries(first, make, plans, enabled=r.enabled, until=r.until)
    for f in b.cleanup:
        f.unlink(missing_ok=True)
    art = _keep(best.artifact, d / f"model{b.suffix}", d, f"try-*{b.suffix}")
    report = replace(best.report, artifact=_rel(art.path, x.out))
    _record_calibration(x, d, best, notes, extra)
    quantized, total = b.coverage(art.path)
    extra.update({"settings": best.settings, "int8_weighted_ops": {"int8": quantized, "total": total}})
    notes += [f"{quantized} of {total} weighted ops take INT8 weights", *_offsets_notes(best.settings, x.class_names),
              *b.report_notes(report)]
    with b.runner(art.path) as runner:
        confirmation = x.confirm(runner, step=b.step, artifact=art.path)
    return x.finish_step(b.step, b.title, d, art, report, repair=rlog if len(rlog.attempts) > 1 else None,
                         notes=tuple(notes), extra=extra, confirmation=confirmation)


def _qat(x: ExportContext, b: Int8Backend, scheme: Int8Scheme, *, probe: Path):
    """QAT-KD whose early stop scores each checkpoint's artifact (written to ``probe``, then removed)."""
    from fopro_edge.deploy import qat

    _, images = x.calibration()
    sel_images, sel_labels, sel_reference = x.selection_arrays()
    data = x.recipe.data

    def deployed_logits(model: Any) -> np.ndarray:
        art, _ = _subtract_offsets(x, b, b.from_qat(model, probe), None)
        try:
            with b.runner(art.path) as r:
                return predict(r, x.check.batches(), x.profile.check.batch_size)
        finally:
            for f in art.files:
                f.unlink(missing_ok=True)
    with qat.torch_threads(x.profile.threads):
        quantized = qat.fake_quantize(x.student, images, preset=b.qat_preset, seven_bit_weights=scheme.reduce_range)
        return qat.qat_distill(
            x.student, quantized, x.splits.train, image_size=x.info.image_size, config=x.profile.qat,
            augment=data.augment, flips=data.flips, select_images=sel_images, select_labels=sel_labels,
            select_reference=sel_reference, rare_ids=x.rare_ids, check=x.profile.check,
            seed=x.profile.calibration.seed, deployed_logits=deployed_logits,
        )


def _subtract_offsets(x: ExportContext, b: Int8Backend, art: ModelArtifact, size: int | None) -> tuple[ModelArtifact, Any]:
    """``art`` with the per-class logit offsets subtracted (:mod:`~fopro_edge.deploy.logit_offsets`), fitted on
    class-stratified calibration images (``ExportContext.stratified_calibration``: those of ``size``, None for
    the base set); unchanged where the profile or backend has none."""
    from fopro_edge.deploy.logit_offsets import fit_offsets

    if not x.profile.quantization.logit_offsets or b.subtract_from_logits is None:
        return art, None
    images, reference = x.stratified_calibration(size)
    with b.runner(art.path) as r:
        quantized = predict(r, [images], x.profile.check.batch_size)
    offsets = fit_offsets(quantized, reference)
    b.subtract_from_logits(art.path, offsets.offsets)
    return art.rehashed(), offsets


def _offsets_notes(settings: dict[str, Any], class_names: list[str]) -> list[str]:
    fitted = settings.get("logit_offsets")
    if not fitted:
        return []
    offsets = fitted["offsets"]
    worst = sorted(range(len(offsets)), key=lambda i: -abs(offsets[i]))[:3]
    return [f"per-class logit offsets subtracted (fitted on {fitted['images']} calibration images against the FP32 "
            f"student, common scale {fitted['scale']:.3f}): largest " +
            ", ".join(f"{class_names[i]} {offsets[i]:+.2f}" for i in worst)]


def _rel(p: Path, base: Path) -> str:
    try:
        return str(Path(p).relative_to(base))
    except ValueError:
        return str(p)


def _keep(chosen: ModelArtifact, final: Path, d: Path, pattern: str) -> ModelArtifact:
    """Move the kept try's files to their final names and delete the other tries."""
    import shutil

    moved = []
    for f in chosen.files:
        dst = final.with_suffix(f.suffix) if f != chosen.path else final
        if f != dst:
            shutil.move(str(f), str(dst))
        moved.append(dst)
    for f in d.glob(pattern):
        f.unlink(missing_ok=True)
    for f in d.glob(pattern.replace(final.suffix, ".bin")):
        f.unlink(missing_ok=True)
    return ModelArtifact.from_files(moved[0], chosen.target, chosen.precision, extra_files=moved[1:],
                                    parent=chosen.parent, metadata=chosen.metadata)


def _record_calibration(x: ExportContext, d: Path, best: Outcome, notes: list[str], extra: dict[str, Any]) -> None:
    """When the kept try used another calibration set than the shared one, save and report it."""
    from fopro_edge.deploy.calibration import save_calibration

    size = best.settings.get("calibration_size")
    if size is None:
        return
    used, _ = x.calibration(size)
    save_calibration(d / "calibration.json", used, {"note": "the repair kept this larger calibration set"})
    extra["calibration"] = {"count": len(used), "class_counts": used.class_counts, "rare_missing": list(used.rare_missing)}
    notes.append(f"the repair kept a larger rare-stratified calibration set: {len(used)} images "
                 f"(saved in {d.name}/calibration.json; rare classes missing: {', '.join(used.rare_missing) or 'none'})")
