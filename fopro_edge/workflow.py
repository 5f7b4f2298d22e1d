"""The whole chain in one call: distill -> export (every target the recipe lists) -> gate -> bench
-> one report (``RUN_DIR/report.md``) a person can read top to bottom.

The report is assembled from what each step wrote into the run directory (``longtail.json``,
``metrics/metrics.json``, ``export/<target>/export.json``, ``bench/bench.json``), so it can also be
re-rendered for an existing run with :func:`write_run_report`.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fopro_edge.errors import ConfigError, GateFailedError, MissingDependencyError, UnverifiedError
from fopro_edge.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from fopro_edge.config import Recipe

log = logging.getLogger(__name__)

# Targets exported when the recipe has no ``export`` section: the two CPU INT8 paths.
DEFAULT_TARGETS = ("onnxruntime", "openvino")
GROUP_COLOURS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}


@dataclass(frozen=True)
class SkippedTarget:
    target: str
    reason: str


@dataclass(frozen=True)
class WorkflowResult:
    """What ``fopro-edge run`` produced."""

    run_dir: Path
    report: Path
    test_metrics: dict[str, Any]
    exports: tuple[Any, ...]  # fopro_edge.deploy.pipeline.ExportResult
    skipped: tuple[SkippedTarget, ...]
    bench: Any | None  # fopro_edge.bench.BenchReport

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.exports)

    def raise_for_gates(self) -> None:
        """:class:`GateFailedError` (exit code 5) naming every target whose gate failed, else
        :class:`UnverifiedError` (exit code 6) when a step could not be run here."""
        failed = [e for e in self.exports if e.status == "FAILED"]
        if failed:
            parts = []
            for e in failed:
                s = e.failed_step
                g = s.failed_gate if s else None
                classes = ", ".join(g.failing_classes) if g and g.failing_classes else "a global threshold"
                parts.append(f"{e.target} at step '{s.name if s else '?'}' ({classes})")
            raise GateFailedError(f"rare-class gate FAILED: {'; '.join(parts)}; artifacts kept, marked FAILED; "
                                  f"see {self.report}")
        unverified = [e.target for e in self.exports if e.status == "UNVERIFIED"]
        if unverified:
            raise UnverifiedError(f"UNVERIFIED: {', '.join(unverified)} produced artifacts that could not be run here "
                                  f"(see {self.report})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir), "report": str(self.report), "passed": self.passed,
            "test_metrics": {k: self.test_metrics.get(k) for k in ("balanced_accuracy", "macro_f1", "accuracy", "rare_recall")},
            "exports": [{"target": e.target, "precision": e.precision, "status": e.status,
                         "manifest": str(e.out_dir / "export.json"),
                         "artifact": str(e.final.artifact.path) if e.final and e.final.artifact else None}
                        for e in self.exports],
            "skipped": [{"target": s.target, "reason": s.reason} for s in self.skipped],
            "bench": None if self.bench is None else str(self.run_dir / "bench" / "bench.json"),
        }


def export_targets(recipe_export: Mapping[str, Any], requested: Sequence[str] = ()) -> tuple[str, ...]:
    """The targets to export: ``requested`` (command line) if given, else the keys of the recipe's
    ``export`` section, else :data:`DEFAULT_TARGETS`."""
    from fopro_edge.deploy.profiles import check_target

    if requested:
        return tuple(dict.fromkeys(check_target(t, "--target") for t in requested))
    if recipe_export:
        return tuple(check_target(str(t), f"export.{t}") for t in recipe_export)
    return DEFAULT_TARGETS


def run_recipe(
    recipe_path: str | Path,
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    targets: Sequence[str] = (),
    bench_config: Any | None = None,
    skip_bench: bool = False,
    resume: bool = False,
    device: str | None = None,
    progress: bool | None = None,
) -> WorkflowResult:
    """Distill ``recipe_path`` into a run directory, export it to every target, bench the
    artifacts against the PyTorch student and teacher, and write ``RUN_DIR/report.md``.

    A failed gate does not stop the chain (the artifact is kept, marked FAILED, and benched);
    check ``result.passed`` or call ``result.raise_for_gates()``. A target whose runtime is not
    installed is skipped and listed in the report.
    """
    from fopro_edge.config import load_recipe
    from fopro_edge.distill.rundir import prepare_run_dir
    from fopro_edge.distill.trainer import distill

    recipe = load_recipe(recipe_path, overrides)
    chosen = export_targets(recipe.export, targets)  # validate before hours of training
    rd = prepare_run_dir(out, recipe.name, resume=resume)
    t0 = time.monotonic()
    result = distill(recipe, rd, resume=resume, device=device, progress=progress)
    timings = {"distill_s": time.monotonic() - t0}

    from fopro_edge.deploy.pipeline import export

    exports, skipped = [], []
    for target in chosen:
        t1 = time.monotonic()
        try:
            exports.append(export(rd.path, target))
        except MissingDependencyError as e:
            log.warning("export %s skipped: %s", target, e)
            skipped.append(SkippedTarget(target, str(e)))
        timings[f"export_{target}_s"] = time.monotonic() - t1

    report = None
    if not skip_bench:
        from fopro_edge.bench import bench

        t2 = time.monotonic()
        report = bench(rd.path, config=bench_config, device="cpu")
        timings["bench_s"] = time.monotonic() - t2
    path = write_run_report(rd.path, timings=timings, skipped=skipped)
    return WorkflowResult(rd.path, path, result.test_metrics, tuple(exports), tuple(skipped), report)


# ============================================================================ the report


def _load_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_exports(run: Path) -> list[Any]:
    """Every ``export/<target>/export.json`` of the run, typed (unreadable ones are skipped, with a warning)."""
    from fopro_edge.deploy.pipeline import read_export

    out = []
    for manifest in sorted((run / "export").glob("*/export.json")) if (run / "export").is_dir() else []:
        try:
            out.append(read_export(manifest))
        except ConfigError as e:
            log.warning("%s; left out of the report", e)
    return out


def _read_recipe(run: Path) -> Recipe | None:
    """The run's ``recipe.yaml``, typed (paths not checked: the data may have moved since)."""
    from fopro_edge.config import read_yaml_mapping, recipe_from_dict

    path = run / "recipe.yaml"
    if not path.is_file():
        return None
    try:
        return recipe_from_dict(read_yaml_mapping(path, "recipe"), source=str(path), base_dir=run, check_paths=False,
                                saved=True)
    except ConfigError as e:
        log.warning("%s; the recipe is left out of the report", e)
        return None


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def plot_longtail(longtail: Mapping[str, Any], path: Path) -> None:
    """Train images per class, sorted, coloured by group, rare classes outlined; log scale."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    names, counts = longtail["class_names"], longtail["counts"]
    groups, rare = longtail.get("groups") or {}, set(longtail.get("rare_classes") or [])
    order = sorted(range(len(names)), key=lambda i: -counts[i])
    fig = Figure(figsize=(max(5.0, 0.4 * len(names) + 2.0), 3.6), layout="constrained")
    ax = fig.add_subplot()
    x = range(len(order))
    ax.bar(x, [max(counts[i], 0.8) for i in order], color=[GROUP_COLOURS.get(groups.get(names[i]), "#7f7f7f") for i in order],
           edgecolor=["black" if names[i] in rare else "none" for i in order], linewidth=1.4)
    ax.set_yscale("log")
    ax.set_xticks(list(x), [names[i] + (" ★" if names[i] in rare else "") for i in order], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("train images (log)")
    ratio = longtail.get("imbalance_ratio")
    ax.set_title(f"Long-tail profile of the train split (imbalance ratio {ratio:.1f})" if ratio else "Long-tail profile")
    handles = [Patch(color=c, label=g) for g, c in GROUP_COLOURS.items() if g in groups.values()]
    handles.append(Patch(facecolor="white", edgecolor="black", label="★ rare"))
    ax.legend(handles=handles, fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _data_section(run: Path, longtail: Mapping[str, Any] | None, recipe: Recipe | None) -> list[str]:
    from fopro_edge.distill.report import markdown_table

    out = ["## 1. Data: the long tail\n"]
    if recipe is not None:
        d = recipe.data
        out.append(f"Source `{d.source}`, images resized to {d.image_size} px, sampler `{d.sampler}`. Groups by train "
                   f"count: many > {d.groups.many_above}, few < {d.groups.few_below}; rare classes = "
                   f"{'listed in the recipe' if d.groups.rare_classes else 'the few group'}.\n")
    if not longtail:
        return out + ["(no `longtail.json` in the run)\n"]
    plot_longtail(longtail, run / "longtail.png")
    names, counts = longtail["class_names"], longtail["counts"]
    groups, rare = longtail.get("groups") or {}, set(longtail.get("rare_classes") or [])
    rows = sorted(([n, c, groups.get(n, "–"), "★" if n in rare else ""] for n, c in zip(names, counts)), key=lambda r: -r[1])
    ratio = longtail.get("imbalance_ratio")
    out += [
        f"{len(names)} classes, {sum(counts)} train images, imbalance ratio {ratio:.1f} (largest / smallest class); "
        f"rare: {', '.join(longtail.get('rare_classes') or []) or '–'}.\n" if ratio else "",
        "![long-tail profile](longtail.png)\n",
        markdown_table(["class", "train images", "group", "rare"], rows),
    ]
    return out


def _sizes_text(recipe: Recipe, views: Mapping[str, Any]) -> str:
    student = f"student {recipe.data.image_size} px"
    if not recipe.uses_teacher:
        return student
    teacher = recipe.teacher.image_size or views.get("teacher_size")
    return (f"{student}, teacher {teacher} px; each training image augmented once at "
            f"{views.get('rendered_at', max(recipe.data.image_size, teacher or 0))} px and resized (antialiased) for the other")


def _method_section(recipe: Recipe | None, metrics: Mapping[str, Any] | None) -> list[str]:
    from fopro_edge.distill.report import explore_summary, markdown_table

    if recipe is None:
        return ["## 2. Method\n", "(no `recipe.yaml` in the run)\n"]
    t, s, d, p, o = recipe.teacher, recipe.student, recipe.distill, recipe.prompt, recipe.optim
    rows = [
        ["method", f"`{d.method}`"],
        ["teacher (frozen)", f"`{t.model}`" + (f", weights `{t.weights}`" if t.weights else
                                              ", ImageNet weights from the hub" if t.pretrained else ", random init")],
        ["student", f"`{s.model}`" + (" (pre-trained)" if s.pretrained else " (from scratch)")],
        ["epochs / optimiser", f"{d.epochs} / {o.name} lr {o.lr}, {o.schedule}"],
    ]
    views = (metrics or {}).get("views") or {}
    rows.append(["input sizes", _sizes_text(recipe, views)])
    if views.get("fixed_views"):
        fv = views["fixed_views"]
        rows.append(["training views", f"{fv['views']} fixed augmented views per image (view seed {fv['view_seed']}), the "
                                       f"same for every method and seed; teacher: {fv['teacher']}"
                                       + (f" (cache built in {fv['seconds']:.0f} s)" if fv.get("built") else
                                          " (reused from the cache)" if fv["teacher"] == "cached features" else "")])
    if recipe.uses_teacher:
        rows.append(["EKD alignment weight λ", f"{d.align_weight}" + (", class-balanced (DRW) from 0.8 of the epochs"
                                                                    if d.align_balance == "drw" else "")])
    if recipe.uses_prompt:
        what = ("a fixed random prompt, mean |log gain| " + f"{p.random_log_gain:g}" if d.method == "ekd+randfpg" else
                f"conditional {p.conditional}")
        rows.append(["FPG", f"alpha {p.alpha}, band {p.band}, {p.gain} gain, {what}; applied to the teacher's view at "
                            f"{recipe.teacher.image_size or views.get('teacher_size')} px"])
    if d.method == "fopro":
        rows.append(["AKD", f"adversarial FPG step every {d.akd.every} steps from epoch {recipe.akd_start_epoch + 1}, lr {d.akd.lr}"])
    la = (metrics or {}).get("logit_adjust") or {}
    if la.get("tau"):
        rows.append(["test-time logit adjustment", f"τ = {la['tau']:g} ({la.get('mode')}); in the PyTorch evaluation and baked "
                                                   "into the classifier bias of every exported artifact (not in the "
                                                   "timm folder `student/`, which holds the plain classifier)"])
    out = ["## 2. Method\n", markdown_table(["", ""], rows)]
    ex = (metrics or {}).get("explore")
    explore = explore_summary(ex)
    if explore:
        out.append(explore)
        if (ex.get("gain") or {}).get("plot"):
            out.append(f"![effective FPG gain]({ex['gain']['plot']})\n")
    return out


def _results_section(run: Path, metrics: Mapping[str, Any] | None) -> list[str]:
    from fopro_edge.distill.report import markdown_table

    if not metrics:
        return ["## 3. Results per class\n", "(no `metrics/metrics.json` in the run)\n"]
    g = metrics.get("group_recall") or {}
    head = [["balanced accuracy", _pct(metrics.get("balanced_accuracy"))], ["macro F1", _pct(metrics.get("macro_f1"))],
            ["accuracy", _pct(metrics.get("accuracy"))], ["rare-class recall", _pct(metrics.get("rare_recall"))],
            *[[f"{k} recall", _pct(g.get(k))] for k in ("many", "medium", "few")]]
    rows = [[r["name"], r.get("group") or "–", "★" if r.get("rare") else "", r.get("train_count"), r.get("support"),
             _pct(r.get("precision")), _pct(r.get("recall")), _pct(r.get("f1"))]
            for r in sorted(metrics.get("per_class", []), key=lambda r: -(r.get("train_count") or 0))]
    out = [
        f"## 3. Results per class ({metrics.get('split', 'test')} split, best epoch {metrics.get('best_epoch')})\n",
        f"PyTorch student, {metrics.get('num_samples')} images. Percentages.\n",
        markdown_table(["metric", "%"], head),
        markdown_table(["class", "group", "rare", "train", "support", "precision %", "recall %", "F1 %"], rows),
    ]
    for name, title in (("per_class_recall.png", "per-class recall"), ("confusion_matrix.png", "confusion matrix"),
                        ("fpg_gain.png", "learned FPG gain")):
        if (run / "metrics" / name).is_file():
            out.append(f"![{title}](metrics/{name})\n")
    return out


def _export_section(run: Path, exports: Sequence[Any], skipped: Sequence[SkippedTarget]) -> list[str]:
    from fopro_edge.distill.report import markdown_table

    out = ["## 4. Export steps and their rare-class gates\n",
           ("Every step is compared image by image with the PyTorch student on the check split: balanced accuracy, "
            "rare-class recall and flips (right→wrong on rare-class images). A failed step keeps its artifact, "
            "marked FAILED.\n")]
    if not exports and not skipped:
        out.append("(nothing exported)\n")
    for e in exports:
        rel = e.out_dir.relative_to(run) if e.out_dir.is_relative_to(run) else e.out_dir
        out.append(f"### {e.target} ({e.precision}) — {e.status}\n")
        rows = []
        for s in e.steps:
            g, a = s.gate, s.artifact
            rows.append([
                s.name, s.title, f"{a.size_bytes / 2**20:.2f}" if a else "–",
                f"{g.parity.max_abs_logit_diff:.2g}" if g else "–",
                f"{_pct(g.reference.balanced_accuracy)} → {_pct(g.candidate.balanced_accuracy)}" if g else "–",
                f"{_pct(g.reference.rare_recall)} → {_pct(g.candidate.rare_recall)}" if g else "–",
                f"{g.flips.total} ({g.flips.rare_text()})" if g else "–",
                ", ".join(g.failing_classes) if g and g.failing_classes else "–",
                s.status,
            ])
        out.append(markdown_table(["step", "what", "MiB", "max abs Δlogit", "bal. acc %", "rare recall %",
                                   "flips (rare r→w)", "failing classes", "gate"], rows))
        notes = [n for s in e.steps for n in s.notes] + list(e.notes)
        if notes:
            out.append("".join(f"- {n}\n" for n in dict.fromkeys(notes)))
        out.append(f"Details: [{rel}/report.md]({rel}/report.md); per step: `check.md` in each step folder.\n")
    for s in skipped:
        out.append(f"### {s.target} — NOT EXPORTED\n\n{s.reason}\n")
    return out


def _bench_section(run: Path) -> list[str]:
    bj = _load_json(run / "bench" / "bench.json")
    if not bj:
        return ["## 5. Latency\n", "(not benchmarked: run `fopro-edge bench --run RUN_DIR`)\n"]
    from fopro_edge.bench.report import render_markdown
    from fopro_edge.bench.results import BenchReport

    report = BenchReport.from_dict(bj)
    chart = "bench/latency.png" if (run / "bench" / "latency.png").is_file() else None
    body = render_markdown(report, chart=chart, heading="##")
    _, _, rest = body.partition("\n")
    return ["## 5. Latency on this machine\n" + rest.replace("\n### Machine\n", "\n### Machine (fingerprint)\n")]


def _headline(run: Path, metrics: Mapping[str, Any] | None, recipe: Recipe | None, exports: Sequence[Any]) -> list[str]:
    gates = ("all export gates PASSED" if exports and all(e.passed for e in exports)
             else "gate " + ", ".join(f"{e.target} {e.status}" for e in exports if not e.passed) if exports
             else "nothing exported")
    lines = [f"# {recipe.name if recipe else run.name}: distill → export → bench\n",
             f"Run directory `{run}`; written {time.strftime('%Y-%m-%d %H:%M')}.\n"]
    bullets = [f"- **{gates}**"]
    if metrics and recipe is not None:
        bullets.append(f"- student `{recipe.student.model}` on the {metrics.get('split', 'test')} split: "
                       f"balanced accuracy {_pct(metrics.get('balanced_accuracy'))} %, rare-class recall "
                       f"{_pct(metrics.get('rare_recall'))} %")
    bj = _load_json(run / "bench" / "bench.json")
    if bj:
        from fopro_edge.bench.results import BenchReport

        rep = BenchReport.from_dict(bj)
        threads = rep.config.thread_counts[0]
        best = rep.best(batch_size=1, threads=threads)
        if best is not None and best.latency is not None:
            sp = rep.speedups(best)
            vs = ", ".join(f"{v:.1f}x faster than the PyTorch eager {k[3:]}" for k, v in sp.items() if v)
            bullets.append(f"- fastest artifact at batch 1, {threads} threads: `{best.target.name}` "
                           f"({best.precision_used}, gate {best.target.gate or '–'}) p50 {best.latency.p50_ms:.2f} ms"
                           + (f", {vs}" if vs else ""))
    return lines + ["\n".join(bullets) + "\n"]


def write_run_report(run_dir: str | Path, *, timings: Mapping[str, float] | None = None,
                     skipped: Sequence[SkippedTarget] = ()) -> Path:
    """Render ``RUN_DIR/report.md`` (and ``longtail.png``) from what the run directory holds."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"--run: {run} is not a directory")
    recipe = _read_recipe(run)
    exports = _read_exports(run)
    metrics = _load_json(run / "metrics" / "metrics.json")
    longtail = _load_json(run / "longtail.json")
    parts = [
        *_headline(run, metrics, recipe, exports),
        *_data_section(run, longtail, recipe),
        *_method_section(recipe, metrics),
        *_results_section(run, metrics),
        *_export_section(run, exports, skipped),
        *_bench_section(run),
    ]
    if timings:
        parts.append("## Wall time of the steps\n\n" + "".join(f"- {k.removesuffix('_s').replace('_', ' ')}: {v:.0f} s\n"
                                                              for k, v in timings.items()))
    path = run / "report.md"
    atomic_write_text(path, "\n".join(p for p in parts if p))
    log.info("run report: %s", path)
    return path
