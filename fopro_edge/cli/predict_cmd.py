"""``fopro-edge predict``: top-k classes of image files with a run's student or an exported artifact."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("predict")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Classes per image.")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path),
              help="A verify-bundle folder: class names and preprocessing for an artifact without them (an engine).")
@click.option("--threads", type=int, help="Runtime threads.")
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON on stdout.")
def predict(source: Path, images: tuple[Path, ...], top_k: int, bundle_dir: Path | None, threads: int | None,
            json_out: bool) -> None:
    """Classify IMAGES with SOURCE: a run directory or checkpoint (PyTorch), an ONNX model, an OpenVINO
    IR or a TensorRT engine. Images are read through the preprocessing contract the artifact carries."""
    from fopro_edge.deploy.predict import predict_images

    preds = predict_images(source, images, top_k=top_k, threads=threads, bundle=bundle_dir)
    if json_out:
        click.echo(json.dumps([p.to_dict() for p in preds], indent=1))
        return
    for p in preds:
        click.echo(f"{p.image}: " + ", ".join(f"{c} {100 * q:.1f} %" for c, q in p.top))
