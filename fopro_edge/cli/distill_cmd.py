"""``fopro-edge distill RECIPE``."""

from __future__ import annotations

import click


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", "out", type=click.Path(file_okay=False), default=None, help="Run directory (default: runs/<name>-<time>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any recipe field, e.g. --set distill.epochs=5.")
@click.option("--resume", is_flag=True, help="Continue the run in --out (or the newest run of this recipe) from its last checkpoint.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides runtime.device).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal only).")
def distill(recipe: str, out: str | None, overrides: tuple[str, ...], resume: bool, device: str | None, progress: bool | None) -> None:
    """Train a student with FoPro-KD (or an ablation, see distill.method) on a long-tailed dataset.

    Multi-GPU: torchrun --nproc_per_node=N -m fopro_edge distill RECIPE
    """
    import os

    from fopro_edge.config import device_problem, load_recipe
    from fopro_edge.distill.rundir import prepare_run_dir
    from fopro_edge.distill.trainer import distill as run_distill

    if device is not None and device_problem(device):
        raise click.BadParameter(device_problem(device), param_hint="'--device'")
    cfg = load_recipe(recipe, overrides)
    is_main = int(os.environ.get("RANK", "0")) == 0
    run_dir = prepare_run_dir(out, cfg.name, resume=resume) if is_main or out else None
    if run_dir is None:
        raise click.UsageError("with torchrun, pass --out RUN_DIR so every process writes to the same run")
    result = run_distill(cfg, run_dir, resume=resume, device=device, progress=progress)
    if result is None:  # a non-zero rank of a distributed run
        return
    m = result.test_metrics
    few = m["group_recall"].get("few")
    click.echo(f"run directory:     {result.run_dir}")
    click.echo(f"best checkpoint:   {result.best_checkpoint} (epoch {result.best_epoch})")
    click.echo(
        f"test:              balanced accuracy {m['balanced_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
        f"accuracy {m['accuracy']:.4f}  rare recall {_fmt(m['rare_recall'])}  few-group recall {_fmt(few)}"
    )
    for name, path in result.reports.items():
        click.echo(f"{name + ':':<19}{path}")
    skipped = m.get("skipped_images", {}).get("count", 0)
    if skipped:
        click.echo(f"skipped images:    {skipped} unreadable (data.bad_images: skip; all listed in splits.json)")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
