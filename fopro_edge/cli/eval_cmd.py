"""``fopro-edge eval``: an artifact (or the student) on a split, per class, against the student."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("eval")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="Run directory (uses checkpoints/best.pt).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="A checkpoint file instead of --run.")
@click.option("--artifact", type=click.Path(path_type=Path), help=".onnx, OpenVINO .xml or TensorRT .engine.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True)
@click.option("--inference-precision", type=click.Choice(["f32", "bf16", "f16", "auto"]), default="f32",
              show_default=True, help="OpenVINO: the precision to run the IR with.")
@click.option("--threads", type=int, help="Runtime threads.")
@click.option("--gate", "apply_gate", is_flag=True, help="Exit 5 when the default gate thresholds fail.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the report as JSON.")
def evaluate(run_dir: Path | None, checkpoint: Path | None, artifact: Path | None, split: str,
             inference_precision: str, threads: int | None, apply_gate: bool, json_out: Path | None) -> None:
    """Per-class recall of an exported artifact next to the PyTorch student's, image by image
    (flips, rare classes), on the validation or test split of the run's data."""
    from fopro_edge.deploy.evaluate import evaluate as run_eval
    from fopro_edge.errors import ConfigError, GateFailedError
    from fopro_edge.io import atomic_write_json

    if (run_dir is None) == (checkpoint is None):
        raise ConfigError("--run/--checkpoint: give exactly one (a run directory, or a checkpoint file)")
    report = run_eval(run_dir or checkpoint, artifact, split=split, inference_precision=inference_precision,
                      threads=threads)
    click.echo(report.to_markdown())
    if json_out:
        atomic_write_json(json_out, report.to_dict())
    if apply_gate and not report.passed:
        raise GateFailedError(f"gate FAILED for {report.artifact}: failing classes: "
                              f"{', '.join(report.failing_classes) or '(a global threshold)'}; {report.reasons[0]}")
