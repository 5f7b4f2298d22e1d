"""``fopro-edge export``: parse, call :func:`fopro_edge.deploy.pipeline.export`, print the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fopro_edge.deploy import backends


class TargetType(click.ParamType):
    """A registered export target (the backend registry decides, so plug-in backends are accepted)."""

    name = "target"

    def get_metavar(self, param, ctx=None) -> str:  # noqa: ARG002 - click's signature
        return "[" + "|".join(backends.names()) + "]"

    def get_missing_message(self, param, ctx=None) -> str:  # noqa: ARG002 - click's signature
        return "Choose from: " + ", ".join(backends.names())

    def convert(self, value, param, ctx):
        if value not in backends.names():
            self.fail(f"'{value}' is not one of {', '.join(map(repr, backends.names()))}.", param, ctx)
        return value


@click.command("export")
@click.option("--target", type=TargetType(), required=True, help="Runtime to export for.")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="Run directory (uses checkpoints/best.pt).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="A checkpoint file instead of --run.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="Default: the profile's.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Default: RUN_DIR/export/<target>/.")
@click.option("--profile", "profile_file", type=click.Path(path_type=Path),
              help="Profile YAML instead of export/<target>.yaml.")
@click.option("--split", type=click.Choice(["val", "test"]), help="Check split of the gate (default: val).")
@click.option("--max-bacc-drop", type=float, help="Gate: max balanced-accuracy drop (absolute, 0-1).")
@click.option("--max-rare-clear-losses", "max_rare_clear_losses", type=int,
              help="Gate: max rare-class images the student gets clearly right (not a close call) that go wrong.")
@click.option("--max-rare-recall-drop", type=float, help="Gate: max recall drop of any rare class (0-1).")
@click.option("--calibration-size", type=int, help="INT8: calibration images (class-stratified, rare classes in).")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]),
              help="INT8 (onnxruntime, tensorrt): calibration method.")
@click.option("--calibration-file", type=click.Path(path_type=Path),
              help="INT8: reuse the images of an earlier calibration.json.")
@click.option("--no-repair", is_flag=True, help="INT8: do not try to repair a failed gate.")
@click.option("--build-engine", is_flag=True, help="TensorRT: build the engine here; a missing GPU is an error.")
@click.option("--threads", type=int, help="Runtime threads for checks and timing.")
@click.option("--json", "json_out", is_flag=True, help="Print export.json's content on stdout instead of the summary.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any profile key, e.g. --set nncf.preset=mixed (repeatable).")
def export(
    target: str, run_dir: Path | None, checkpoint: Path | None, precision: str | None, out_dir: Path | None,
    profile_file: Path | None, split: str | None, max_bacc_drop: float | None, max_rare_clear_losses: int | None,
    max_rare_recall_drop: float | None, calibration_size: int | None, calibration_method: str | None,
    calibration_file: Path | None, no_repair: bool, build_engine: bool, threads: int | None, json_out: bool,
    sets: tuple[str, ...],
) -> None:
    """Export a trained student and check it with the rare-class gate after every step.

    Exit codes: 0 all gates passed, 5 a gate failed (artifact kept, marked FAILED), 6 a step could not
    be run here (UNVERIFIED, e.g. a TensorRT engine without a GPU), 2 usage error, 3 missing runtime package.
    """
    from fopro_edge.deploy.pipeline import export as run_export, format_summary
    from fopro_edge.deploy.profiles import deep_merge, overrides_to_dict
    from fopro_edge.errors import ConfigError

    from fopro_edge.deploy.profiles import precisions

    if precision and precision not in precisions(target):
        raise ConfigError(
            f"--precision: '{precision}' is not available for --target {target} (choose one of: {', '.join(precisions(target))})"
        )
    if (run_dir is None) == (checkpoint is None):
        raise ConfigError("--run/--checkpoint: give exactly one (a run directory, or a checkpoint file)")
    if calibration_method and target == "openvino":
        raise ConfigError("--calibration-method: applies to onnxruntime and tensorrt; for openvino use "
                          "--set nncf.range_estimator=minmax|mean_minmax|mean_quantile")
    if build_engine and target != "tensorrt":
        raise ConfigError("--build-engine: only applies to --target tensorrt")
    layer: dict[str, Any] = {}
    flat = {
        ("check", "split"): split, ("check", "max_balanced_accuracy_drop"): max_bacc_drop,
        ("check", "max_rare_clear_losses"): max_rare_clear_losses, ("check", "max_rare_recall_drop"): max_rare_recall_drop,
        ("calibration", "size"): calibration_size, ("calibration", "method"): calibration_method,
        ("calibration", "indices_file"): str(calibration_file) if calibration_file else None,
        ("repair", "enabled"): False if no_repair else None, ("build_engine",): True if build_engine else None,
        ("threads",): threads,
    }
    for keys, value in flat.items():
        if value is not None:
            node = layer
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
    layer = deep_merge(layer, overrides_to_dict(sets))
    result = run_export(run_dir or checkpoint, target, precision, out_dir=out_dir, profile_file=profile_file,
                        overrides=layer)
    if json_out:
        import json

        click.echo(json.dumps(result.to_dict(), indent=1, default=str))
        result.raise_for_gate()
        return
    click.echo(f"fopro-edge export --target {target} ({result.precision}) -> {result.out_dir}")
    click.echo(format_summary(result))
    for note in result.notes:
        click.echo(f"note: {note}")
    final = result.final
    if final is not None and final.gate is not None:
        g = final.gate
        click.echo(f"final artifact: {final.artifact.path} ({final.artifact.size_bytes / 2**20:.2f} MiB), "
                   f"parity max|dlogit| {g.parity.max_abs_logit_diff:.3g}, "
                   f"runtime {g.runtime} {g.runtime_info.get('inference_precision', g.precision)}")
    click.echo(f"report: {result.out_dir / 'report.md'}")
    result.raise_for_gate()
