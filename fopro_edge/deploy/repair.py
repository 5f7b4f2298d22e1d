"""Repair of a failed INT8 step: a bounded, reported sequence of tries until the gate passes.

The strongest tries come first, so that the default budget always reaches them: (1)
quantization-aware distillation (QAT-KD), (2) for OpenVINO, NNCF's accuracy control driven by the
rare-class score, (3) the most sensitive layers kept in floating point, (4) another calibration
method, (5) a larger rare-stratified calibration set, which moves to the front when the
calibration set misses a rare class (the failure it fixes). Backends supply one function that
makes and checks an artifact for a plan.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fopro_edge.deploy.artifact import ModelArtifact
from fopro_edge.deploy.gate import GateReport
from fopro_edge.errors import FoproEdgeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TryPlan:
    """What one try changes. ``None`` fields keep the value of the best try so far."""

    label: str
    calibration_size: int | None = None
    method: str | None = None
    float_layers: int = 0
    accuracy_control: bool = False
    qat: bool = False


@dataclass(frozen=True)
class Outcome:
    """A made and checked artifact (or the error that stopped the try)."""

    artifact: ModelArtifact | None
    report: GateReport | None
    settings: dict[str, Any] = field(default_factory=dict)
    calibration_images: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Attempt:
    number: int
    label: str
    status: str  # PASSED | FAILED | ERROR | SKIPPED
    settings: dict[str, Any]
    calibration_images: int
    balanced_accuracy: float | None
    balanced_accuracy_drop: float | None
    rare_recall: float | None
    rare_right_to_wrong: int | None
    flips: int | None
    failing_classes: tuple[str, ...]
    seconds: float
    note: str = ""
    rare_close_calls: int = 0  # of rare_right_to_wrong: close calls of the PyTorch student
    mean_kl: float | None = None  # fidelity: mean softmax KL from the PyTorch student, nats

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _rare(a: Attempt) -> str:
    if a.rare_right_to_wrong is None:
        return ""
    c = a.rare_close_calls
    return f"{a.rare_right_to_wrong} ({c} close call{'s' if c > 1 else ''})" if c else str(a.rare_right_to_wrong)


@dataclass(frozen=True)
class RepairLog:
    attempts: tuple[Attempt, ...]
    chosen: int  # number of the attempt whose artifact was kept
    passed: bool
    budget: int
    until: str = "passed"  # passed | clean (see is_done)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "chosen": self.chosen, "budget": self.budget, "until": self.until,
                "attempts": [a.to_dict() for a in self.attempts]}

    def to_markdown(self) -> str:
        aim = "a pass with no clear rare right→wrong flip" if self.until == "clean" else "the first pass"
        lines = [
            f"Tries (budget {self.budget}, until {aim}; kept: try {self.chosen}, "
            f"{'PASSED' if self.passed else 'FAILED'}):",
            "",
            "| try | what | method | float layers | calib. images | status | bal. acc % | drop pt | rare recall % "
            "| rare right→wrong | flips | mean KL | failing classes |",
            "|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for a in self.attempts:
            def pct(v: float | None) -> str:
                return "" if v is None else f"{100 * v:.1f}"
            method = str(a.settings.get("method") or a.settings.get("range_estimator") or "")
            if a.settings.get("accuracy_control"):
                method += " + accuracy control"
            floats = len(a.settings.get("nodes_to_exclude") or a.settings.get("ignored_onnx_nodes") or ())
            lines.append(
                f"| {a.number} | {a.label}{' — ' + a.note if a.note else ''} | {method} | {floats} | "
                f"{a.calibration_images or ''} | {a.status} | "
                f"{pct(a.balanced_accuracy)} | {'' if a.balanced_accuracy_drop is None else f'{100 * a.balanced_accuracy_drop:.2f}'} | "
                f"{pct(a.rare_recall)} | {_rare(a)} | "
                f"{'' if a.flips is None else a.flips} | {'' if a.mean_kl is None else f'{a.mean_kl:.3g}'} | "
                f"{', '.join(a.failing_classes)} |"
            )
        return "\n".join(lines) + "\n"


def plan_repairs(
    base_size: int,
    available_images: int,
    *,
    size_factor: float,
    methods: Sequence[str],
    base_method: str,
    float_layers: Sequence[int],
    qat: bool = False,
    accuracy_control: bool = False,
    rare_missing: bool = False,
    max_tries: int,
    method_noun: str = "calibration method",
) -> list[TryPlan]:
    """The repair plans after the first (base) try, cut to ``max_tries - 1``."""
    larger = min(available_images, max(base_size + 1, math.ceil(base_size * size_factor)))
    sized = ([TryPlan(f"larger rare-stratified calibration set ({larger} images)", calibration_size=larger)]
             if size_factor > 1.0 and larger > min(base_size, available_images) else [])
    plans: list[TryPlan] = list(sized) if rare_missing else []
    if qat:
        plans.append(TryPlan("quantization-aware distillation (QAT-KD) from the FP32 student", qat=True))
    if accuracy_control:
        plans.append(TryPlan("NNCF accuracy control on the rare-class score", accuracy_control=True))
    plans += [TryPlan(f"{k} most sensitive layer(s) kept in float", float_layers=int(k)) for k in float_layers]
    plans += [TryPlan(f"{method_noun} {m}", method=m) for m in methods if m != base_method]
    if not rare_missing:
        plans += sized
    return plans[: max(0, max_tries - 1)]


def score_key(o: Outcome) -> tuple:
    """Higher is better: passed, fewer failing classes, fewer clear rare losses (then every rare
    right->wrong), fewer changed predictions (decisive ones, then all), higher balanced accuracy."""
    r = o.report
    if r is None:
        return (False, -10**9, -10**9, -10**9, -10**9, -10**9, -1.0)
    f = r.flips
    return (r.passed, -len(r.failing_classes), -f.rare_clear_right_to_wrong, -f.rare_right_to_wrong,
            -(f.total - f.close_calls), -f.total, r.candidate.balanced_accuracy)


def is_done(o: Outcome, until: str) -> bool:
    """``passed``: the gate passed; ``clean``: it passed and lost no rare image the PyTorch student
    decided clearly (close calls are the rare-margin test's to judge)."""
    r = o.report
    return r is not None and r.passed and (until == "passed" or r.flips.rare_clear_right_to_wrong == 0)


def _attempt(number: int, label: str, o: Outcome, seconds: float) -> Attempt:
    r = o.report
    status = "ERROR" if r is None else r.status
    return Attempt(
        number=number, label=label, status=status, settings=dict(o.settings), calibration_images=o.calibration_images,
        balanced_accuracy=None if r is None else r.candidate.balanced_accuracy,
        balanced_accuracy_drop=None if r is None else r.balanced_accuracy_drop,
        rare_recall=None if r is None else r.candidate.rare_recall,
        rare_right_to_wrong=None if r is None else r.flips.rare_right_to_wrong,
        rare_close_calls=0 if r is None else r.flips.rare_close_calls,
        flips=None if r is None else r.flips.total,
        mean_kl=None if r is None else r.parity.mean_kl,
        failing_classes=() if r is None else r.failing_classes,
        seconds=round(seconds, 2), note=o.error or "",
    )


def run_tries(
    first: TryPlan,
    make: Callable[[TryPlan, Outcome | None, int], Outcome],
    plans: Sequence[TryPlan],
    *,
    enabled: bool,
    until: str = "passed",
) -> tuple[Outcome, RepairLog]:
    """Run the base try, then the repair plans until the best try is done (:func:`is_done`: the gate
    passed, and with ``until="clean"`` no clear rare right->wrong flip); return the best outcome.

    ``make(plan, best_so_far, number)`` builds and checks one artifact. An exception in a repair
    try is recorded and the next plan runs; the base try's exceptions propagate.
    """
    t0 = time.perf_counter()
    best = make(first, None, 1)
    attempts = [_attempt(1, first.label, best, time.perf_counter() - t0)]
    chosen = 1
    if enabled and not is_done(best, until):
        for i, plan in enumerate(plans, start=2):
            t0 = time.perf_counter()
            try:
                o = make(plan, best, i)
            except FoproEdgeError:
                raise
            except Exception as e:  # noqa: BLE001 - a failing try (e.g. an NNCF crash) must not end the repair
                log.warning("repair try %d (%s) failed: %s", i, plan.label, e)
                o = Outcome(None, None, {}, 0, f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            attempts.append(_attempt(i, plan.label, o, time.perf_counter() - t0))
            log.info("repair try %d: %s -> %s", i, plan.label, attempts[-1].status)
            if score_key(o) > score_key(best):
                best, chosen = o, i
            if is_done(best, until):
                break
    passed = bool(best.report and best.report.passed)
    return best, RepairLog(tuple(attempts), chosen, passed, 1 + (len(plans) if enabled else 0), until)
