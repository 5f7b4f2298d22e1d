"""``export()``: checkpoint -> ONNX -> quantize/compile, with the rare-class gate after every step.

Each step writes its artifact and its own check (``check.json`` + ``check.md``) into its folder;
a failed step keeps its artifact, marked by a ``FAILED`` file and ``"status": "FAILED"``, and the
chain stops there. The target folder also gets ``export.json``, ``report.md`` and the shared
``calibration.json``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
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
from fopro_edge.deploy.cpu_target import int8_scheme
from fopro_edge.deploy.int8 import Int8Backend, int8_step
from fopro_edge.deploy.gate import GateReport, evaluate_gate
from fopro_edge.deploy.repair import RepairLog
from fopro_edge.deploy.runners import OpenVINORunner, OrtRunner, Runner, TensorRTRunner, TorchRunner, predict
from fopro_edge.errors import ConfigError, GateFailedError, MissingDependencyError, UnverifiedError
from fopro_edge.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

PASSED, FAILED, UNVERIFIED = "PASSED", "FAILED", "UNVERIFIED"  # UNVERIFIED: made, but not run here (no GPU)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StepResult:
    name: str
    title: str
    status: str  # PASSED | FAILED | UNVERIFIED
    directory: Path
    artifact: ModelArtifact | None = None
    gate: GateReport | None = None  # on the check (selection) split
    repair: RepairLog | None = None
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    confirmation: GateReport | None = None  # the kept artifact, once, on images no try was scored on

    @property
    def failed_gate(self) -> GateReport | None:
        return next((g for g in (self.gate, self.confirmation) if g is not None and not g.passed), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "status": self.status, "directory": str(self.directory),
            "artifact": self.artifact.to_dict() if self.artifact else None,
            "gate": self.gate.to_dict() if self.gate else None,
            "confirmation": self.confirmation.to_dict() if self.confirmation else None,
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
    def status(self) -> str:
        """FAILED if a step failed, else UNVERIFIED if a step could not be run here, else PASSED."""
        statuses = {s.status for s in self.steps}
        return FAILED if FAILED in statuses else UNVERIFIED if UNVERIFIED in statuses else PASSED

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == FAILED), None)

    @property
    def final(self) -> StepResult | None:
        """The last step that produced an artifact."""
        return next((s for s in reversed(self.steps) if s.artifact is not None), None)

    def raise_for_gate(self) -> None:
        """Raise :class:`GateFailedError` (exit code 5) naming the step and the failing classes, or
        :class:`UnverifiedError` (exit code 6) when a step could not be run here."""
        s = self.failed_step
        if s is None:
            unverified = [x for x in self.steps if x.status == UNVERIFIED]
            if unverified:
                raise UnverifiedError(f"step '{unverified[0].name}' is UNVERIFIED: {unverified[0].notes[0] if unverified[0].notes else 'it was not run here'}")
            return
        g = s.failed_gate
        classes = ", ".join(g.failing_classes) if g and g.failing_classes else "(a global threshold)"
        why = g.reasons[0] if g and g.reasons else "see the check report"
        where = s.artifact.path if s.artifact else s.directory
        confirming = g is not None and g is s.confirmation
        raise GateFailedError(
            f"rare-class gate FAILED at step '{s.name}' ({s.title})"
            + (f" on its confirmation ({g.split} split, passed on {s.gate.split})" if confirming and s.gate else "")
            + f": failing classes: {classes}; {why}. "
            + ("No other try can be chosen on these images: re-export with --set quantization.method=qat, or check "
               "on larger splits. " if confirming else "")
            + f"Artifact kept, marked FAILED: {where}; report: {s.directory / 'check.md'}"
        )

    def summary_rows(self) -> list[dict[str, str]]:
        """One row per step; a step confirmed on a second split gets a row per split."""
        rows = []
        for s in self.steps:
            status = {PASSED: "PASS", FAILED: "FAIL"}.get(s.status, s.status)
            checks = [(s.name, s.gate)]
            if s.confirmation is not None and s.gate is not None:
                checks = [(f"{s.name} ({s.gate.split})", s.gate), (f"{s.name} ({s.confirmation.split})", s.confirmation)]
            for name, g in checks:
                rows.append({
                    "step": name,
                    "artifact": _rel(s.artifact.path, self.out_dir) if s.artifact else "-",
                    "size": f"{s.artifact.size_mib:.2f} MiB" if s.artifact else "-",
                    "parity": f"{g.parity.max_abs_logit_diff:.2g}" if g else "-",
                    "bal_acc": f"{100 * g.reference.balanced_accuracy:.1f}->{100 * g.candidate.balanced_accuracy:.1f}" if g else "-",
                    "rare_recall": (f"{_pct(g.reference.rare_recall)}->{_pct(g.candidate.rare_recall)}" if g else "-"),
                    "flips": f"{g.flips.total} (rare r->w {g.flips.rare_text()})" if g else "-",
                    "status": ("PASS" if g.passed else "FAIL") if len(checks) > 1 else status,
                })
        return rows

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "export.json") -> ExportResult:
        """Typed read-back of :meth:`to_dict` (derived keys such as ``passed`` are recomputed)."""
        from fopro_edge.schema import from_json

        return from_json(cls, d, source)

    def typed_profile(self) -> Any:
        """The export profile as its target's dataclass."""
        from fopro_edge.schema import from_json

        return from_json(P.profile_type(self.target), self.profile, f"{self.out_dir}/export.json: profile")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "precision": self.precision, "passed": self.passed,
            "status": self.status, "out_dir": str(self.out_dir),
            "checkpoint": str(self.checkpoint), "checkpoint_sha256": self.checkpoint_sha256,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "steps": [s.to_dict() for s in self.steps], "notes": list(self.notes), "profile": self.profile,
        }


def read_export(path: str | Path) -> ExportResult:
    """``export/<target>/export.json`` read back typed; a one-line ConfigError when unreadable."""
    import json

    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable export manifest ({e})") from None
    return ExportResult.from_dict(d, str(path))


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


def with_logit_adjust(student: Any, info: Any) -> Any:
    """The student with the run's test-time logit adjustment in its classifier bias (when it has one),
    so the artifacts and the gate's reference give the logits the run evaluated."""
    la = info.logit_adjust or {}
    if not la.get("tau"):
        return student
    from fopro_edge.distill.logit_adjust import bake_into

    log.info("logit adjustment tau=%g is baked into the classifier bias of every artifact", la["tau"])
    return bake_into(student, float(la["tau"]), la["class_prior"])


class ExportContext:
    """State shared by the steps of one export: student, profile, check data, reference logits."""

    def __init__(self, checkpoint: Path, target: str, profile: Any, out_dir: Path) -> None:
        from fopro_edge.config import recipe_from_dict
        from fopro_edge.data import build_splits
        from fopro_edge.distill.checkpoint import load_student

        self.target, self.profile, self.out = target, profile, out_dir
        student, self.info = load_student(checkpoint)
        self.student = with_logit_adjust(student, self.info)
        self.recipe = recipe = recipe_from_dict(self.info.recipe, source=f"{checkpoint} (embedded recipe)", check_paths=False,
                                                   saved=True)
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
        self._cal_logits: dict[int, np.ndarray] = {}
        self._confirm: tuple[str, CheckImages, np.ndarray] | None = None
        self.base_calibration: CalibrationSet | None = None
        self._bundle_files: dict[str, Path] = {}  # verify-bundle split files by content, for later steps to link

    # -- the split for the one confirmation of a kept artifact (None: off or empty)
    @property
    def confirm_split(self) -> str | None:
        gate = self.profile.check
        split = {"auto": "test" if gate.split == "val" else "val", "none": None}.get(gate.confirm_split, gate.confirm_split)
        if split is None or split == gate.split or len(self.splits.split(split)) == 0:
            return None
        return split

    def confirm(self, runner: Runner, *, step: str, artifact: Path) -> GateReport | None:
        """The kept artifact's gate on the confirmation split (images that no try was scored on)."""
        split = self.confirm_split
        if split is None:
            return None
        if self._confirm is None:
            gate = self.profile.check
            images = CheckImages(self.splits.split(split), self.info.image_size, batch_size=gate.batch_size,
                                 max_images=gate.max_images)
            with TorchRunner(self.student, threads=self.profile.threads) as ref:
                self._confirm = (split, images, predict(ref, images.batches()))
        _, images, reference = self._confirm
        logits = predict(runner, images.batches(), self.profile.check.batch_size)
        report = evaluate_gate(
            images.labels, reference, logits, self.class_names, self.rare, self.profile.check,
            step=f"{step} (confirmation)", artifact=_rel(artifact, self.out), runtime=runner.name,
            precision=runner.precision, split=split, check_parity=False, runtime_info=runner.info,
        )
        log.info("confirmation %s on %s: %s (bal. acc %.4f -> %.4f, rare r->w %s)", step, split, report.status,
                 report.reference.balanced_accuracy, report.candidate.balanced_accuracy, report.flips.rare_text())
        return report

    def selection_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images, labels and PyTorch logits of the check (selection) split."""
        return np.concatenate(list(self.check.batches())), self.check.labels, self.reference

    def ranking_images(self) -> np.ndarray:
        """Class-stratified train images, every rare class in, for ranking layer sensitivity."""
        cal = select_calibration(self.splits.train.labels, self.class_names, self.rare,
                                 self.profile.repair.ranking_images, self.profile.calibration.seed + 2)
        return load_images(self.splits.train, cal.indices, self.info.image_size)

    # -- gate
    def gate(self, runner: Runner, *, step: str, artifact: Path, check_parity: bool) -> GateReport:
        logits = predict(runner, self.check.batches(), self.profile.check.batch_size)
        report = evaluate_gate(
            self.check.labels, self.reference, logits, self.class_names, self.rare, self.profile.check,
            step=step, artifact=_rel(artifact, self.out), runtime=runner.name, precision=runner.precision,
            split=self.profile.check.split, check_parity=check_parity, runtime_info=runner.info,
        )
        log.info("gate %s: %s (bal. acc %.4f -> %.4f, rare r->w %s)", step, report.status,
                 report.reference.balanced_accuracy, report.candidate.balanced_accuracy, report.flips.rare_text())
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

    def stratified_calibration(self, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Class-stratified train images (every rare class in) and the PyTorch student's logits on them:
        the images of :meth:`calibration` (``size`` as there), or, where the base set comes from
        ``calibration.indices_file`` (any images a user chose), a stratified set of the profile's size."""
        if size is None and self.profile.calibration.indices_file:
            size = self.profile.calibration.size
        key = -1 if size is None else int(size)
        _, images = self.calibration(size)
        if key not in self._cal_logits:
            with TorchRunner(self.student, threads=self.profile.threads) as ref:
                self._cal_logits[key] = predict(ref, [images])
        return images, self._cal_logits[key]

    def base_metadata(self, onnx_path: Path) -> dict[str, str]:
        from fopro_edge.deploy.onnx_backend import read_metadata

        return read_metadata(onnx_path)

    # -- step bookkeeping
    def finish_step(self, name: str, title: str, d: Path, artifact: ModelArtifact | None, gate: GateReport | None, *,
                    repair: RepairLog | None = None, notes: tuple[str, ...] = (), extra: dict[str, Any] | None = None,
                    status: str | None = None, confirmation: GateReport | None = None) -> StepResult:
        if status is None:
            status = UNVERIFIED if gate is None else PASSED if gate.passed and (confirmation is None or confirmation.passed) else FAILED
        step = StepResult(name, title, status, d, artifact, gate, repair, tuple(notes), dict(extra or {}), confirmation)
        d.mkdir(parents=True, exist_ok=True)
        marker = d / "FAILED"
        if status == FAILED:
            atomic_write_text(marker, "This artifact FAILED the rare-class gate; do not deploy it.\n"
                              + "".join(f"- {r}\n" for r in (gate.reasons if gate else ())) + "See check.md.\n")
        else:
            marker.unlink(missing_ok=True)
        if gate is not None and artifact is not None:
            self.write_bundle(d, step)
        if gate is not None:
            atomic_write_json(d / "check.json", {"status": status, **step.to_dict()})
            md = gate.to_markdown()
            if confirmation is not None:
                md += (f"\n## Confirmation: the kept artifact on the {confirmation.split} split (no try was scored on it)\n\n"
                       + confirmation.to_markdown().split("\n", 1)[1])
            if repair is not None:
                md += "\n## Repair\n\n" + repair.to_markdown()
            if notes:
                md += "\n## Notes\n\n" + "".join(f"- {n}\n" for n in notes)
            atomic_write_text(d / "check.md", md)
        return step


    def write_bundle(self, d: Path, step: StepResult) -> None:
        """``d/verify-bundle``: the images, labels and PyTorch logits this step was gated on."""
        from fopro_edge.deploy.bundle import SplitData, write_bundle
        from fopro_edge.deploy.contract import preprocessing_contract

        images, labels, reference = self.selection_arrays()
        selection = SplitData(self.profile.check.split, images, labels, reference)
        confirmation = None
        if step.confirmation is not None and self._confirm is not None:
            split, check, ref = self._confirm
            confirmation = SplitData(split, np.concatenate(list(check.batches())), check.labels, ref)
        s = self.student
        write_bundle(
            d, step=step.name, target=self.target, artifact=step.artifact.path, artifact_sha256=step.artifact.sha256,
            precision=step.artifact.precision, artifact_files=step.artifact.files, class_names=self.class_names,
            rare_classes=self.rare,
            thresholds=self.profile.check,
            preprocessing=preprocessing_contract(self.info.image_size, s.mean.flatten().tolist(), s.std.flatten().tolist()),
            selection=selection, confirmation=confirmation,
            reports={"selection": step.gate, "confirmation": step.confirmation},
            runtime_options={"inference_precision": getattr(self.profile, "inference_precision", "f32")},
            deploy_cpu=(step.extra.get("deploy_cpu") or {}).get("deploy_cpu"), written=self._bundle_files,
        )


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


def _ort_backend(x: ExportContext, onnx_step: StepResult, *, name: str, title: str, symmetric: bool,
                 scheme: Any) -> Int8Backend:
    """ONNX Runtime static QDQ; ``symmetric``: TensorRT explicit-quantization rules."""
    from fopro_edge.deploy import onnxruntime_backend as ob
    from fopro_edge.deploy.onnx_backend import copy_metadata, subtract_from_logits as subtract_from_logits_onnx

    p = x.profile
    d = x.out / name
    d.mkdir(parents=True, exist_ok=True)
    src = onnx_step.artifact.path
    pre = ob.preprocess(src, d / "model.pre.onnx")
    fixed = not p.dynamic_batch
    bs = p.batch_size if fixed else p.calibration.batch_size
    notes: list[str] = []
    if symmetric:
        base = ob.QuantSettings(method=p.calibration.method, activation_type="s8", per_channel=True, symmetric=True,
                                op_types=tuple(p.quantize_op_types))
    else:
        q = p.quantization
        reduce = scheme.reduce_range if q.reduce_range == "auto" else bool(q.reduce_range)
        act = scheme.ort_activation if q.activation_type == "auto" else q.activation_type
        base = ob.QuantSettings(method=p.calibration.method, per_channel=q.per_channel, reduce_range=reduce,
                                activation_type=act or "u8")
        if act is None:  # a VNNI CPU deploys what this VNNI CPU measures fastest
            _, images = x.calibration()
            choice = ob.choose_activation_type(pre, d, images, base, threads=p.threads, runs=q.timing_runs,
                                               warmup=q.timing_warmup, batch_size=bs, fixed_batch=fixed, float_path=src)
            base = ob.QuantSettings(**{**base.to_dict(), "activation_type": choice.chosen})
            notes.append(choice.reason)
        elif q.activation_type == "auto":
            notes.append(f"{act} activations: the fast, exact format on the deployment CPU ({scheme.deploy_cpu})")

    def quantize(settings: dict[str, Any], images: np.ndarray, path: Path, _ac: bool) -> ModelArtifact:
        art = ob.quantize_qdq(pre, path, images, ob.QuantSettings(**settings), batch_size=bs, fixed_batch=fixed,
                              metadata_source=src, target=x.target)
        if symmetric:  # TensorRT: Q/DQ only in front of weighted ops and residual Adds
            ob.place_for_tensorrt(path)
            art = art.rehashed()
        return replace(art, parent=onnx_step.artifact.sha256)

    def rank(images: np.ndarray) -> list[tuple[str, float]]:
        probe = d / "rank.qdq.onnx"
        try:
            ob.quantize_qdq(pre, probe, images, base, batch_size=bs, fixed_batch=fixed)
            return ob.rank_sensitive_nodes(pre, probe, images)
        finally:
            probe.unlink(missing_ok=True)

    def from_qat(model: Any, path: Path) -> ModelArtifact:
        from fopro_edge.deploy import qat

        qat.export_qdq_onnx(model, x.info, path, opset=p.opset, dynamic_batch=p.dynamic_batch, batch_size=p.batch_size)
        copy_metadata(src, path, {"fopro_edge.precision": "int8", "fopro_edge.quantization": "qat-kd (NNCF)"})
        return ModelArtifact.from_files(path, x.target, "int8", parent=onnx_step.artifact.sha256,
                                        metadata={"method": "qat-kd", "format": "QDQ"})

    label = (f"PTQ {base.method}, {base.activation_type} activations{' (symmetric)' if symmetric else ''}, "
             f"{'per-channel' if base.per_channel else 'per-tensor'} {'7-bit' if base.reduce_range else '8-bit'} weights")
    return Int8Backend(
        step=name, title=title, suffix=".onnx", base_label=label, base=base.to_dict(), method_key="method",
        exclude_key="nodes_to_exclude", quantize=quantize, rank=rank, coverage=ob.int8_weighted_ops,
        runner=lambda path: OrtRunner(path, precision="int8", threads=p.threads,
                                      emulate_qdq=symmetric or scheme.exact_check),
        from_qat=None if symmetric else from_qat, qat_preset="performance" if base.activation_type == "s8" else "mixed",
        subtract_from_logits=None if symmetric else subtract_from_logits_onnx,
        check=ob.assert_trt_qdq if symmetric else (lambda path: None), methods=tuple(p.repair.methods), notes=notes,
        cleanup=(pre,),
    )


def flow_onnx(x: ExportContext) -> list[StepResult]:
    return [_step_onnx(x)]


def flow_onnxruntime(x: ExportContext) -> list[StepResult]:
    steps = [_step_onnx(x)]
    if x.profile.precision == "int8" and steps[-1].status == PASSED:
        scheme = int8_scheme(x.profile.quantization.deploy_cpu)
        b = _ort_backend(x, steps[0], name="int8", title="ONNX Runtime INT8 static QDQ", symmetric=False, scheme=scheme)
        steps.append(int8_step(x, steps[0], b, scheme))
    return steps


def _ov_runner(x: ExportContext, path: Path, precision: str) -> OpenVINORunner:
    p = x.profile
    return OpenVINORunner(path, precision=precision, inference_precision=p.inference_precision, threads=p.threads,
                          performance_hint=p.performance_hint, device=p.device)


def _ov_backend(x: ExportContext, onnx_step: StepResult, scheme: Any) -> Int8Backend:
    from fopro_edge.deploy import openvino_backend as vb

    p = x.profile
    n = p.nncf
    src = onnx_step.artifact.path
    meta = {**x.base_metadata(src), "fopro_edge.inference_precision_hint": p.inference_precision}
    parent = onnx_step.artifact.sha256
    base = vb.NNCFSettings(preset=n.preset, fast_bias_correction=n.fast_bias_correction,
                           range_estimator=n.range_estimator, ignored_types=tuple(n.ignored_types),
                           ignored_patterns=tuple(n.ignored_patterns),
                           overflow_fix=scheme.overflow_fix if n.overflow_fix == "auto" else n.overflow_fix)

    def quantize(settings: dict[str, Any], images: np.ndarray, path: Path, accuracy_control: bool) -> ModelArtifact:
        s = vb.NNCFSettings(**settings)
        if accuracy_control:
            vimgs, vlabels = _accuracy_control_images(x, n.accuracy_control_images)
            return vb.quantize_ir_with_accuracy_control(
                src, path, images, vimgs, vlabels, s, class_names=x.class_names, rare_ids=x.rare_ids,
                max_drop=n.max_drop, metadata=meta, inference_precision=p.inference_precision, parent=parent)
        return vb.quantize_ir(src, path, images, s, metadata=meta, parent=parent)

    def from_qat(model: Any, path: Path) -> ModelArtifact:
        from fopro_edge.deploy import qat

        return vb.save_ir(qat.to_openvino(model, x.info.image_size), path, metadata={**meta, "quantization": "qat-kd (NNCF)"},
                          parent=parent, artifact_metadata={"method": "qat-kd"})

    label = (f"nncf.{'quantize_with_accuracy_control' if n.accuracy_control else 'quantize'} preset {n.preset}, "
             f"range estimator {n.range_estimator}, overflow fix {base.overflow_fix}")
    return Int8Backend(
        step="ir-int8", title="OpenVINO IR INT8 (NNCF)", suffix=".xml", base_label=label, base=base.to_dict(),
        method_key="range_estimator", exclude_key="ignored_onnx_nodes", quantize=quantize,
        rank=lambda images: _rank_for_openvino(x, src, x.out / "ir-int8", images), coverage=vb.int8_weighted_ops,
        runner=lambda path: _ov_runner(x, path, "int8"), from_qat=from_qat, qat_preset=n.preset,
        subtract_from_logits=vb.subtract_from_logits,
        methods=tuple(p.repair.range_estimators), accuracy_control=p.repair.accuracy_control and not n.accuracy_control,
        accuracy_control_first=n.accuracy_control,
        report_notes=lambda report: [_ov_precision_note(report.runtime_info)],
    )


def flow_openvino(x: ExportContext) -> list[StepResult]:
    from fopro_edge.deploy import openvino_backend as vb

    p = x.profile
    steps = [_step_onnx(x)]
    if steps[-1].status != PASSED:
        return steps
    src = steps[0].artifact.path
    if p.precision in ("fp32", "fp16"):
        meta = {**x.base_metadata(src), "fopro_edge.inference_precision_hint": p.inference_precision}
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
    scheme = int8_scheme(p.quantization.deploy_cpu)
    steps.append(int8_step(x, steps[0], _ov_backend(x, steps[0], scheme), scheme))
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
        return ob.rank_sensitive_nodes(pre, probe, images)
    finally:
        pre.unlink(missing_ok=True)
        probe.unlink(missing_ok=True)


def _accuracy_control_images(x: ExportContext, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A rare-stratified subset of the train images that calibration did not use, for NNCF's accuracy
    control (not the check split, so the gate stays an independent check)."""
    labels = np.asarray(x.splits.train.labels)
    used = x.base_calibration.indices if x.base_calibration is not None else ()
    rest = np.setdiff1d(np.arange(len(labels)), np.asarray(used, np.int64))
    short = [k for k in x.rare_ids if not np.any(labels[rest] == k)]
    if short:  # a rare class whose every train image calibrates: validate on those images too
        log.warning("accuracy control: no train image outside calibration for rare class(es) %s; reusing theirs",
                    ", ".join(x.class_names[k] for k in short))
        rest = np.union1d(rest, np.flatnonzero(np.isin(labels, short)))
    cal = select_calibration(labels[rest], x.class_names, x.rare, count, x.profile.calibration.seed + 1)
    idx = rest[list(cal.indices)]
    return load_images(x.splits.train, idx, x.info.image_size), labels[idx]


def flow_tensorrt(x: ExportContext) -> list[StepResult]:
    from fopro_edge.deploy import tensorrt_backend as tb
    from fopro_edge.deploy.onnx_backend import INPUT_NAME

    p = x.profile
    ok, why = tb.tensorrt_status()
    if p.build_engine and not ok:
        raise MissingDependencyError(
            f"--build-engine: cannot build a TensorRT engine on this machine ({why}); run without --build-engine to "
            "write the TensorRT-ready ONNX and build_engine.sh, then build on the target GPU"
        )
    steps = [_step_onnx(x, title="TensorRT-ready ONNX fp32 (checked in ONNX Runtime)")]
    if steps[-1].status != PASSED:
        return steps
    engine_src = steps[0]
    if p.precision == "int8":
        scheme = int8_scheme(p.quantization.deploy_cpu)
        b = _ort_backend(x, steps[0], name="int8-qdq", symmetric=True, scheme=scheme,
                         title="INT8 QDQ for TensorRT explicit quantization (checked in ONNX Runtime, Q/DQ emulated)")
        steps.append(int8_step(x, steps[0], b, scheme))
        if steps[-1].status != PASSED:
            return steps
        engine_src = steps[-1]
    spec = tb.EngineSpec(INPUT_NAME, x.info.image_size, p.dynamic_batch, p.batch_size, p.max_batch_size, p.workspace_mb)
    onnx_rel = _rel(engine_src.artifact.path, x.out)
    engine_name = f"engine/model.{p.precision}.engine"
    script = tb.write_build_script(x.out, onnx_rel, engine_name, p.precision, spec)
    cmd = tb.trtexec_command(onnx_rel, engine_name, p.precision, spec)
    d = x.out / "engine"
    (d / "NOT_BUILT.txt").unlink(missing_ok=True)
    if not ok:
        note = (f"TensorRT engine NOT built: {why}. Build it on the target GPU (e.g. on the Jetson) with "
                f"{_rel(script, x.out)}: {cmd}")
        atomic_write_text(d / "NOT_BUILT.txt", note + "\n")
        steps.append(x.finish_step("engine", f"TensorRT {p.precision} engine", d, None, None, status=UNVERIFIED,
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
    from fopro_edge.deploy import backends

    backend = backends.get(target)
    backend.require()
    checkpoint, run_dir = resolve_source(source)
    from fopro_edge.distill.checkpoint import load_checkpoint

    embedded = load_checkpoint(checkpoint).get("recipe") or {}
    recipe_export, recipe_src = _recipe_export(run_dir, embedded, checkpoint)
    layer = dict(overrides or {})
    if precision is not None:
        layer["precision"] = precision
    profile = P.load_profile(target, profile_file=profile_file, recipe_export=recipe_export, recipe_source=recipe_src,
                             overrides=layer, override_source=override_source)
    out = Path(out_dir) if out_dir else default_out_dir(checkpoint, run_dir, target)
    out.mkdir(parents=True, exist_ok=True)
    keep = getattr(getattr(profile, "calibration", None), "indices_file", None)
    _clean_previous(out, keep=Path(keep).resolve() if keep else None)
    log.info("export %s %s -> %s", target, profile.precision, out)
    x = ExportContext(checkpoint, target, profile, out)
    steps = backend.flow(x)
    notes = [steps[-1].notes[0]] if steps[-1].status == UNVERIFIED and steps[-1].notes else []
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
