"""``fopro-edge bench``."""

from __future__ import annotations

import click

from fopro_edge.errors import ConfigError


def parse_int_list(text: str | None, option: str, *, minimum: int = 1) -> tuple[int, ...]:
    """``"1,8"`` -> ``(1, 8)``; a one-line ConfigError naming ``option`` otherwise."""
    if text is None or not text.strip():
        return ()
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = int(part)
        except ValueError:
            raise ConfigError(f"{option}: '{part}' is not a whole number (e.g. {option} 1,8)") from None
        if v < minimum:
            raise ConfigError(f"{option}: {v} is below {minimum}")
        out.append(v)
    return tuple(dict.fromkeys(out))


def bench_options(f):
    """The measuring options shared by ``bench`` and ``run``."""
    for opt in reversed([
        click.option("--batch", "batch", default="1", show_default=True, metavar="N[,N...]", help="Batch sizes."),
        click.option("--threads", "threads", default=None, metavar="N[,N...]",
                     help="Runtime threads (default: every usable core)."),
        click.option("--warmup", type=click.IntRange(0), default=20, show_default=True, help="Untimed calls first."),
        click.option("--iters", type=click.IntRange(1), default=None, help="Timed calls [default: 200]."),
        click.option("--seconds", type=click.FloatRange(0, min_open=True), default=None,
                     help="Time calls for this long instead of --iters."),
        click.option("--max-interference", type=click.FloatRange(0, 100), default=5.0, show_default=True,
                     help="Re-measure when other processes used more than this percentage of the CPU."),
        click.option("--in-process", is_flag=True, help="Measure everything in this process (faster; peak memory then shared)."),
        click.option("--image-size", type=click.IntRange(8), default=None, help="Input size for artifacts with a dynamic one."),
    ]):
        f = opt(f)
    return f


def make_config(batch: str, threads: str | None, warmup: int, iters: int | None, seconds: float | None,
                max_interference: float, in_process: bool, image_size: int | None):
    from fopro_edge.bench import BenchConfig

    if iters is not None and seconds is not None:
        raise ConfigError("--iters/--seconds: give one of them, not both")
    batches = parse_int_list(batch, "--batch") or (1,)
    return BenchConfig(
        batch_sizes=batches, threads=parse_int_list(threads, "--threads"), warmup=warmup,
        iters=None if seconds is not None else (iters or 200), seconds=seconds,
        max_interference=max_interference / 100.0, isolate=not in_process, image_size=image_size,
    )


def parse_ov_precisions(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    allowed = ("f32", "bf16", "f16", "auto")
    vals = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    for v in vals:
        if v not in allowed:
            raise ConfigError(f"--ov-precision: '{v}' is not one of {', '.join(allowed)}")
    return vals or None


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory: its student and teacher (baselines) and every artifact under export/.")
@click.option("--artifact", "artifacts", multiple=True, type=click.Path(dir_okay=False),
              help="An .onnx, .xml (OpenVINO IR) or .engine file; repeat for several (default: all of the run's).")
@bench_options
@click.option("--ov-precision", "ov_precision", default=None, metavar="P[,P...]",
              help="OpenVINO inference precision(s): f32, bf16, f16, auto (the CPU's own choice) "
                   "[default: the export profile's, else f32].")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None, help="Output folder [default: RUN_DIR/bench].")
@click.option("--teacher/--no-teacher", default=True, show_default=True, help="Measure the teacher baseline.")
@click.option("--student/--no-student", default=True, show_default=True, help="Measure the PyTorch student baseline.")
@click.option("--compile", "compile_student", is_flag=True, help="Also measure the student under torch.compile.")
@click.option("--device", default="cpu", show_default=True, help="Device of the PyTorch baselines (cpu, cuda).")
@click.option("--json", "json_out", is_flag=True, help="Print bench.json's content on stdout instead of the summary.")
def bench(run_dir, artifacts, batch, threads, warmup, iters, seconds, max_interference, in_process, image_size,
          ov_precision, out, teacher, student, compile_student, device, json_out) -> None:
    """Latency percentiles, throughput, first-inference time, size and peak memory of exported
    artifacts, with the PyTorch student and teacher as baselines measured in the same run."""
    from fopro_edge.bench import bench as run_bench
    from fopro_edge.bench.report import summary_lines

    config = make_config(batch, threads, warmup, iters, seconds, max_interference, in_process, image_size)
    report = run_bench(run_dir, artifacts, config=config, out_dir=out, teacher=teacher, student=student,
                       compile_student=compile_student, openvino_precisions=parse_ov_precisions(ov_precision),
                       device=device)
    if json_out:
        import json

        click.echo(json.dumps(report.to_dict(), indent=1, default=str))
        return
    for line in summary_lines(report):
        click.echo(line)
    from pathlib import Path

    click.echo(f"report: {Path(out) if out else Path(run_dir) / 'bench'}/bench.md")
