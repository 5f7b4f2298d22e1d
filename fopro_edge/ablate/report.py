"""The ablation report as Markdown, and both files (``ablation.json``, ``ablation.md``) written atomically."""

from __future__ import annotations

from pathlib import Path

from fopro_edge.ablate.bootstrap import METRICS
from fopro_edge.ablate.results import ProbeDifference, machine
from fopro_edge.ablate.stats import NO_DIFFERENCE, Interval, Spread, resolved
from fopro_edge.ablate.summary import AblationReport, Difference
from fopro_edge.io import atomic_write_json, atomic_write_text

LABELS = {"balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1", "many_recall": "many recall",
          "medium_recall": "medium recall", "few_recall": "few recall", "tail_recall": "tail recall",
          "rare_recall": "rare recall"}
JSON_NAME, MARKDOWN_NAME = "ablation.json", "ablation.md"


def _spread(s: Spread) -> str:
    if s.mean is None:
        return "–"
    return f"{s.mean:.3f}" if s.sd is None else f"{s.mean:.3f} ± {s.sd:.3f}"


def _signed(v: float) -> str:
    return f"{v:+.3f}"


def interval_text(iv: Interval | None, *, bold: bool = False) -> str:
    """``[low, high]`` with signs, bold when ``bold`` and it excludes 0; ``–`` for none."""
    if iv is None:
        return "–"
    text = f"[{_signed(iv.low)}, {_signed(iv.high)}]"
    return f"**{text}**" if bold and iv.excludes_zero else text


def _difference_row(d: Difference) -> list:
    """Bold only on a resolved difference (its paired t-interval excludes 0); the image-only
    interval is always plain."""
    decided = resolved(d.seed_interval)
    return [f"`{d.method}`", LABELS[d.metric], _signed(d.mean), d.seeds, interval_text(d.seed_interval, bold=decided),
            interval_text(d.seed_bootstrap_interval, bold=decided), interval_text(d.image_interval), d.verdict]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _num(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def render_markdown(r: AblationReport) -> str:
    from fopro_edge.distill.report import markdown_table

    pct = f"{100 * r.confidence:g} %"
    lines = [
        f"# Ablation of `{r.recipe}` (test split)\n",
        f"`{r.command}`\n",
        (f"{_count(len(r.methods), 'method')} × {_count(len(r.seeds), 'seed')} ({', '.join(map(str, r.seeds))}), one full `fopro-edge distill` "
         f"run per cell in `{r.out}/`; best checkpoint by validation balanced accuracy. Report made {r.date} on "
         f"{machine(r.env)}.\n"),
        "## Per method: mean ± sd over seeds\n",
        markdown_table(["method", "seeds", *(LABELS[m] for m in METRICS)],
                       [[f"`{s.method}`", s.seeds, *(_spread(s.metrics[m]) for m in METRICS)] for s in r.summary]),
        f"## Against `{r.baseline}`: method − {r.baseline}, mean over seeds, {pct} intervals\n",
        ("Over seeds: the paired t-interval of the per-seed differences. Over seeds × images: a two-level "
         f"paired bootstrap, {r.resamples} resamples: the seeds redrawn with replacement, then each drawn seed's "
         "test images redrawn within class, the same images for both methods; the difference is the mean over "
         "the drawn seeds. Both need 2 seeds. Over test images only: the images redrawn the same way, the "
         "seeds kept as they are: it ignores how much another seed would move the difference, so it never "
         "decides one. **Bold**: a seed-level interval that excludes 0, of a difference resolved by its paired "
         f"t-interval excluding 0; verdict \"{NO_DIFFERENCE}\" where the paired t-interval contains 0.\n"),
        *(["One seed: no seed-level interval, so no difference is resolved (run more seeds).\n"]
          if len(r.seeds) < 2 else []),
    ]
    rows = [_difference_row(d) for d in r.differences]
    lines.append(markdown_table(["method", "metric", "difference", "seeds", f"{pct} over seeds (paired t)",
                                 f"{pct} over seeds × images", f"{pct} over test images only", "verdict"], rows)
                 if rows else "(one method only)\n")
    fallbacks = sorted({f"`{d.method}`: {d.bootstrap_note}" for d in r.differences if d.bootstrap_note})
    if fallbacks:
        lines.append("Without bootstrap intervals (the paired t-interval stands alone):\n")
        lines += [f"- {f}" for f in fallbacks]
        lines.append("")
    lines.append("## Cells\n")
    lines.append(markdown_table(
        ["cell", "status", "balanced accuracy", "macro-F1", "rare recall", "best epoch", "wall s", "train s",
         "predictions", "machine"],
        [[f"`{Path(c.dir).name}`", c.status, _num(c.metrics["balanced_accuracy"], ".3f"), _num(c.metrics["macro_f1"], ".3f"),
          _num(c.metrics["rare_recall"], ".3f"), c.best_epoch if c.best_epoch is not None else "–",
          _num(c.wall_seconds, ".1f"), _num(c.train_seconds, ".1f"), "yes" if c.predictions else "no", c.machine or "–"]
         for c in r.cells],
    ))
    lines.append("wall s: the command that finished the cell, start to end (absent for cells run otherwise); "
                 "train s: the epochs' training time from `history.jsonl`.\n")
    lines += _prompt_and_akd(r)
    if r.notes:
        lines.append("## Notes\n")
        lines += [f"- {n}" for n in r.notes]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _pair(a: tuple[float, float] | None, *, bold: bool = False) -> str:
    return "–" if a is None else interval_text(Interval(*a), bold=bold)


def _prompt_and_akd(r: AblationReport) -> list[str]:
    """What the Fourier prompt and AKD did in each cell that has them: the explore stage's paired
    teacher probe (prompt frozen, the same resamples with and without it), the prompt's gain and
    the AKD adversarial term."""
    from fopro_edge.distill.report import markdown_table

    rows = []
    for c in r.cells:
        e, a = c.explore, c.akd
        if e is None and a is None:
            continue
        p = e.probe if e is not None else None
        few = p.difference.few_recall if p is not None else None
        rows.append([
            f"`{Path(c.dir).name}`",
            "–" if p is None else f"{p.clean.balanced_accuracy:.3f} / {_num(p.clean.few_recall, '.3f')}",
            "–" if p is None else _probe_difference(p.difference.balanced_accuracy),
            "–" if few is None else _probe_difference(few),
            "–" if e is None or e.gain is None else f"{e.gain.min:.2f}–{e.gain.max:.2f} ({e.gain.mean_abs_log_gain:.3f})",
            "–" if a is None else f"{a.steps}: {a.first:.2f} → {a.first_epoch_mean:.2f} → {a.last_epoch_mean:.2f}",
        ])
    if not rows:
        return []
    return [
        "## What the Fourier prompt and AKD did\n",
        ("Teacher probe: the explore stage's class-balanced linear probe on the frozen teacher's val features, "
         "clean (balanced accuracy / few recall) and prompted − clean with the prompt frozen, each difference with its "
         "95 % intervals over probe seeds and over val images (**bold**: the interval over probe seeds excludes 0; the "
         "one over val images ignores the probe seeds' spread and is never bold). Gain: the prompt's effective "
         "amplitude gain over val images, min–max (mean |log gain|). AKD: adversarial steps, the term at its first step → "
         "mean over the first AKD epoch → over the last.\n"),
        markdown_table(["cell", "clean teacher probe", "prompted − clean: balanced accuracy", "few recall", "gain",
                        "AKD adversarial term"], rows),
    ]


def _probe_difference(d: ProbeDifference) -> str:
    return f"{_signed(d.mean)} {_pair(d.t_interval, bold=True)} {_pair(d.bootstrap_interval)}"


def write_report(r: AblationReport) -> dict[str, Path]:
    out = Path(r.out)
    paths = {"json": out / JSON_NAME, "markdown": out / MARKDOWN_NAME}
    atomic_write_json(paths["json"], r.to_dict())
    atomic_write_text(paths["markdown"], render_markdown(r))
    return paths
