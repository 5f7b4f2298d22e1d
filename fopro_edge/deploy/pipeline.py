"""``export()``: checkpoint -> ONNX -> quantize/compile, with the rare-class gate after every step.

Each step writes its artifact and its own check (``check.json`` + ``check.md``) into its folder;
a failed step keeps its artifact, marked by a ``FAILED`` file and ``"status": "FAILED"``, and the
chain stops there. The target folder also gets ``export.json``, ``report.md`` and the shared
``calibration.json``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fopro_edge.deploy import profiles as P
from fopro_edge.deploy.artifact import ModelArtifact
from fopro_edge.deploy.calibration import (
    CalibrationSet,
    CheckImages,
    load_calibration,
    load_images,
    save_calibration,
    select_calibration,
)
from fopro_edge.deploy.gate import GateReport, evaluate_gate
from fopro_edge.deploy.repair import Outcome, RepairLog, TryPlan, plan_repairs, run_tries
from fopro_edge.deploy.runners import OpenVINORunner, OrtRunner, Runner, TensorRTRunner, TorchRunner, predict
from fopro_edge.errors import ConfigError, GateFailedError, MissingDependencyError
from fopro_edge.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

PASSED, FAILED, NOT_RUN = "PASSED", "FAILED", "NOT_RUN"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StepResult:
    name: str
    title: str
    status: str  # PASSED | FAILED | NOT_RUN
    directory: Path
    artifact: ModelArtifact | None = None
    gate: GateReport | None = None
    repair: RepairLog | None = None
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "status": self.status, "directory": str(self.directory),
            "artifact": self.artifact.to_dict() if self.artifact else None,
            "gate": self.gate.to_dict() if self.gate else None,
            "repair": self.repair.to_dict() if self.repair else None,
            "notes": list(self.notes), "extra": self.extra,
        }


@dataclass(frozen=True)
class ExportResult:
    target: str
    precision: str
    out_dir: Path
    checkpoint: Path
    checkpoint_sha256: str
    steps: tuple[StepResult, ...]
    profile: dict[str, Any]
    calibration: CalibrationSet | None = None
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(s.status != FAILED for s in self.steps)

    @property
    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == FAILED), None)

    @property
    def final(self) -> StepResult | None:
        """The last step that produced an artifact."""
        return next((s for s in reversed(self.steps) if s.artifact is not None), None)

    def raise_for_gate(self) -> None:
        """Raise :class:`GateFailedError` (exit code 5) naming the step and the failing classes."""
        s = self.failed_step
        if s is None:
            return
        g = s.gate
        classes = ", ".join(g.failing_classes) if g and g.failing_classes else "(a global threshold)"
        why = g.reasons[0] if g and g.reasons else "see the check report"
        where = s.artifact.path if s.artifact else s.directory
        raise GateFailedError(
            f"rare-class gate FAILED at step '{s.name}' ({s.title}): failing classes: {classes}; {why}. "
            f"Artifact kept, marked FAILED: {where}; report: {s.directory / 'check.md'}"
        )

    def summary_rows(self) -> list[dict[str, str]]:
        rows = []
        for s in self.steps:
            g = s.gate
            rows.append({
                "step": s.name,
                "artifact": _rel(s.artifact.path, self.out_dir) if s.artifact else "-",
                "size": f"{s.artifact.size_mib:.2f} MiB" if s.artifact else "-",
                "parity": f"{g.parity.max_abs_logit_diff:.2g}" if g else "-",
                "bal_acc": f"{100 * g.reference.balanced_accuracy:.1f}->{100 * g.candidate.balanced_accuracy:.1f}" if g else "-",
                "rare_recall": (f"{_pct(g.reference.rare_recall)}->{_pct(g.candidate.rare_recall)}" if g else "-"),
                "flips": f"{g.flips.total} (rare r->w {g.flips.rare_right_to_wrong})" if g else "-",
                "status": {PASSED: "PASS", FAILED: "FAIL"}.get(s.status, "NOT RUN"),
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "precision": self.precision, "passed": self.passed,
            "status": PASSED if self.passed else FAILED, "out_dir": str(self.out_dir),
            "checkpoint": str(self.checkpoint), "checkpoint_sha256": self.checkpoint_sha256,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "steps": [s.to_dict() for s in self.steps], "notes": list(self.notes), "profile": self.profile,
        }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _rel(p: Path, base: Path) -> str:
    try:
        return str(Path(p).relative_to(base))
    except ValueError:
        return str(p)


def format_summary(result: ExportResult) -> str:
    """The plain-text table the CLI prints."""
    rows = result.summary_rows()
    cols = [("step", "step"), ("artifact", "artifact"), ("size", "size"), ("parity", "max|dlogit|"),
            ("bal_acc", "bal.acc %"), ("rare_recall", "rare recall %"), ("flips", "flips"), ("status", "gate")]
    widths = {k: max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in cols}
    line = "  ".join(h.ljust(widths[k]) for k, h in cols)
    out = [line, "  ".join("-" * widths[k] for k, _ in cols)]
    out += ["  ".join(r[k].ljust(widths[k]) for k, _ in cols) for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------- sources


def resolve_source(source: str | Path) -> tuple[Path, Path | None]:
    """``(checkpoint, run_dir or None)`` from a run directory or a checkpoint file."""
    p = Path(source)
    if p.is_dir():
        ckpt = p / "checkpoints" / "best.pt"
        if not ckpt.is_file():
            raise ConfigError(f"--run: {p} holds no checkpoints/best.pt (is it a fopro-edge run directory?)")
        return ckpt, p
    if p.is_file():
        run = p.parent.parent if p.parent.name == "checkpoints" and (p.parent.parent / "recipe.yaml").is_file() else None
        return p, run
    raise ConfigError(f"--run/--checkpoint: not found: {p}")


def default_out_dir(checkpoint: Path, run_dir: Path | None, target: str) -> Path:
    return (run_dir if run_dir is not None else checkpoint.parent) / "export" / target


def _recipe_export(run_dir: Path | None, embedded: dict[str, Any], checkpoint: Path) -> tuple[dict[str, Any], str]:
    """The recipe's ``export`` section: from ``RUN_DIR/recipe.yaml`` when present (editable after
    training), else from the recipe embedded in the checkpoint."""
    from fopro_edge.config import read_yaml_mapping

    if run_dir is not None and (run_dir / "recipe.yaml").is_file():
        path = run_dir / "recipe.yaml"
        return dict(read_yaml_mapping(path, "recipe").get("export") or {}), str(path)
    return dict(embedded.get("export") or {}), f"{checkpoint} (embedded recipe)"


# --------------------------------------------------------------------------- the export context


class ExportContext:
    """State shared by the steps of one export: student, profile, check data, reference logits."""

    def __init__(self, checkpoint: Path, target: str, profile: Any, out_dir: Path) -> None:
        from fopro_edge.config import recipe_from_dict
        from fopro_edge.data import build_splits
        from fopro_edge.distill.checkpoint import load_student

        self.target, self.profile, self.out = target, profile, out_dir
        self.student, self.info = load_student(checkpoint)
        recipe = recipe_from_dict(self.info.recipe, source=f"{checkpoint} (embedded recipe)", check_paths=False)
        self.splits = build_splits(recipe.data, recipe.seed)
        if list(self.splits.class_names) != list(self.info.class_names):
            raise ConfigError(
                f"{checkpoint}: the data named by its recipe has classes {list(self.splits.class_names)}, the checkpoint "
                f"{list(self.info.class_names)} (did the dataset change since training?)"
            )
        self.class_names = list(self.info.class_names)
        self.rare = list(self.info.rare_classes)
        index = {n: i for i, n in enumerate(self.class_names)}
        self.rare_ids = [index[n] for n in self.rare if n in index]
        gate = profile.check
        self.check = CheckImages(self.splits.split(gate.split), self.info.image_size, batch_size=gate.batch_size,
                                 max_images=gate.max_images)
        with TorchRunner(self.student, threads=profile.threads) as ref:
            self.reference = predict(ref, self.check.batches())
        log.info("check split '%s': %d images; PyTorch student computed", gate.split, len(self.check))
        self._cal_cache: dict[int, tuple[CalibrationSet, np.ndarray]] = {}
        self.base_calibration: CalibrationSet | None = None

    # -- gate
    def gate(self, runner: Runner, *, step: str, artifact: Path, check_parity: bool) -> GateReport:
        logits = predict(runner, self.check.batches(), self.profile.check.batch_size)
        report = evaluate_gate(
            self.check.labels, self.reference, logits, self.class_names, self.rare, self.profile.check,
            step=step, artifact=_rel(artifact, self.out), runtime=runner.name, precision=runner.precision,
            split=self.profile.check.split, check_parity=check_parity, runtime_info=runner.info,
        )
        log.info("gate %s: %s (bal. acc %.4f -> %.4f, rare r->w %d)", step, report.status,
                 report.reference.balanced_accuracy, report.candidate.balanced_accuracy, report.flips.rare_right_to_wrong)
        return report

    # -- calibration
    def calibration(self, size: int | None = None) -> tuple[CalibrationSet, np.ndarray]:
        """The base set (``size=None``: the profile's size or its indices file) or a larger one."""
        cfg = self.profile.calibration
        train = self.splits.train
        key = -1 if size is None else int(size)
        if key in self._cal_cache:
            return self._cal_cache[key]
        if size is None and cfg.indices_file:
            cal = load_calibration(cfg.indices_file, train.labels, self.class_names, self.rare, "calibration.indices_file")
        else:
            cal = select_calibration(train.labels, self.class_names, self.rare, cfg.size if size is None else size, cfg.seed)
        images = load_images(train, cal.indices, self.info.image_size)
        if size is None:
            self.base_calibration = cal
            save_calibration(self.out / "calibration.json", cal, {"checkpoint_sha256": self.info.sha256})
        log.info("calibration: %d train images (%s), rare classes: %s", len(cal),
                 ", ".join(f"{k} {v}" for k, v in cal.class_counts.items()), ", ".join(self.rare) or "-")
        self._cal_cache[key] = (cal, images)
        return cal, images

    def base_metadata(self, onnx_path: Path) -> dict[str, str]:
        from fopro_edge.deploy.onnx_backend import read_metadata

        return read_metadata(onnx_path)

    # -- step bookkeeping
    def finish_step(self, name: str, title: str, d: Path, artifact: ModelArtifact | None, gate: GateReport | None, *,
                    repair: RepairLog | None = None, notes: tuple[str, ...] = (), extra: dict[str, Any] | None = None,
                    status: str | None = None) -> StepResult:
        status = status or (NOT_RUN if gate is None else gate.status)
        step = StepResult(name, title, status, d, artifact, gate, repair, tuple(notes), dict(extra or {}))
        d.mkdir(parents=True, exist_ok=True)
        marker = d / "FAILED"
        if status == FAILED:
            atomic_write_text(marker, "This artifact FAILED the rare-class gate; do not deploy it.\n"
                              + "".join(f"- {r}\n" for r in (gate.reasons if gate else ())) + "See check.md.\n")
        else:
            marker.unlink(missing_ok=True)
        if gate is not None:
            atomic_write_json(d / "check.json", {"status": status, **step.to_dict()})
            md = gate.to_markdown()
            if repair is not None:
                md += "\n## Repair\n\n" + repair.to_markdown()
            if notes:
                md += "\n## Notes\n\n" + "".join(f"- {n}\n" for n in notes)
            atomic_write_text(d / "check.md", md)
        return step


# --------------------------------------------------------------------------- steps


def _step_onnx(x: ExportContext, *, name: str = "onnx", title: str = "ONNX fp32 (checked in ONNX Runtime)") -> StepResult:
    from fopro_edge.deploy.onnx_backend import export_onnx

    p = x.profile
    d = x.out / name
    art = export_onnx(x.student, x.info, d / "model.onnx", opset=p.opset, dynamic_batch=p.dynamic_batch,
                      batch_size=p.batch_size)
    with OrtRunner(art.path, threads=p.threads) as r:
        report = x.gate(r, step=name, artifact=art.path, check_parity=True)
    return x.finish_step(name, title, d, art, report, extra={"opset": p.opset, "fft_ops": 0, "onnx_checker": "passed"})


def _keep(chosen: ModelArtifact, final: Path, d: Path, pattern: str) -> ModelArtifact:
    """Move the kept try's files to their final names and delete the other tries."""
    moved = []
    for f in chosen.files:
        dst = final.with_suffix(f.suffix) if f != chosen.path else final
        if f != dst:
            shutil.move(str(f), str(dst))
        moved.append(dst)
    for f in d.glob(pattern):
        f.unlink(missing_ok=True)
    return ModelArtifact.from_files(moved[0], chosen.target, chosen.precision, extra_files=moved[1:],
                                    parent=chosen.parent, metadata=chosen.metadata)


def _ort_quant_step(x: ExportContext, onnx_step: StepResult, *, name: str, title: str, symmetric: bool) -> StepResult:
    """ORT static QDQ with repair; ``symmetric``: TensorRT explicit-quantization rules."""
    from fopro_edge.deploy import onnxruntime_backend as ob

    p = x.profile
    d = x.out / name
    d.mkdir(parents=True, exist_ok=True)
    src = onnx_step.artifact.path
    pre = d / "model.pre.onnx"
    ob.preprocess(src, pre)
    cal, images = x.calibration()
    fixed = not p.dynamic_batch
    bs = p.batch_size if fixed else p.calibration.batch_size
    notes: list[str] = []
    extra: dict[str, Any] = {"calibration": {"count": len(cal), "class_counts": cal.class_counts,
                                             "rare_missing": list(cal.rare_missing)}}
    if cal.rare_missing:
        notes.append(f"the first calibration set ({cal.source}) holds no image of rare class(es) {', '.join(cal.rare_missing)}")
    if symmetric:
        base = ob.QuantSettings(method=p.calibration.method, activation_type="s8", per_channel=True, symmetric=True,
                                op_types=tuple(p.quantize_op_types))
    else:
        q = p.quantization
        base = ob.QuantSettings(method=p.calibration.method, per_channel=q.per_channel, reduce_range=q.reduce_range,
                                activation_type=q.activation_type if q.activation_type != "auto" else "u8")
        if q.activation_type == "auto":
            choice = ob.choose_activation_type(pre, d, images, base, threads=p.threads, runs=q.timing_runs,
                                               warmup=q.timing_warmup, batch_size=bs, fixed_batch=fixed, float_path=src)
            base = ob.QuantSettings(**{**base.to_dict(), "activation_type": choice.chosen})
            extra["activation_choice"] = choice.to_dict()
            notes.append(choice.reason)
    ranking: list[tuple[str, float]] = []

    def make(plan: TryPlan, best: Outcome | None, n: int) -> Outcome:
        prev = best.settings if best else {}
        size = plan.calibration_size or prev.get("calibration_size")
        c, imgs = x.calibration(size)
        settings = ob.QuantSettings(**{**base.to_dict(), "method": plan.method or prev.get("method", base.method)})
        if plan.float_layers:
            if not ranking:
                ranking.extend(ob.rank_sensitive_nodes(pre, best.artifact.path, imgs[: p.repair.ranking_images]))
                extra["sensitivity_ranking"] = [{"node": k, "sqnr_loss_db": round(v, 3)} for k, v in ranking[:20]]
            settings = ob.QuantSettings(**{**settings.to_dict(),
                                           "nodes_to_exclude": tuple(k for k, _ in ranking[: plan.float_layers])})
        art = ob.quantize_qdq(pre, d / f"try-{n}.onnx", imgs, settings, batch_size=bs, fixed_batch=fixed,
                              metadata_source=src, target=x.target)
        art = replace(art, parent=onnx_step.artifact.sha256)
        if symmetric:
            ob.assert_trt_qdq(art.path)
        with OrtRunner(art.path, precision="int8", threads=p.threads) as r:
            report = x.gate(r, step=name, artifact=art.path, check_parity=False)
        return Outcome(art, report, {**settings.to_dict(), "calibration_size": size, "calibration_source": c.source},
                       len(c))

    plans = plan_repairs(len(cal), len(x.splits.train), size_factor=p.repair.calibration_size_factor,
                         methods=p.repair.methods, base_method=base.method, float_layers=p.repair.float_layers,
                         max_tries=p.repair.max_tries)
    label = (f"{base.method}, {base.activation_type} activations{' (symmetric)' if symmetric else ''}, "
             f"{'per-channel' if base.per_channel else 'per-tensor'} weights")
    best, rlog = run_tries(label, make, plans, enabled=p.repair.enabled)
    art = _keep(best.artifact, d / "model.onnx", d, "try-*.onnx")
    best = replace(best, report=replace(best.report, artifact=_rel(art.path, x.out)))
    pre.unlink(missing_ok=True)
    _record_repaired_calibration(x, d, best, notes, extra)
    if symmetric:
        extra["tensorrt_qdq_rules"] = "passed: int8 Q/DQ, zero points 0, per-tensor activations, per-channel weights on the output axis, float bias"
    extra["settings"] = best.settings
    return x.finish_step(name, title, d, art, best.report, repair=rlog if len(rlog.attempts) > 1 else None,
                         notes=tuple(notes), extra=extra)


def _record_repaired_calibration(x: ExportContext, d: Path, best: Outcome, notes: list[str], extra: dict[str, Any]) -> None:
    """When the kept try used another calibration set than the shared one, save and report it."""
    size = best.settings.get("calibration_size")
    if size is None:
        return
    used, _ = x.calibration(size)
    save_calibration(d / "calibration.json", used, {"note": "the repair kept this larger calibration set"})
    extra["calibration"] = {"count": len(used), "class_counts": used.class_counts, "rare_missing": list(used.rare_missing)}
    notes.append(f"the repair kept a larger rare-stratified calibration set: {len(used)} images "
                 f"(saved in {d.name}/calibration.json; rare classes missing: {', '.join(used.rare_missing) or 'none'})")


def _flow_onnx(x: ExportContext) -> list[StepResult]:
    return [_step_onnx(x)]


def _flow_onnxruntime(x: ExportContext) -> list[StepResult]:
    steps = [_step_onnx(x)]
    if x.profile.precision == "int8" and steps[-1].status == PASSED:
        steps.append(_ort_quant_step(x, steps[0], name="int8", title="ONNX Runtime INT8 static QDQ", symmetric=False))
    return steps


def _ov_runner(x: ExportContext, path: Path, precision: str) -> OpenVINORunner:
    p = x.profile
    return OpenVINORunner(path, precision=precision, inference_precision=p.inference_precision, threads=p.threads,
                          performance_hint=p.performance_hint, device=p.device)


def _flow_openvino(x: ExportContext) -> list[StepResult]:
    from fopro_edge.deploy import openvino_backend as vb

    p = x.profile
    steps = [_step_onnx(x)]
    if steps[-1].status != PASSED:
        return steps
    src = steps[0].artifact.path
    meta = {**x.base_metadata(src), "fopro_edge.inference_precision_hint": p.inference_precision}
    if p.precision in ("fp32", "fp16"):
        name = f"ir-{p.precision}"
        d = x.out / name
        art = vb.convert_ir(src, d / "model.xml", precision=p.precision, metadata=meta, parent=steps[0].artifact.sha256)
        with _ov_runner(x, art.path, p.precision) as r:
            exact = p.precision == "fp32" and r.info["inference_precision"] == "f32"
            report = x.gate(r, step=name, artifact=art.path, check_parity=exact)
        note = _ov_precision_note(report.runtime_info)
        steps.append(x.finish_step(name, f"OpenVINO IR {p.precision}", d, art, report, notes=(note,),
                                   extra={"inference_precision": report.runtime_info.get("inference_precision")}))
        return steps

    name = "ir-int8"
    d = x.out / name
    d.mkdir(parents=True, exist_ok=True)
    cal, _ = x.calibration()
    n = p.nncf
    base = vb.NNCFSettings(preset=n.preset, fast_bias_correction=n.fast_bias_correction,
                           range_estimator=n.range_estimator, ignored_types=tuple(n.ignored_types),
                           ignored_patterns=tuple(n.ignored_patterns))
    ranking: list[tuple[str, float]] = []
    extra: dict[str, Any] = {"calibration": {"count": len(cal), "class_counts": cal.class_counts,
                                             "rare_missing": list(cal.rare_missing)}}

    def make(plan: TryPlan, best: Outcome | None, k: int) -> Outcome:
        prev = best.settings if best else {}
        size = plan.calibration_size or prev.get("calibration_size")
        c, imgs = x.calibration(size)
        s = vb.NNCFSettings(**{**base.to_dict(), "range_estimator": plan.method or prev.get("range_estimator", base.range_estimator)})
        if plan.float_layers:
            if not ranking:
                ranking.extend(_rank_for_openvino(x, src, d, imgs))
                extra["sensitivity_ranking"] = [{"node": a, "sqnr_loss_db": round(v, 3)} for a, v in ranking[:20]]
            s = vb.NNCFSettings(**{**s.to_dict(), "ignored_onnx_nodes": tuple(a for a, _ in ranking[: plan.float_layers])})
        path = d / f"try-{k}.xml"
        use_ac = plan.accuracy_control or (best is None and n.accuracy_control)
        if use_ac:
            vimgs, vlabels = _accuracy_control_images(x, n.accuracy_control_images)
            art = vb.quantize_ir_with_accuracy_control(
                src, path, imgs, vimgs, vlabels, s, class_names=x.class_names, rare_ids=x.rare_ids,
                max_drop=n.max_drop, metadata=meta, inference_precision=p.inference_precision,
                parent=steps[0].artifact.sha256)
        else:
            art = vb.quantize_ir(src, path, imgs, s, metadata=meta, parent=steps[0].artifact.sha256)
        with _ov_runner(x, art.path, "int8") as r:
            report = x.gate(r, step=name, artifact=art.path, check_parity=False)
        return Outcome(art, report, {**s.to_dict(), "calibration_size": size, "subset_size": len(imgs),
                                     "accuracy_control": use_ac}, len(c))

    r = p.repair
    plans = plan_repairs(len(cal), len(x.splits.train), size_factor=r.calibration_size_factor,
                         methods=r.range_estimators, base_method=base.range_estimator, float_layers=r.float_layers,
                         accuracy_control=r.accuracy_control and not n.accuracy_control, max_tries=r.max_tries)
    plans = [TryPlan(pl.label.replace("calibration method", "range estimator"), pl.calibration_size, pl.method,
                     pl.float_layers, pl.accuracy_control) for pl in plans]
    label = (f"nncf.{'quantize_with_accuracy_control' if n.accuracy_control else 'quantize'} preset {n.preset}, "
             f"range estimator {n.range_estimator}, subset_size={len(cal)}")
    best, rlog = run_tries(label, make, plans, enabled=r.enabled)
    art = _keep(best.artifact, d / "model.xml", d, "try-*")
    best = replace(best, report=replace(best.report, artifact=_rel(art.path, x.out)))
    ov_notes: list[str] = []
    _record_repaired_calibration(x, d, best, ov_notes, extra)
    extra.update({"settings": best.settings, "nncf_subset_size": best.settings.get("subset_size"),
                  "inference_precision": best.report.runtime_info.get("inference_precision")})
    steps.append(x.finish_step(name, "OpenVINO IR INT8 (NNCF)", d, art, best.report,
                               repair=rlog if len(rlog.attempts) > 1 else None,
                               notes=(_ov_precision_note(best.report.runtime_info),
                                      f"NNCF subset_size={best.settings.get('subset_size')} (= the calibration count, passed explicitly)",
                                      *ov_notes),
                               extra=extra))
    return steps


def _ov_precision_note(info: Mapping[str, Any]) -> str:
    req, act = info.get("inference_precision_requested"), info.get("inference_precision")
    text = f"OpenVINO inference precision used for the check: {act} (requested: {req})"
    if req == "auto":
        text += "; this is what OpenVINO picks by itself on this CPU — a deployment that sets no hint gets the same"
    else:
        text += f"; the deployment must compile with INFERENCE_PRECISION_HINT={req} to get what was checked"
    return text


def _rank_for_openvino(x: ExportContext, src: Path, d: Path, images: np.ndarray) -> list[tuple[str, float]]:
    """Per-node sensitivity from an ORT QDQ model of the same ONNX graph (backend-independent ranking)."""
    from fopro_edge.deploy import onnxruntime_backend as ob

    pre, probe = d / "rank.pre.onnx", d / "rank.qdq.onnx"
    try:
        ob.preprocess(src, pre)
        ob.quantize_qdq(pre, probe, images, ob.QuantSettings(), batch_size=x.profile.calibration.batch_size)
        return ob.rank_sensitive_nodes(pre, probe, images[: x.profile.repair.ranking_images])
    finally:
        pre.unlink(missing_ok=True)
        probe.unlink(missing_ok=True)


def _accuracy_control_images(x: ExportContext, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A rare-stratified subset of the train split for NNCF's accuracy control (not the check split,
    so the gate stays an independent check)."""
    cal = select_calibration(x.splits.train.labels, x.class_names, x.rare, count, x.profile.calibration.seed + 1)
    images = load_images(x.splits.train, cal.indices, x.info.image_size)
    return images, np.asarray(x.splits.train.labels)[list(cal.indices)]


def _flow_tensorrt(x: ExportContext) -> list[StepResult]:
    from fopro_edge.deploy import tensorrt_backend as tb
    from fopro_edge.deploy.onnx_backend import INPUT_NAME

    p = x.profile
    steps = [_step_onnx(x, title="TensorRT-ready ONNX fp32 (checked in ONNX Runtime)")]
    if steps[-1].status != PASSED:
        return steps
    engine_src = steps[0]
    if p.precision == "int8":
        steps.append(_ort_quant_step(x, steps[0], name="int8-qdq",
                                     title="INT8 QDQ for TensorRT explicit quantization (checked in ONNX Runtime)",
                                     symmetric=True))
        if steps[-1].status != PASSED:
            return steps
        engine_src = steps[-1]
    spec = tb.EngineSpec(INPUT_NAME, x.info.image_size, p.dynamic_batch, p.batch_size, p.max_batch_size, p.workspace_mb)
    onnx_rel = _rel(engine_src.artifact.path, x.out)
    engine_name = f"engine/model.{p.precision}.engine"
    script = tb.write_build_script(x.out, onnx_rel, engine_name, p.precision, spec)
    cmd = tb.trtexec_command(onnx_rel, engine_name, p.precision, spec)
    ok, why = tb.tensorrt_status()
    d = x.out / "engine"
    (d / "NOT_BUILT.txt").unlink(missing_ok=True)
    if not ok:
        note = (f"TensorRT engine NOT built: {why}. Build it on the target GPU (e.g. on the Jetson) with "
                f"{_rel(script, x.out)}: {cmd}")
        atomic_write_text(d / "NOT_BUILT.txt", note + "\n")
        steps.append(x.finish_step("engine", f"TensorRT {p.precision} engine", d, None, None, status=NOT_RUN,
                                   notes=(note,), extra={"trtexec": cmd, "build_script": str(script)}))
        return steps
    art = tb.build_engine(engine_src.artifact.path, x.out / engine_name, p.precision, spec,
                          timing_cache=x.out / "engine" / "timing.cache", parent=engine_src.artifact.sha256)
    with TensorRTRunner(art.path, precision=p.precision) as r:
        report = x.gate(r, step="engine", artifact=art.path, check_parity=p.precision == "fp32")
    steps.append(x.finish_step("engine", f"TensorRT {p.precision} engine", d, art, report,
                               notes=(f"built and checked on {art.metadata.get('gpu')} with TensorRT {art.metadata.get('tensorrt')}",),
                               extra={"trtexec": cmd, "build": art.metadata}))
    return steps


FLOWS: dict[str, Callable[[ExportContext], list[StepResult]]] = {
    "onnx": _flow_onnx,
    "onnxruntime": _flow_onnxruntime,
    "openvino": _flow_openvino,
    "tensorrt": _flow_tensorrt,
}


# --------------------------------------------------------------------------- entry point


def export(
    source: str | Path,
    target: str,
    precision: str | None = None,
    *,
    out_dir: str | Path | None = None,
    profile_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_source: str = "command line",
) -> ExportResult:
    """Export a run's best checkpoint (``source`` = run directory) or a checkpoint file to ``target``.

    Steps: ONNX (always) -> the target's conversion/quantization, each followed by the rare-class
    gate. Never raises for a failed gate: check ``result.passed`` or call ``result.raise_for_gate()``.
    """
    P.check_target(target)
    checkpoint, run_dir = resolve_source(source)
    from fopro_edge.distill.checkpoint import load_checkpoint

    embedded = load_checkpoint(checkpoint).get("recipe") or {}
    recipe_export, recipe_src = _recipe_export(run_dir, embedded, checkpoint)
    layer = dict(overrides or {})
    if precision is not None:
        layer["precision"] = precision
    profile = P.load_profile(target, profile_file=profile_file, recipe_export=recipe_export, recipe_source=recipe_src,
                             overrides=layer, override_source=override_source)
    if target == "tensorrt" and profile.build_engine:
        from fopro_edge.deploy.tensorrt_backend import tensorrt_status

        ok, why = tensorrt_status()
        if not ok:
            raise MissingDependencyError(
                f"--build-engine: cannot build a TensorRT engine on this machine ({why}); run without --build-engine to "
                "write the TensorRT-ready ONNX and build_engine.sh, then build on the target GPU"
            )
    out = Path(out_dir) if out_dir else default_out_dir(checkpoint, run_dir, target)
    out.mkdir(parents=True, exist_ok=True)
    keep = getattr(getattr(profile, "calibration", None), "indices_file", None)
    _clean_previous(out, keep=Path(keep).resolve() if keep else None)
    log.info("export %s %s -> %s", target, profile.precision, out)
    x = ExportContext(checkpoint, target, profile, out)
    steps = FLOWS[target](x)
    notes = []
    if target == "tensorrt" and steps[-1].status == NOT_RUN:
        notes.append(steps[-1].notes[0])
    result = ExportResult(
        target=target, precision=profile.precision, out_dir=out, checkpoint=checkpoint, checkpoint_sha256=x.info.sha256,
        steps=tuple(steps), profile=P.profile_to_dict(profile), calibration=x.base_calibration, notes=tuple(notes),
    )
    atomic_write_json(out / "export.json", result.to_dict())
    atomic_write_text(out / "report.md", render_report(result))
    return result


_OUTPUTS = ("onnx", "int8", "int8-qdq", "ir-fp32", "ir-fp16", "ir-int8")
_TOP_FILES = ("export.json", "report.md", "calibration.json", "build_engine.sh")


def _clean_previous(out: Path, keep: Path | None = None) -> None:
    """Remove what an earlier export wrote into ``out`` (only names this module writes; a TensorRT
    timing cache and a calibration file about to be reused are kept), so no stale step survives
    next to the new report."""
    for name in _OUTPUTS:
        if (out / name).is_dir() and not (keep and (out / name).resolve() in keep.parents):
            shutil.rmtree(out / name)
    for name in _TOP_FILES:
        if not (keep and (out / name).resolve() == keep):
            (out / name).unlink(missing_ok=True)
    engine = out / "engine"
    if engine.is_dir():
        for f in engine.iterdir():
            if f.name != "timing.cache" and f.is_file():
                f.unlink()


def render_report(r: ExportResult) -> str:
    lines = [
        f"# Export report: {r.target} {r.precision} — {'PASSED' if r.passed else 'FAILED'}",
        "",
        f"- checkpoint: `{r.checkpoint}` (sha256 {r.checkpoint_sha256[:16]}…)",
        f"- output: `{r.out_dir}`",
        f"- check split: {r.profile['check']['split']}; every step is compared image by image with the PyTorch student",
    ]
    if r.calibration is not None:
        c = r.calibration
        lines.append(f"- calibration: {len(c)} train images ({c.source}), per class: "
                     + ", ".join(f"{k} {v}" for k, v in c.class_counts.items())
                     + (f"; MISSING rare classes: {', '.join(c.rare_missing)}" if c.rare_missing else ""))
    lines += ["", "## Steps", "", "```", format_summary(r), "```", ""]
    for n in r.notes:
        lines += [f"**{n}**", ""]
    for s in r.steps:
        lines += [f"## {s.name}: {s.title} — {s.status}", ""]
        lines += [f"- {n}" for n in s.notes]
        if s.artifact is not None:
            lines.append(f"- artifact: `{_rel(s.artifact.path, r.out_dir)}`, {s.artifact.size_bytes} bytes, "
                         f"sha256 {s.artifact.sha256[:16]}…")
        choice = s.extra.get("activation_choice")
        if choice:
            t = choice["timings"]
            lines.append(f"- activation format by timing on {choice['cpu']} (threads {choice['threads'] or 'default'}): "
                         + ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in t.items())
                         + f" -> **{choice['chosen']}**")
        if s.repair is not None:
            lines += ["", s.repair.to_markdown()]
        if s.gate is not None:
            lines += ["", f"Details: `{_rel(s.directory / 'check.md', r.out_dir)}`", ""]
            body = s.gate.to_markdown().split("## Per class", 1)
            if len(body) == 2:
                lines += ["### Per class", body[1].split("\nThresholds:", 1)[0].strip(), ""]
        lines.append("")
    return "\n".join(lines)
