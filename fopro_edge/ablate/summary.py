"""Aggregate the finished cells of an ablation: per method mean ± sd over seeds, and per method the
paired differences against the baseline with 95 % intervals over seeds (paired t, and a two-level
paired bootstrap over seeds and test images) and, beside them, over test images only. Only the
paired t-interval decides whether a difference is resolved."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fopro_edge.ablate.bootstrap import METRICS, BootstrapIntervals, Pair, paired_bootstrap, point_metrics
from fopro_edge.ablate.ladder import DONE, AblationPlan, Cell
from fopro_edge.ablate.results import (
    AkdCurve,
    ExploreDiagnostic,
    RunMetrics,
    akd_curve,
    read_explore,
    read_history,
    read_machine,
    read_metrics,
    read_wall_seconds,
    train_seconds,
)
from fopro_edge.ablate.stats import Interval, Spread, paired_t_interval, spread, verdict
from fopro_edge.distill.predictions import TestPredictions, load_predictions
from fopro_edge.errors import ConfigError, DataError

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95
_REPRODUCE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class CellSummary:
    method: str
    seed: int
    dir: str
    status: str  # reused (finished earlier), resumed, trained
    metrics: dict[str, float | None]
    accuracy: float
    best_epoch: int | None
    wall_seconds: float | None  # of the command that finished the cell
    train_seconds: float | None  # summed epoch times of history.jsonl
    machine: str | None
    predictions: bool
    explore: ExploreDiagnostic | None = None  # the explore stage's paired probe and gain (fpg methods)
    akd: AkdCurve | None = None  # the AKD adversarial term (fopro)


@dataclass(frozen=True)
class MethodSummary:
    method: str
    seeds: int
    metrics: dict[str, Spread]


@dataclass(frozen=True)
class Difference:
    """Method minus baseline on one metric, averaged over the seeds where both define it."""

    method: str
    metric: str
    mean: float
    seeds: int
    sd: float | None
    seed_interval: Interval | None  # paired t over seeds; None with one seed; it alone decides
    seed_bootstrap_interval: Interval | None  # two-level bootstrap, seeds then test images; None with one seed
    image_interval: Interval | None  # bootstrap over test images only; never decides
    bootstrap_note: str | None = None  # why there is no bootstrap, when there is none
    verdict: str = ""  # stats.verdict: higher, lower, no detectable difference, one seed


@dataclass(frozen=True)
class AblationReport:
    recipe: str
    out: str
    command: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    baseline: str
    overrides: tuple[str, ...]
    confidence: float
    resamples: int
    cells: tuple[CellSummary, ...]
    summary: tuple[MethodSummary, ...]
    differences: tuple[Difference, ...]
    env: dict[str, Any]
    date: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Cell:
    cell: Cell
    metrics: RunMetrics
    predictions: TestPredictions | None
    problem: str | None  # why the predictions cannot be used, when they cannot


def aggregate(
    plan: AblationPlan,
    *,
    statuses: Mapping[str, str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = CONFIDENCE,
    env: dict[str, Any] | None = None,
) -> AblationReport:
    """The report of ``plan``'s finished cells (every cell must be finished)."""
    missing = [c.name for c in plan.cells() if c.state != DONE]
    if missing:
        raise ConfigError(f"--out: {len(missing)} cell(s) not finished in {plan.out}: {', '.join(missing)} "
                          "(run fopro-edge ablate without --report-only to train them)")
    if env is None:
        from fopro_edge.envinfo import collect_env

        env = collect_env()
    tail_below = _tail_below(plan)
    cells = {(c.method, c.seed): _read_cell(c, tail_below) for c in plan.cells()}
    notes = [n for c in plan.cells() for n in _recipe_drift(plan, c)]
    summaries = [_cell_summary(x, (statuses or {}).get(x.cell.name, "reused")) for x in cells.values()]
    methods = []
    for m in plan.methods:
        mine = [cells[(m, s)].metrics for s in plan.seeds]
        methods.append(MethodSummary(m, len(mine), {k: spread([r.value(k) for r in mine]) for k in METRICS}))
    differences = []
    for m in plan.methods:
        if m != plan.baseline:
            differences += _differences(plan, cells, m, resamples, confidence)
    return AblationReport(
        recipe=str(plan.recipe), out=str(plan.out), command=plan.command(), methods=plan.methods, seeds=plan.seeds,
        baseline=plan.baseline, overrides=plan.overrides, confidence=confidence, resamples=resamples,
        cells=tuple(summaries), summary=tuple(methods), differences=tuple(differences), env=env,
        date=time.strftime("%Y-%m-%d %H:%M:%S %z"), notes=tuple(notes),
    )


def _tail_below(plan: AblationPlan) -> int | None:
    from fopro_edge.config import load_recipe

    return load_recipe(plan.recipe, list(plan.overrides), check_paths=False).data.groups.tail_below


def _read_cell(cell: Cell, tail_below: int | None) -> _Cell:
    rd = cell.run_dir
    metrics = read_metrics(rd, tail_below)
    if metrics.method != cell.method:
        raise DataError(f"{rd.metrics_json}: a run of method '{metrics.method}' in the folder of '{cell.method}' "
                        "(move it away and re-run the cell)")
    if not rd.test_predictions.is_file():
        return _Cell(cell, metrics, None, f"{cell.name} has no metrics/test_predictions.npz (run before they were saved)")
    pred = load_predictions(rd.test_predictions)
    problem = None
    if len(metrics.per_class) <= max(int(pred.labels.max(initial=0)), int(pred.predictions.max(initial=0))):
        problem = f"{cell.name}: test_predictions.npz holds class indices beyond metrics.json's classes"
    else:
        again = point_metrics(pred.labels, pred.predictions, metrics.layout())
        if abs(again["balanced_accuracy"] - metrics.balanced_accuracy) > _REPRODUCE_TOLERANCE:
            problem = (f"{cell.name}: test_predictions.npz gives balanced accuracy {again['balanced_accuracy']:.6f}, "
                       f"metrics.json {metrics.balanced_accuracy:.6f} (files of different runs?)")
    return _Cell(cell, metrics, None if problem else pred, problem)


def _cell_summary(x: _Cell, status: str) -> CellSummary:
    rd = x.cell.run_dir
    history = read_history(rd)
    return CellSummary(
        method=x.cell.method, seed=x.cell.seed, dir=str(rd.path), status=status, metrics=x.metrics.values(),
        accuracy=x.metrics.accuracy, best_epoch=x.metrics.best_epoch, wall_seconds=read_wall_seconds(rd),
        train_seconds=train_seconds(history), machine=read_machine(rd), predictions=x.predictions is not None,
        explore=read_explore(rd), akd=akd_curve(history),
    )


def _pair(base: _Cell, new: _Cell, seed: int) -> Pair | str:
    """The two runs of one seed as a bootstrap pair, or why they cannot be paired."""
    problems = [x.problem or f"{x.cell.name}: no predictions" for x in (base, new) if x.predictions is None]
    if problems:
        return "; ".join(problems)
    a, b = base.predictions, new.predictions
    assert a is not None and b is not None
    if len(a.ids) != len(b.ids) or set(a.ids.tolist()) != set(b.ids.tolist()):
        return f"seed {seed}: {base.cell.name} and {new.cell.name} were tested on different images (check data.split_seed)"
    order = np.argsort(b.ids, kind="stable")[np.argsort(np.argsort(a.ids, kind="stable"), kind="stable")]
    if not np.array_equal(a.labels, b.labels[order]):
        return f"seed {seed}: {base.cell.name} and {new.cell.name} label the same images differently"
    la, lb = base.metrics.layout(), new.metrics.layout()
    if la != lb or [c.name for c in base.metrics.per_class] != [c.name for c in new.metrics.per_class]:
        return f"seed {seed}: {base.cell.name} and {new.cell.name} differ in classes, groups or rare classes"
    return Pair(a.labels, a.predictions, b.predictions[order], la, seed)


def _differences(plan: AblationPlan, cells: Mapping[tuple[str, int], _Cell], method: str, resamples: int,
                 confidence: float) -> list[Difference]:
    pairs, problems = [], []
    for s in plan.seeds:
        p = _pair(cells[(plan.baseline, s)], cells[(method, s)], s)
        (pairs if isinstance(p, Pair) else problems).append(p)
    boot = paired_bootstrap(pairs, resamples=resamples, confidence=confidence) if not problems else None
    note = "; ".join(problems) if problems else ("bootstrap off (--resamples 0)" if resamples <= 0 else None)
    out = []
    for metric in METRICS:
        diffs = []
        for s in plan.seeds:
            a, b = cells[(plan.baseline, s)].metrics.value(metric), cells[(method, s)].metrics.value(metric)
            if a is not None and b is not None:
                diffs.append(b - a)
        if not diffs:
            continue
        t = paired_t_interval(diffs, confidence)
        two_level, images = _bootstrap_of(boot, metric)
        out.append(Difference(method, metric, t.mean, t.n, t.sd, t.interval, two_level, images, note,
                              verdict(t.mean, t.interval, two_level, t.n)))
    return out


def _bootstrap_of(boot: BootstrapIntervals | None, metric: str) -> tuple[Interval | None, Interval | None]:
    """The two-level and the image-only interval of ``metric`` (none without a bootstrap)."""
    return (None, None) if boot is None else (boot.seeds.get(metric), boot.images.get(metric))


def _recipe_drift(plan: AblationPlan, cell: Cell) -> list[str]:
    """Recipe keys (beyond runtime.*) where a finished cell's saved recipe differs from this command's."""
    from fopro_edge.config import load_recipe

    saved = cell.run_dir.recipe
    if not saved.is_file():
        return [f"{cell.name}: no recipe.yaml to compare with this command's recipe"]
    try:
        old = load_recipe(saved, check_paths=False, saved=True).to_dict()
    except ConfigError as e:
        return [f"{cell.name}: its recipe.yaml cannot be read by this version ({e})"]
    from fopro_edge.models.teacher import with_teacher_size

    recipe = with_teacher_size(load_recipe(plan.recipe, cell.overrides(plan.overrides), check_paths=False))
    unused = ("runtime.", *_unused_sections(recipe))
    keys = [k for k in _flat_diff(old, recipe.to_dict()) if not k.startswith(unused)]
    if not keys:
        return []
    more = ", ..." if len(keys) > 8 else ""
    return [f"{cell.name}: trained with another recipe than this command's ({', '.join(keys[:8])}{more})"]


def _unused_sections(recipe: Any) -> tuple[str, ...]:
    """Recipe sections the cell's method never reads (a change there cannot make its results another recipe's)."""
    m = recipe.distill.method
    return (*(() if recipe.uses_prompt else ("prompt.",)), *(() if m in ("ekd+fpg", "fopro") else ("distill.explore.",)),
            *(() if m == "fopro" else ("distill.akd.",)))


def _flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
