"""The rare-class gate: an artifact's predictions against the PyTorch student's, image by image.

Pure functions over labels, predictions and logits. A class with no image in the check split has
no recall (``None``), is left out of every mean and is listed as unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fopro_edge.deploy.profiles import GateConfig


@dataclass(frozen=True)
class ClassRow:
    index: int
    name: str
    rare: bool
    support: int
    reference_recall: float | None
    recall: float | None
    right_to_wrong: int
    wrong_to_right: int
    failed: bool

    @property
    def delta(self) -> float | None:
        if self.recall is None or self.reference_recall is None:
            return None
        return self.recall - self.reference_recall


@dataclass(frozen=True)
class Flips:
    """Images whose prediction changed; ``other`` = wrong before and wrong (differently) after."""

    total: int
    right_to_wrong: int
    wrong_to_right: int
    other: int
    rare_total: int
    rare_right_to_wrong: int
    rare_wrong_to_right: int


@dataclass(frozen=True)
class Scores:
    balanced_accuracy: float
    accuracy: float
    rare_recall: float | None  # mean recall over the rare classes that have images


@dataclass(frozen=True)
class Parity:
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    argmax_agreement: float


@dataclass(frozen=True)
class GateReport:
    step: str
    artifact: str
    runtime: str
    precision: str
    split: str
    num_images: int
    passed: bool
    reasons: tuple[str, ...]
    failing_classes: tuple[str, ...]
    unchecked_classes: tuple[str, ...]
    reference: Scores
    candidate: Scores
    flips: Flips
    parity: Parity
    classes: tuple[ClassRow, ...]
    thresholds: dict[str, Any] = field(default_factory=dict)
    runtime_info: dict[str, Any] = field(default_factory=dict)
    parity_checked: bool = False

    @property
    def status(self) -> str:
        return "PASSED" if self.passed else "FAILED"

    @property
    def balanced_accuracy_drop(self) -> float:
        return self.reference.balanced_accuracy - self.candidate.balanced_accuracy

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status
        d["balanced_accuracy_drop"] = self.balanced_accuracy_drop
        for row, cls in zip(d["classes"], self.classes, strict=True):
            row["delta"] = cls.delta
        return d

    def to_markdown(self) -> str:
        return render_markdown(self)


def recalls(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> list[float | None]:
    """Per-class recall; ``None`` for a class with no image."""
    out: list[float | None] = []
    for k in range(num_classes):
        mask = labels == k
        n = int(mask.sum())
        out.append(float((preds[mask] == k).mean()) if n else None)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def scores(labels: np.ndarray, preds: np.ndarray, num_classes: int, rare_ids: Sequence[int]) -> Scores:
    r = recalls(labels, preds, num_classes)
    return Scores(
        balanced_accuracy=_mean(r) or 0.0,
        accuracy=float((labels == preds).mean()) if len(labels) else 0.0,
        rare_recall=_mean([r[k] for k in rare_ids]),
    )


def rare_class_score(labels: np.ndarray, preds: np.ndarray, num_classes: int, rare_ids: Sequence[int]) -> float:
    """The scalar this project optimises when a tool wants one metric (NNCF accuracy control):
    the mean recall of the rare classes, or the balanced accuracy when no rare image is present."""
    s = scores(np.asarray(labels), np.asarray(preds), num_classes, rare_ids)
    return s.rare_recall if s.rare_recall is not None else s.balanced_accuracy


def parity(reference_logits: np.ndarray, logits: np.ndarray) -> Parity:
    diff = np.abs(np.asarray(reference_logits, np.float64) - np.asarray(logits, np.float64))
    return Parity(
        max_abs_logit_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_logit_diff=float(diff.mean()) if diff.size else 0.0,
        argmax_agreement=float((reference_logits.argmax(1) == logits.argmax(1)).mean()) if len(logits) else 1.0,
    )


def evaluate_gate(
    labels: np.ndarray,
    reference_logits: np.ndarray,
    logits: np.ndarray,
    class_names: Sequence[str],
    rare_classes: Sequence[str],
    thresholds: GateConfig,
    *,
    step: str = "",
    artifact: str = "",
    runtime: str = "",
    precision: str = "",
    split: str = "",
    check_parity: bool = False,
    runtime_info: dict[str, Any] | None = None,
) -> GateReport:
    """Compare an artifact's logits with the PyTorch student's on the same labelled images.

    ``check_parity``: also apply ``thresholds.max_fp32_logit_diff`` (for steps that should match
    PyTorch numerically: fp32 artifacts run in f32).
    """
    labels = np.asarray(labels, dtype=np.int64)
    reference_logits = np.asarray(reference_logits, dtype=np.float32)
    logits = np.asarray(logits, dtype=np.float32)
    if reference_logits.shape != logits.shape or len(labels) != len(logits):
        raise ValueError(f"shape mismatch: labels {labels.shape}, reference {reference_logits.shape}, artifact {logits.shape}")
    names = [str(c) for c in class_names]
    num_classes = len(names)
    index = {n: i for i, n in enumerate(names)}
    rare_ids = [index[n] for n in rare_classes if n in index]
    rare_set = set(rare_ids)

    ref_pred, pred = reference_logits.argmax(1), logits.argmax(1)
    ref_ok, ok = ref_pred == labels, pred == labels
    changed = ref_pred != pred
    r2w_mask, w2r_mask = ref_ok & ~ok, ~ref_ok & ok
    is_rare = np.isin(labels, list(rare_set)) if rare_set else np.zeros(len(labels), bool)
    flips = Flips(
        total=int(changed.sum()),
        right_to_wrong=int(r2w_mask.sum()),
        wrong_to_right=int(w2r_mask.sum()),
        other=int((changed & ~ref_ok & ~ok).sum()),
        rare_total=int((changed & is_rare).sum()),
        rare_right_to_wrong=int((r2w_mask & is_rare).sum()),
        rare_wrong_to_right=int((w2r_mask & is_rare).sum()),
    )
    ref_rec, rec = recalls(labels, ref_pred, num_classes), recalls(labels, pred, num_classes)
    support = np.bincount(labels, minlength=num_classes)
    r2w = np.bincount(labels[r2w_mask], minlength=num_classes)
    w2r = np.bincount(labels[w2r_mask], minlength=num_classes)

    reasons: list[str] = []
    failed: set[int] = set()
    drops = {k: ref_rec[k] - rec[k] for k in range(num_classes) if rec[k] is not None and ref_rec[k] is not None}

    for k in rare_ids:
        if k in drops and drops[k] > thresholds.max_rare_recall_drop + 1e-12:
            failed.add(k)
            reasons.append(
                f"rare class '{names[k]}': recall {ref_rec[k]:.3f} -> {rec[k]:.3f} "
                f"(drop {drops[k]:.3f} > {thresholds.max_rare_recall_drop:g})"
            )
    if flips.rare_right_to_wrong > thresholds.max_rare_right_to_wrong:
        hit = [k for k in rare_ids if r2w[k] > 0]
        failed.update(hit)
        reasons.append(
            f"{flips.rare_right_to_wrong} rare-class image(s) went right -> wrong "
            f"(> {thresholds.max_rare_right_to_wrong}): " + ", ".join(f"'{names[k]}' {int(r2w[k])}" for k in hit)
        )
    if thresholds.max_class_recall_drop is not None:
        for k, d in drops.items():
            if k not in rare_set and d > thresholds.max_class_recall_drop + 1e-12:
                failed.add(k)
                reasons.append(f"class '{names[k]}': recall drop {d:.3f} > {thresholds.max_class_recall_drop:g}")
    ref_scores = scores(labels, ref_pred, num_classes, rare_ids)
    new_scores = scores(labels, pred, num_classes, rare_ids)
    bacc_drop = ref_scores.balanced_accuracy - new_scores.balanced_accuracy
    if bacc_drop > thresholds.max_balanced_accuracy_drop + 1e-12:
        dropped = sorted((k for k, d in drops.items() if d > 0), key=lambda k: -drops[k])
        failed.update(dropped)
        reasons.append(
            f"balanced accuracy {ref_scores.balanced_accuracy:.4f} -> {new_scores.balanced_accuracy:.4f} "
            f"(drop {bacc_drop:.4f} > {thresholds.max_balanced_accuracy_drop:g}); recall fell for "
            + (", ".join(f"'{names[k]}'" for k in dropped) or "no single class")
        )
    if thresholds.max_flip_rate is not None and len(labels):
        rate = flips.total / len(labels)
        if rate > thresholds.max_flip_rate + 1e-12:
            reasons.append(f"{flips.total}/{len(labels)} predictions changed ({rate:.3f} > {thresholds.max_flip_rate:g})")
    par = parity(reference_logits, logits)
    if check_parity and thresholds.max_fp32_logit_diff is not None and par.max_abs_logit_diff > thresholds.max_fp32_logit_diff:
        reasons.append(
            f"max |logit diff| vs PyTorch {par.max_abs_logit_diff:.3g} > {thresholds.max_fp32_logit_diff:g} "
            "(an fp32 artifact should match the student numerically)"
        )

    rows = tuple(
        ClassRow(
            index=k,
            name=names[k],
            rare=k in rare_set,
            support=int(support[k]),
            reference_recall=ref_rec[k],
            recall=rec[k],
            right_to_wrong=int(r2w[k]),
            wrong_to_right=int(w2r[k]),
            failed=k in failed,
        )
        for k in range(num_classes)
    )
    return GateReport(
        step=step,
        artifact=artifact,
        runtime=runtime,
        precision=precision,
        split=split,
        num_images=int(len(labels)),
        passed=not reasons,
        reasons=tuple(reasons),
        failing_classes=tuple(names[k] for k in sorted(failed)),
        unchecked_classes=tuple(names[k] for k in range(num_classes) if support[k] == 0),
        reference=ref_scores,
        candidate=new_scores,
        flips=flips,
        parity=par,
        classes=rows,
        thresholds=asdict(thresholds),
        runtime_info=dict(runtime_info or {}),
        parity_checked=check_parity,
    )


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def render_markdown(r: GateReport) -> str:
    """The check report: verdict, reasons, summary and one row per class."""
    lines = [
        f"# Check: {r.step} — {r.status}",
        "",
        f"- artifact: `{r.artifact}`",
        f"- runtime: {r.runtime} ({r.precision})"
        + "".join(f"; {k}: {v}" for k, v in r.runtime_info.items() if not isinstance(v, (dict, list))),
        f"- check split: {r.split}, {r.num_images} images, compared image by image with the PyTorch student",
        f"- balanced accuracy: {_pct(r.reference.balanced_accuracy)} -> {_pct(r.candidate.balanced_accuracy)} %"
        f" (drop {100 * r.balanced_accuracy_drop:.2f} pt)",
        f"- rare-class recall (mean): {_pct(r.reference.rare_recall)} -> {_pct(r.candidate.rare_recall)} %",
        f"- flips: {r.flips.total} changed ({r.flips.right_to_wrong} right->wrong, {r.flips.wrong_to_right} "
        f"wrong->right); rare-class images: {r.flips.rare_total} changed ({r.flips.rare_right_to_wrong} right->wrong, "
        f"{r.flips.rare_wrong_to_right} wrong->right)",
        f"- parity: max |logit diff| {r.parity.max_abs_logit_diff:.3g}, mean {r.parity.mean_abs_logit_diff:.3g}, "
        f"argmax agreement {100 * r.parity.argmax_agreement:.1f} %",
    ]
    if r.unchecked_classes:
        lines.append(f"- not checked (no image in the split): {', '.join(r.unchecked_classes)}")
    if r.reasons:
        lines += ["", "## Why it failed", ""] + [f"- {x}" for x in r.reasons]
        lines.append(f"- failing classes: {', '.join(r.failing_classes) or '(none: a global threshold)'}")
    lines += [
        "",
        "## Per class",
        "",
        "| class | rare | images | recall PyTorch % | recall artifact % | Δ pt | right→wrong | wrong→right | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in r.classes:
        delta = "n/a" if c.delta is None else f"{100 * c.delta:+.1f}"
        lines.append(
            f"| {c.name} | {'yes' if c.rare else ''} | {c.support} | {_pct(c.reference_recall)} | {_pct(c.recall)} | "
            f"{delta} | {c.right_to_wrong} | {c.wrong_to_right} | {'FAIL' if c.failed else ('—' if c.support == 0 else 'ok')} |"
        )
    t = r.thresholds
    lines += [
        "",
        "Thresholds: max balanced-accuracy drop {}, max rare right→wrong flips {}, max rare recall drop {}, "
        "max non-rare recall drop {}, max flip rate {}, fp32 max |logit diff| {}{}.".format(
            t.get("max_balanced_accuracy_drop"), t.get("max_rare_right_to_wrong"), t.get("max_rare_recall_drop"),
            t.get("max_class_recall_drop"), t.get("max_flip_rate"), t.get("max_fp32_logit_diff"),
            "" if r.parity_checked else " (not applied to this step)",
        ),
        "",
    ]
    return "\n".join(lines)
