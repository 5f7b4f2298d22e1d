"""``fopro-edge run RECIPE``: distill -> export -> gate -> bench -> one report."""

from __future__ import annotations

import click

from fopro_edge.cli.bench_cmd import bench_options, make_config


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", "out", type=click.Path(file_okay=False), default=None, help="Run directory (default: runs/<name>-<time>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any recipe field, e.g. --set distill.epochs=5.")
@click.option("--target", "targets", multiple=True, metavar="TARGET",
              help="Export target (repeatable) instead of the recipe's export section: onnx, onnxruntime, openvino, tensorrt.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint, then export and bench.")
@click.option("--device", default=None, help="Training device: auto, cpu, cuda or cuda:N.")
@click.option("--no-bench", "no_bench", is_flag=True, help="Stop after the export steps.")
@bench_options
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal only).")
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON on stdout instead of the summary.")
def run(recipe, out, overrides, targets, resume, device, no_bench, batch, threads, warmup, iters, seconds,
        max_interference, in_process, image_size, progress, json_out) -> None:
    """Distil, export to every target the recipe lists (default: onnxruntime and openvino), gate,
    benchmark, and write RUN_DIR/report.md. Exit code 5 if a gate failed (the report is written)."""
    from fopro_edge.workflow import run_recipe

    config = make_config(batch, threads, warmup, iters, seconds, max_interference, in_process, image_size)
    result = run_recipe(recipe, out=out, overrides=overrides, targets=targets, bench_config=config, skip_bench=no_bench,
                        resume=resume, device=device, progress=progress)
    if json_out:
        import json

        click.echo(json.dumps(result.to_dict(), indent=1, default=str))
        result.raise_for_gates()
        return
    m = result.test_metrics
    click.echo(f"run directory: {result.run_dir}")
    click.echo(f"test: balanced accuracy {m['balanced_accuracy']:.4f}, rare recall "
               f"{'n/a' if m.get('rare_recall') is None else format(m['rare_recall'], '.4f')}")
    for e in result.exports:
        final = e.final
        click.echo(f"export {e.target} ({e.precision}): {e.status}"
                   + (f" -> {final.artifact.path}" if final and final.artifact else ""))
    for s in result.skipped:
        click.echo(f"export {s.target}: skipped ({s.reason})")
    if result.bench is not None:
        from fopro_edge.bench.report import summary_lines

        for line in summary_lines(result.bench):
            click.echo(line)
    click.echo(f"report: {result.report}")
    result.raise_for_gates()
