"""``fopro-edge verify``: re-run an export step's gate on the device, from its verification bundle."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("verify")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), required=True,
              help="The step's verify-bundle folder (written beside the artifact by export).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Where check.json and check.md go (default: ARTIFACT's folder/verify).")
@click.option("--threads", type=int, help="Runtime threads.")
@click.option("--inference-precision", type=click.Choice(["f32", "bf16", "f16", "auto"]),
              help="OpenVINO: run the IR with this precision (default: what the export checked).")
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON on stdout.")
def verify(artifact: Path, bundle_dir: Path, out_dir: Path | None, threads: int | None,
           inference_precision: str | None, json_out: bool) -> None:
    """Check ARTIFACT (.onnx, OpenVINO .xml, TensorRT .engine/.plan) on the images its export step was
    gated on, with the same thresholds: exit 0 when it passes, 5 when it fails. Needs the runtime,
    not torch."""
    from fopro_edge.deploy.bundle import raise_for_result, verify as run_verify, write_result

    result = run_verify(artifact, bundle_dir, threads=threads, inference_precision=inference_precision)
    out = out_dir or artifact.parent / "verify"
    write_result(result, out)
    click.echo(json.dumps(result.to_dict(), indent=1) if json_out else result.to_markdown())
    raise_for_result(result)
