"""``fopro-edge probe RECIPE``: a teacher check before distilling."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any recipe field, e.g. --set teacher.image_size=224.")
@click.option("--student-epochs", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Epochs of the quick bsm student the teacher is compared with.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: runs/<name>-probe-<time>).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides runtime.device).")
@click.option("--json", "json_out", is_flag=True, help="Print the numbers as JSON.")
def probe(recipe: str, overrides: tuple[str, ...], student_epochs: int, out: Path | None, device: str | None, json_out: bool) -> None:
    """Does the teacher know more about the rare classes than a student learns alone?

    Fits a class-balanced linear probe on the frozen teacher's features (train -> val), trains a
    quick bsm student of the same recipe, compares their val balanced accuracy and few-group recall
    and prints a verdict. Writes probe.json and probe.md in --out. Exit 0 whatever the verdict.
    """
    from fopro_edge.config import device_problem, load_recipe
    from fopro_edge.distill.teacher_check import teacher_check

    if device is not None and device_problem(device):
        raise click.BadParameter(device_problem(device), param_hint="'--device'")
    cfg = load_recipe(recipe, overrides)
    out = out or Path("runs") / f"{cfg.name}-probe-{time.strftime('%Y%m%d-%H%M%S')}"
    report = teacher_check(cfg, out, student_epochs=student_epochs, device=device)
    if json_out:
        click.echo(json.dumps(report, indent=2))
        return
    p, s = report["teacher_probe"], report["student"]
    click.echo(f"teacher probe:  balanced accuracy {p['balanced_accuracy']:.4f}  few-group recall {_fmt(p['few_recall'])}"
               f"  ({report['teacher']['model']}, {p['seeds']} resamples, val)")
    click.echo(f"quick student:  balanced accuracy {s['balanced_accuracy']:.4f}  few-group recall {_fmt(s['few_recall'])}"
               f"  ({s['method']}, {s['epochs']} epochs, val)")
    click.echo(f"verdict:        {report['verdict']}")
    click.echo(f"report:         {out / 'probe.md'}")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
