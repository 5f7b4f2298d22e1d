"""Benchmark report writers: ``bench.json``, ``bench.md`` (tables + fingerprint) and
``latency.png`` (matplotlib ``Figure``, no pyplot), each written atomically."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fopro_edge.bench.results import BenchReport
from fopro_edge.distill.report import markdown_table
from fopro_edge.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

BACKEND_COLOURS = {"pytorch": "#7f7f7f", "onnxruntime": "#1f77b4", "openvino": "#9467bd", "tensorrt": "#2ca02c"}
MIB = float(1 << 20)


def _ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x" if v < 10 else f"{v:.1f}x"


def _mib(v: int | None) -> str:
    return "–" if v is None else f"{v / MIB:.1f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def configs(report: BenchReport) -> list[tuple[int, int]]:
    """The (batch size, threads) pairs measured, in measuring order."""
    seen: list[tuple[int, int]] = []
    for m in report.measurements:
        if m.key not in seen:
            seen.append(m.key)
    return seen


def latency_rows(report: BenchReport, key: tuple[int, int]) -> list[list[Any]]:
    rows = []
    for m in report.measurements:
        if m.key != key or not m.ok:
            continue
        lat = m.latency
        assert lat is not None
        sp = report.speedups(m)
        rows.append([
            m.target.name, m.target.role, m.target.backend, m.precision_used,
            _ms(lat.p50_ms), _ms(lat.p90_ms), _ms(lat.p99_ms), _ms(lat.mean_ms), _ms(lat.min_ms),
            f"{100 * lat.cv:.1f}", f"{lat.throughput_ips:.1f}",
            _x(sp["vs_student"]), _x(sp["vs_teacher"]), m.target.gate or "–",
        ])
    return rows


def resource_rows(report: BenchReport, key: tuple[int, int]) -> list[list[Any]]:
    rows = []
    gpu = any(m.gpu_memory for m in report.measurements)
    runtime = any(m.runtime_latency for m in report.measurements)
    events = any(m.gpu_latency for m in report.measurements)
    for m in report.measurements:
        if m.key != key or not m.ok:
            continue
        row = [
            m.target.name, m.target.backend, m.precision_used, _ms(m.load_ms), _ms(m.first_inference_ms),
            _mib(m.target.size_bytes), _mib(m.peak_rss_bytes),
        ]
        if gpu:
            g = m.gpu_memory or {}
            row.append(_mib(max(g.get("torch_peak_bytes", 0), g.get("device_used_delta_bytes", 0)) or None))
        if runtime:
            row.append(_ms(m.runtime_latency.p50_ms) if m.runtime_latency else "–")
        if events:
            row.append(_ms(m.gpu_latency.p50_ms) if m.gpu_latency else "–")
        inter = m.interference
        row += [_pct(inter.other_cpu_share if inter else None), m.latency.iterations if m.latency else "–",
                f"{m.attempts}" + (f" ({', '.join(_ms(p) for p in m.attempt_p50_ms)})" if m.attempts > 1 else "")]
        rows.append(row)
    return rows


def env_rows(env: Mapping[str, Any]) -> list[list[str]]:
    cpu = env.get("cpu") or {}
    pk = env.get("packages") or {}
    ov = env.get("openvino") or {}
    ort = env.get("onnxruntime") or {}
    rows = [
        ["CPU", f"{cpu.get('model', '?')} ({cpu.get('arch', '?')}{', virtual machine' if cpu.get('virtualized') else ''})"],
        ["cores (usable / logical)", f"{cpu.get('usable_cores')} / {cpu.get('logical_cores')}"],
        ["instruction sets", ", ".join(cpu.get("isa") or []) or "–"],
        ["memory", f"{cpu.get('memory_gib', '?')} GiB"],
        ["GPU", _gpu(env.get("gpu"))],
        ["python / platform", f"{env.get('python')} / {env.get('platform')}"],
        ["torch", str((env.get("torch") or {}).get("version") or pk.get("torch"))],
        ["onnxruntime", f"{ort.get('version') or pk.get('onnxruntime')} ({', '.join(ort.get('providers') or [])})"],
        ["openvino", (f"{ov.get('version') or pk.get('openvino')}; CPU default inference precision: "
                      f"{ov.get('cpu_default_inference_precision', '?')}; "
                      f"capabilities: {', '.join(ov.get('cpu_capabilities') or [])}")],
        ["tensorrt", str((env.get("tensorrt") or {}).get("version") or pk.get("tensorrt") or "not installed")],
    ]
    jet = env.get("jetson")
    if jet:
        rows += [
            ["Jetson", f"{jet.get('model')} ({jet.get('l4t_release') or 'L4T ?'})"],
            ["power mode (nvpmodel -q)", str(jet.get("nvpmodel") or "unreadable")],
            ["clocks at maximum (jetson_clocks)", {True: "yes", False: "no", None: "unreadable"}[jet.get("clocks_at_max")]],
        ]
    return rows


def _gpu(gpu: Mapping[str, Any] | None) -> str:
    if not gpu:
        return "none"
    return f"{gpu.get('name')} x{gpu.get('count')} ({gpu.get('memory_gib')} GiB, CUDA {gpu.get('cuda')}, cuDNN {gpu.get('cudnn')})"


def render_markdown(report: BenchReport, *, chart: str | None = "latency.png", heading: str = "#") -> str:
    """The report as Markdown: per (batch, threads) a latency table and a load/size/memory table,
    what was not measured and why, the method, and the machine's fingerprint."""
    cfg = report.config
    h2 = heading + "#"
    loop = f"{cfg.iters} timed calls" if cfg.iters is not None else f"timed calls for {cfg.seconds:g} s"
    where = "each in a fresh process" if cfg.isolate else "all in one process"
    inter = report.max_interference()
    intro = (
        f"Measured {report.created}: {cfg.warmup} warm-up calls, then {loop} of `infer` on {cfg.input_count} fixed "
        f"random inputs, {where}. Latency in ms per call (one batch); throughput in images/s with one call in "
        f"flight. Speed-ups are p50 ratios against the PyTorch eager student and teacher measured in the same run. "
        f"Other processes used at most {_pct(inter)} % of the CPU during any timed loop"
        f" (limit {100 * cfg.max_interference:g} %, re-measured up to {cfg.retries} times above it).\n"
    )
    parts = [f"{heading} {report.title}\n", intro]
    if chart:
        parts.append(f"![latency]({chart})\n")
    for key in configs(report):
        b, t = key
        lat = latency_rows(report, key)
        if not lat:
            continue
        parts += [
            f"{h2} Batch {b}, {t} thread{'s' if t != 1 else ''}\n",
            markdown_table(["model", "role", "backend", "precision (used)", "p50", "p90", "p99", "mean", "min",
                            "CV %", "img/s", "x student", "x teacher", "gate"], lat),
            "".join(f"- {v.split(': ', 1)[1]}\n" for v in int8_verdict(report) if v.startswith(f"b{b} t{t}:")),
        ]
        res_headers = ["model", "backend", "precision (used)", "load ms", "first inference ms", "size MiB", "peak RSS MiB"]
        if any(m.gpu_memory for m in report.measurements):
            res_headers.append("GPU MiB")
        if any(m.runtime_latency for m in report.measurements):
            res_headers.append("runtime-reported p50")
        if any(m.gpu_latency for m in report.measurements):
            res_headers.append("GPU p50 (CUDA events)")
        res_headers += ["other CPU %", "iterations", "attempts (p50s)"]
        parts += [markdown_table(res_headers, resource_rows(report, key))]
    missing = [m for m in report.measurements if not m.ok]
    if missing:
        parts.append(f"{h2} Not measured\n")
        parts.append("\n".join(f"- {m.target.name} (batch {m.batch_size}, {m.threads} threads): {m.status}: {m.message}"
                               for m in missing) + "\n")
    parts += [
        f"{h2} How to read this\n",
        (
            "- *load ms*: building the runtime session / compiling the model; *first inference ms*: the first call "
            "after it (lazy initialisation, `torch.compile`); both are paid once at start-up.\n"
            "- *peak RSS*: peak resident memory of the measuring process (Python, the one runtime it imported, "
            "the model, the loop); *size*: the artifact's files (PyTorch rows: the fp32 weights).\n"
            "- *precision (used)*: for OpenVINO the precision the compiled model really computes in, read back "
            "from the runtime (this CPU's default is in the table below); `int8 (+bf16)`: quantized layers in int8, "
            "the others in bf16.\n"
            "- *runtime-reported p50*: OpenVINO's own latency of the same calls (`InferRequest.latency`, what "
            "`benchmark_app` reports); the p50 columns are wall-clock from Python and include the binding "
            "(input, output copy).\n"
            "- *GPU p50 (CUDA events)*: time between CUDA events recorded on the runner's stream around each call "
            "(TensorRT: the engine alone; PyTorch on CUDA: input copy, kernels, output copy).\n"
            "- *other CPU %*: CPU time other processes used during the timed loop, from /proc/stat minus this "
            "process's own CPU time, as a share of wall time x CPUs.\n"
        ),
        f"{h2} Machine\n",
        markdown_table(["", ""], env_rows(report.env)),
    ]
    return "\n".join(parts)


def plot_latency(report: BenchReport, path: Path) -> bool:
    """Horizontal bars of p50 (whisker to p99, tick at p90) per target, one panel per (batch,
    threads), log scale, labelled with the speed-up over the eager student. ``False`` if nothing to plot
    (or matplotlib is absent, as on a device install without the ``train`` extra)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        log.info("no latency chart: matplotlib is not installed (pip install 'fopro-edge[train]')")
        return False

    panels = [(k, [m for m in report.measurements if m.key == k and m.ok]) for k in configs(report)]
    panels = [(k, ms) for k, ms in panels if ms]
    if not panels:
        return False
    rows = max(len(ms) for _, ms in panels)
    fig = Figure(figsize=(max(9.5, 7.5 * len(panels)), 1.4 + 0.3 * rows), layout="constrained")
    groups = list(dict.fromkeys(m.target.group for m in report.measurements))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, ((b, t), ms) in zip(axes, panels):
        # grouped by model (in measuring order, top to bottom), slowest first within a model
        ms = sorted(ms, key=lambda m: (-groups.index(m.target.group), -m.latency.p50_ms))  # type: ignore[union-attr]
        y = list(range(len(ms)))
        for yi in range(1, len(ms)):
            if ms[yi].target.group != ms[yi - 1].target.group:
                ax.axhline(yi - 0.5, color="black", linewidth=0.6)
        p50 = [m.latency.p50_ms for m in ms]  # type: ignore[union-attr]
        p90 = [m.latency.p90_ms for m in ms]  # type: ignore[union-attr]
        p99 = [m.latency.p99_ms for m in ms]  # type: ignore[union-attr]
        colours = [BACKEND_COLOURS.get(m.target.backend, "#333333") for m in ms]
        ax.barh(y, p50, color=colours, alpha=0.85)
        ax.errorbar(p50, y, xerr=[[0] * len(ms), [hi - lo for lo, hi in zip(p50, p99)]], fmt="none", ecolor="black",
                    elinewidth=0.8, capsize=2)
        ax.plot(p90, y, linestyle="none", marker="|", color="black", markersize=8)
        ax.set_yticks(y, [f"{m.target.name} · {m.precision_used}" for m in ms], fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("latency per call, ms (bar p50, tick p90, whisker p99; log scale)")
        ax.set_title(f"batch {b}, {t} thread{'s' if t != 1 else ''}", fontsize=9)
        for yi, m, v in zip(y, ms, p99):
            s = report.speedups(m)["vs_student"]
            if s is not None and m.target.role != "student":
                ax.text(v * 1.08, yi, f"{s:.1f}x", va="center", fontsize=7)
        lo, hi = min(p50), max(p99)
        ax.set_xlim(lo / 1.6, hi * 2.2)
        ax.grid(axis="x", which="both", linewidth=0.3, alpha=0.5)
    present = sorted({m.target.backend for _, ms in panels for m in ms})
    fig.legend(handles=[Patch(color=BACKEND_COLOURS.get(b, "#333333"), label=b) for b in present],
               fontsize=7, loc="outside lower center", ncols=len(present))
    fig.suptitle(f"{report.title}\nlabels: speed-up of p50 over the PyTorch eager student", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return True


def write_bench_report(report: BenchReport, out_dir: str | Path, *, stem: str = "bench",
                       chart_name: str = "latency.png") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``latency.png`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    atomic_write_json(paths["json"], report.to_dict())
    chart = out / chart_name
    has_chart = plot_latency(report, chart)
    if has_chart:
        paths["chart"] = chart
    atomic_write_text(paths["markdown"], render_markdown(report, chart=chart_name if has_chart else None))
    log.info("benchmark report written to %s", out)
    return paths


def int8_verdict(report: BenchReport) -> list[str]:
    """Per (batch, threads): each INT8 artifact against the fastest FP32 artifact of the same network in
    its own runtime (like with like: a runtime's INT8 kernels against its own FP32 ones), then the
    fastest artifact that passed its gate (what to deploy on this CPU)."""
    out = []
    for b, t in configs(report):
        arts = [m for m in report.measurements if m.ok and m.target.role == "artifact" and m.key == (b, t)]
        for m in arts:
            if m.target.precision != "int8":
                continue
            fp32 = min((f for f in arts if f.target.precision == "fp32" and f.target.backend == m.target.backend
                        and f.target.group == m.target.group), key=lambda f: f.latency.p50_ms, default=None)
            if fp32 is None:
                out.append(f"b{b} t{t}: {m.target.name}: no FP32 model of the same network was measured in "
                           f"{m.target.backend} to compare it with")
                continue
            ratio = fp32.latency.p50_ms / m.latency.p50_ms
            verdict = "faster" if ratio > 1.0 else "no faster"
            out.append(f"b{b} t{t}: {m.target.backend} INT8 is {verdict} than its FP32 on this CPU: {m.target.name} p50 "
                       f"{_ms(m.latency.p50_ms)} ms vs {fp32.target.name} {_ms(fp32.latency.p50_ms)} ms ({ratio:.2f}x)")
        passed = [m for m in arts if m.target.gate == "PASSED"]
        if passed:
            best = min(passed, key=lambda m: m.latency.p50_ms)
            out.append(f"b{b} t{t}: fastest artifact that passed its gate: {best.target.name} ({best.target.precision}, "
                       f"p50 {_ms(best.latency.p50_ms)} ms)")
    return out


def summary_lines(report: BenchReport) -> Sequence[str]:
    """One line per measured target at its first (batch, threads), then the INT8 verdict: for the CLI."""
    lines = []
    for m in report.measurements:
        if m.ok:
            assert m.latency is not None
            s = report.speedups(m)
            extra = f"  {_x(s['vs_student'])} vs student" if s["vs_student"] and m.target.role != "student" else ""
            lines.append(f"b{m.batch_size} t{m.threads}  {m.target.name:<44} {m.precision_used:<12} "
                         f"p50 {_ms(m.latency.p50_ms):>8} ms  p99 {_ms(m.latency.p99_ms):>8} ms{extra}")
        else:
            lines.append(f"b{m.batch_size} t{m.threads}  {m.target.name:<44} {m.status}: {m.message}")
    return lines + int8_verdict(report)
