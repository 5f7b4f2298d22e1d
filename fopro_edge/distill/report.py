"""Metrics report writer: ``metrics.json``, ``metrics.md`` and PNG plots (per-class recall, confusion
matrix, learned FPG gain). Plots use :class:`matplotlib.figure.Figure` directly (Agg canvas, no
pyplot global state) and every file is written atomically.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fopro_edge.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

GROUP_COLOURS: dict[str | None, str] = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728", None: "#7f7f7f"}
RARE_MARK = "★"
MAX_ANNOTATED_CLASSES = 25


# ---------------------------------------------------------------------------- Markdown


def _cell(value: Any, float_format: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, (float, np.floating)):
        return format(float(value), float_format)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    """A number, or a string holding one (pre-formatted cells), for column alignment."""
    if isinstance(value, str):
        try:
            float(value.rstrip("%"))
        except ValueError:
            return False
        return True
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_blank(value: Any) -> bool:
    return value is None or value in ("", "–", "-")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, float_format: str = ".4f") -> str:
    """A GitHub Markdown table; numeric columns are right-aligned, ``None`` shows as ``–``.

    Floats use ``float_format``; pre-format cells as strings for anything else. ``|`` is escaped.
    """
    ncol = len(headers)
    for i, row in enumerate(rows):
        if len(row) != ncol:
            raise ValueError(f"row {i} has {len(row)} cells for {ncol} headers")
    numeric = [
        any(_is_number(r[j]) for r in rows) and all(_is_number(r[j]) or _is_blank(r[j]) for r in rows)
        for j in range(ncol)
    ]
    lines = [
        "| " + " | ".join(_cell(h, float_format) for h in headers) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v, float_format) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}"


def _sorted_classes(per_class: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """By train count descending (stable: ties keep class order)."""
    return sorted(per_class, key=lambda r: -(r.get("train_count") or 0))


def _markdown(metrics: Mapping[str, Any], title: str, files: Mapping[str, str]) -> str:
    groups = metrics.get("group_recall") or {}
    headline = [
        ["balanced accuracy", _pct(metrics.get("balanced_accuracy"))],
        ["macro F1", _pct(metrics.get("macro_f1"))],
        ["accuracy", _pct(metrics.get("accuracy"))],
        ["rare-class recall", _pct(metrics.get("rare_recall"))],
        *[[f"{g} recall", _pct(groups.get(g))] for g in ("many", "medium", "few")],
    ]
    rows = [
        [
            r["name"],
            r.get("group") or "–",
            RARE_MARK if r.get("rare") else "",
            r.get("train_count"),
            r.get("support"),
            _pct(r.get("precision")),
            _pct(r.get("recall")),
            _pct(r.get("f1")),
        ]
        for r in _sorted_classes(metrics.get("per_class", []))
    ]
    parts = [
        f"# {title}\n",
        f"{metrics.get('num_samples', '?')} images, {metrics.get('num_classes', len(rows))} classes. "
        f"Percentages; {RARE_MARK} = rare class; – = undefined (class absent from the evaluated labels).\n",
        markdown_table(["metric", "%"], headline),
        "## Per class (by train count)\n",
        markdown_table(
            ["class", "group", "rare", "train", "support", "precision %", "recall %", "F1 %"], rows
        ),
    ]
    parts += _logit_adjust_note(metrics.get("logit_adjust"))
    explore = explore_summary(metrics.get("explore"))
    if explore:
        parts += ["## Explore stage (teacher with and without the Fourier prompt)\n", explore]
    images = [f"![{name}]({fname})" for name, fname in files.items()]
    if images:
        parts += ["## Plots\n", "\n\n".join(images) + "\n"]
    return "\n".join(parts)


def _signed(v: float) -> str:
    return f"{100.0 * v:+.1f}"


def explore_summary(ex: Mapping[str, Any] | None) -> str | None:
    """The explore stage in a paragraph: what the frozen prompt does to the teacher's features, with its intervals."""
    if not ex:
        return None
    if "probe" not in ex:  # a run from before the paired diagnostic: two probes trained alongside the prompt
        return (f"Explore stage ({ex.get('epochs')} epochs): teacher probes trained alongside the prompt, balanced accuracy "
                f"{_pct(ex.get('probe_balanced_accuracy_without_prompt'))} % clean, "
                f"{_pct(ex.get('probe_balanced_accuracy_with_prompt'))} % prompted (one run each, no interval).\n")
    p, g = ex["probe"], ex.get("gain") or {}
    d = p["difference"]["balanced_accuracy"]
    few = p["difference"].get("few_recall")
    boot = d.get("bootstrap_interval") or [float("nan")] * 2
    text = (
        f"Explore stage ({ex.get('steps')} prompt steps, lr {ex.get('lr')}), then the prompt frozen: class-balanced "
        f"logistic-regression probes on the teacher's features of the train images, {p['seeds']} stratified bootstrap "
        f"resamples each shared by a clean and a prompted probe, scored on {p['val_images']} val images. Balanced accuracy "
        f"{_pct(p['clean']['balanced_accuracy'])} % clean, {_pct(p['prompted']['balanced_accuracy'])} % prompted: "
        f"difference {_signed(d['mean'])} points, 95 % interval {_signed(d['t_interval'][0])}..{_signed(d['t_interval'][1])} "
        f"over probe seeds and {_signed(boot[0])}..{_signed(boot[1])} over val images"
    )
    if few:
        fb = few.get("bootstrap_interval") or [float("nan")] * 2
        text += (f"; few-group recall {_pct(p['clean']['few_recall'])} % clean, {_pct(p['prompted']['few_recall'])} % "
                 f"prompted: difference {_signed(few['mean'])} points, {_signed(few['t_interval'][0])}.."
                 f"{_signed(few['t_interval'][1])} over probe seeds and {_signed(fb[0])}..{_signed(fb[1])} over val images")
    text += f". So: {ex['conclusion']}." if ex.get("conclusion") else "."
    if g:
        text += (f" Effective gain over the val images {g['min']:.3f}–{g['max']:.3f}, mean |log gain| "
                 f"{g['mean_abs_log_gain']:.4f}" + (f" (`{g['plot']}`)" if g.get("plot") else "") + ".")
    return text + "\n"


def _logit_adjust_note(la: Mapping[str, Any] | None) -> list[str]:
    if not la or not la.get("tau"):
        return []
    how = "chosen on the validation split" if la.get("mode") == "auto" else "set in the recipe"
    plain = la.get("test_without") or {}
    few = (plain.get("group_recall") or {}).get("few")
    return [
        "## Test-time logit adjustment\n",
        f"Predictions are argmax(logits − τ·log π), τ = {la['tau']:g} ({how}), π the train class frequencies. "
        f"Without it: balanced accuracy {_pct(plain.get('balanced_accuracy'))} %, few recall {_pct(few)} %. "
        "Exported ONNX / OpenVINO / TensorRT artifacts carry it in the classifier bias (metadata `fopro_edge.logit_adjust`); "
        "the timm folder `student/` holds the plain classifier.\n",
    ]


# ---------------------------------------------------------------------------- plots


def _save_png(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _plot_per_class_recall(metrics: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = _sorted_classes(metrics["per_class"])
    n = len(rows)
    fig = Figure(figsize=(max(6.0, 0.38 * n + 2.5), 4.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n)
    recall = [r["recall"] if r["recall"] is not None else 0.0 for r in rows]
    colours = [GROUP_COLOURS.get(r.get("group"), GROUP_COLOURS[None]) for r in rows]
    ax.bar(x, recall, color=colours, edgecolor=["black" if r.get("rare") else "none" for r in rows], linewidth=1.2)
    for i, r in enumerate(rows):
        if r["recall"] is None:
            ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall")
    labels = [f"{r['name']} {RARE_MARK}" if r.get("rare") else r["name"] for r in rows]
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    if metrics.get("balanced_accuracy") is not None:
        ax.axhline(metrics["balanced_accuracy"], color="black", linestyle="--", linewidth=0.8)
    ax2 = ax.twinx()
    counts = [max(int(r.get("train_count") or 0), 0) for r in rows]
    ax2.plot(x, counts, color="black", marker="o", markersize=3, linewidth=1)
    if counts and min(counts) > 0:
        ax2.set_yscale("log")
    ax2.set_ylabel("train images")
    present = [g for g in ("many", "medium", "few") if any(r.get("group") == g for r in rows)]
    handles = [Patch(color=GROUP_COLOURS[g], label=g) for g in present]
    handles.append(Patch(facecolor="white", edgecolor="black", label=f"{RARE_MARK} rare"))
    handles += [
        Line2D([], [], color="black", marker="o", markersize=3, label="train count"),
        Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="balanced acc."),
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower left", ncols=min(len(handles), 3))
    ax.set_title("Per-class recall (sorted by train count)")
    _save_png(fig, path)


def _plot_confusion(metrics: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    names = [r["name"] for r in metrics["per_class"]]
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    n = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = max(4.5, 0.42 * n + 2.5)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="fraction of the true class", shrink=0.8)
    ticks = np.arange(n)
    fs = 8 if n <= 25 else 6
    ax.set_xticks(ticks, names, rotation=60, ha="right", fontsize=fs)
    ax.set_yticks(ticks, names, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7, color=colour)
    annotated = ", counts annotated" if n <= MAX_ANNOTATED_CLASSES else ""
    ax.set_title(f"Confusion matrix (row-normalised{annotated})")
    _save_png(fig, path)


def plot_gain_spectrum(gain: np.ndarray, path: Path, *, title: str = "Learned dataset-level FPG gain") -> None:
    """A gain over the half spectrum (``C×H×(W//2+1)``): one map per channel and the radial profile, PNG."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    g = np.asarray(gain, dtype=np.float64)
    if g.ndim == 2:
        g = g[None]
    if g.ndim != 3 or min(g.shape) < 1:
        raise ValueError(f"gain must be C×H×(W//2+1) (or H×(W//2+1)), got shape {np.shape(gain)}")
    if not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError("gain must be finite and positive")
    c, h, wr = g.shape
    w = max(2 * (wr - 1), 1)  # the width is taken as even; an odd width shifts the axis by < 1 bin
    fy = np.fft.fftfreq(h) / 0.5
    fx = np.arange(wr) / w / 0.5
    radius = np.minimum(np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2), 1.0)

    panels = [(f"channel {i}", g[i]) for i in range(c)] if c <= 4 else [("mean over channels", g.mean(axis=0))]
    bound = float(max(np.max(g), 1.0 / np.min(g), 1.0 + 1e-3))
    norm = LogNorm(vmin=1.0 / bound, vmax=bound)  # diverging map centred at gain 1
    fig = Figure(figsize=(3.2 * len(panels) + 4.2, 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels) + 1, squeeze=False)[0]
    dy = 2.0 / h
    dx = (fx[1] - fx[0]) if wr > 1 else 1.0
    extent = (-dx / 2, fx[-1] + dx / 2, float(np.fft.fftshift(fy)[0]) - dy / 2, float(np.fft.fftshift(fy)[-1]) + dy / 2)
    im = None
    for ax, (label, panel) in zip(axes[:-1], panels):
        shifted = np.fft.fftshift(panel, axes=0)
        im = ax.imshow(
            shifted, cmap="RdBu_r", norm=norm, origin="lower", extent=extent, aspect="auto", interpolation="nearest"
        )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("horizontal frequency (norm.)")
    axes[0].set_ylabel("vertical frequency (norm.)")
    ticks = [1.0 / bound, bound**-0.5, 1.0, bound**0.5, bound]
    cbar = fig.colorbar(im, ax=list(axes[:-1]), label="amplitude gain", shrink=0.85, ticks=ticks)
    cbar.ax.minorticks_off()
    cbar.ax.set_yticklabels([f"{t:.3g}" for t in ticks])

    ax = axes[-1]
    nbins = int(max(4, min(32, max(h, wr) // 2)))
    edges = np.linspace(0.0, 1.0, nbins + 1)
    which = np.clip(np.digitize(radius, edges[1:-1]), 0, nbins - 1)
    non_dc = radius > 0
    centres = 0.5 * (edges[:-1] + edges[1:])
    curves = [(label, panel) for label, panel in panels] if c <= 4 else [("mean", g.mean(axis=0))]
    for label, panel in curves:
        prof = [panel[(which == b) & non_dc].mean() if np.any((which == b) & non_dc) else np.nan for b in range(nbins)]
        ax.plot(centres, prof, marker=".", linewidth=1, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("radial frequency (norm.)")
    ax.set_ylabel("mean gain")
    ax.set_title("radial profile", fontsize=9)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    fig.suptitle(f"{title} (DC at left-middle)", fontsize=10)
    _save_png(fig, path)


# ---------------------------------------------------------------------------- entry point


def write_metrics_report(
    metrics: dict[str, Any],
    out_dir: Path,
    *,
    title: str,
    gain: np.ndarray | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md``, ``per_class_recall.png``, ``confusion_matrix.png``
    and, when ``gain`` (C×H×(W//2+1) learned FPG gain) is given, ``fpg_gain.png`` into ``out_dir``.

    Returns the written paths keyed ``json``, ``markdown``, ``per_class_recall``,
    ``confusion_matrix``, ``fpg_gain``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    images: dict[str, str] = {}

    paths["json"] = out_dir / "metrics.json"
    atomic_write_json(paths["json"], metrics)

    if metrics.get("per_class"):
        paths["per_class_recall"] = out_dir / "per_class_recall.png"
        _plot_per_class_recall(metrics, paths["per_class_recall"])
        images["per-class recall"] = paths["per_class_recall"].name
        if metrics.get("confusion_matrix") is not None:
            paths["confusion_matrix"] = out_dir / "confusion_matrix.png"
            _plot_confusion(metrics, paths["confusion_matrix"])
            images["confusion matrix"] = paths["confusion_matrix"].name
    if gain is not None:
        paths["fpg_gain"] = out_dir / "fpg_gain.png"
        plot_gain_spectrum(np.asarray(gain), paths["fpg_gain"])
        images["FPG gain"] = paths["fpg_gain"].name

    paths["markdown"] = out_dir / "metrics.md"
    atomic_write_text(paths["markdown"], _markdown(metrics, title, images))
    log.info("metrics report written to %s (%s)", out_dir, ", ".join(p.name for p in paths.values()))
    return paths
