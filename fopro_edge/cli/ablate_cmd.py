"""``fopro-edge ablate RECIPE``."""

from __future__ import annotations

import click


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))
@click.option("--methods", default="ce,bsm,ekd,ekd+fpg,fopro", show_default=True, metavar="M1,M2,...",
              help="distill.method of each rung.")
@click.option("--seeds", default="0,1,2", show_default=True, metavar="S1,S2,...", help="Seeds (the recipe's seed) of every method.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Ladder folder: one run per cell in OUT/<method>-seed<seed>/, and the report (default: runs/<name>-ablation).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field in every cell, e.g. --set distill.epochs=5.")
@click.option("--baseline", default="bsm", show_default=True, help="The method every other one is compared with.")
@click.option("--report-only", is_flag=True, help="Aggregate the finished cells; train nothing (exit 2 naming any cell not finished).")
@click.option("--resamples", default=2000, show_default=True, type=click.IntRange(min=0),
              help="Bootstrap resamples, over seeds × test images and over test images only (0: paired t only).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides runtime.device).")
@click.option("--progress/--no-progress", default=None, help="Progress bars of the runs (default: on a terminal only).")
@click.option("--json", "json_out", is_flag=True, help="Print ablation.json's content on stdout instead of the Markdown report.")
def ablate(recipe: str, methods: str, seeds: str, out: str | None, overrides: tuple[str, ...], baseline: str,
           report_only: bool, resamples: int, device: str | None, progress: bool | None, json_out: bool) -> None:
    """Compare methods over seeds: one full distill run per (method, seed) cell, then mean ± sd per method
    and paired differences against --baseline with 95 % intervals over seeds (paired t, which alone
    resolves a difference, and a two-level bootstrap over seeds and test images) and over test images only.

    Resumable: a finished cell (metrics/metrics.json) is reused, an unfinished one continued. Writes
    OUT/ablation.json and OUT/ablation.md.
    """
    from fopro_edge.ablate.ladder import make_plan, run_ladder
    from fopro_edge.ablate.report import render_markdown, write_report
    from fopro_edge.ablate.summary import aggregate
    from fopro_edge.config import device_problem

    if device is not None and device_problem(device):
        raise click.BadParameter(device_problem(device), param_hint="'--device'")
    plan = make_plan(recipe, methods=methods, seeds=seeds, out=out, baseline=baseline, overrides=overrides,
                     check_recipes=not report_only)
    statuses = None
    if not report_only:
        statuses = run_ladder(plan, device=device, progress=progress)
    report = aggregate(plan, statuses=statuses, resamples=resamples)
    paths = write_report(report)
    if json_out:
        import json

        click.echo(json.dumps(report.to_dict(), indent=1, default=str))
        return
    click.echo(render_markdown(report))
    click.echo(f"report: {paths['markdown']} (and {paths['json'].name})")
