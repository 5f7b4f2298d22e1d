"""Classify image files with a run's student or any exported artifact, read through the
preprocessing contract the artifact carries (a TensorRT engine takes it from its step's bundle)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fopro_edge.errors import ConfigError


@dataclass(frozen=True)
class Prediction:
    image: str
    top: tuple[tuple[str, float], ...]  # (class name, softmax probability), best first

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "top": [{"class": c, "probability": p} for c, p in self.top]}


def _artifact_facts(path: Path, bundle: Path | None) -> tuple[list[str], dict[str, Any]]:
    """Class names and preprocessing contract: from the bundle if given, else from the artifact."""
    from fopro_edge.deploy.contract import contract_of

    if bundle is not None:
        from fopro_edge.deploy.bundle import read_bundle

        m = read_bundle(bundle).manifest
        return list(m["class_names"]), dict(m["preprocessing"])
    contract = contract_of(path)
    if path.suffix.lower() == ".onnx":
        from fopro_edge.deploy.onnx_backend import read_metadata

        names = read_metadata(path).get("fopro_edge.class_names")
    elif path.suffix.lower() == ".xml":
        from fopro_edge.deploy.openvino_backend import read_rt_info

        names = read_rt_info(path).get("class_names")
    else:
        names = None
    if contract is None or names is None:
        raise ConfigError(f"{path}: carries no class names or preprocessing contract; give --bundle (the "
                          "verify-bundle folder of the step it was made from)")
    return json.loads(names), contract


def predict_images(source: str | Path, images: Sequence[str | Path], *, top_k: int = 3, threads: int | None = None,
                   bundle: str | Path | None = None, batch_size: int = 16) -> list[Prediction]:
    """Top-``top_k`` classes per image. ``source``: a run directory or checkpoint (PyTorch), or an
    artifact file (.onnx, OpenVINO .xml, TensorRT .engine/.plan)."""
    from fopro_edge.deploy import backends
    from fopro_edge.deploy.contract import prepare_image
    from fopro_edge.deploy.runners import predict

    path = Path(source)
    if not path.exists():
        raise ConfigError(f"SOURCE: not found: {path}")
    if top_k < 1:
        raise ConfigError(f"--top-k: must be >= 1, got {top_k}")
    entry = backends.for_artifact(path) if path.is_file() else None
    if entry is not None:
        names, contract = _artifact_facts(path, Path(bundle) if bundle else None)
        runner = entry.open_runner(path, precision=entry.read_precision(path), threads=threads,
                                   options={"inference_precision": "f32"})
    elif path.is_dir() or path.suffix == ".pt":
        from fopro_edge.deploy.contract import preprocessing_contract
        from fopro_edge.deploy.pipeline import resolve_source
        from fopro_edge.deploy.runners import TorchRunner
        from fopro_edge.distill.checkpoint import load_student

        from fopro_edge.deploy.pipeline import with_logit_adjust

        student, info = load_student(resolve_source(path)[0])
        student = with_logit_adjust(student, info)
        names = list(info.class_names)
        contract = preprocessing_contract(info.image_size, student.mean.flatten().tolist(), student.std.flatten().tolist())
        runner = TorchRunner(student, threads=threads)
    else:
        raise ConfigError(f"SOURCE: {path}: expected a run directory, a .pt checkpoint or an artifact "
                          f"({', '.join(backends.artifact_suffixes())})")
    x = np.stack([prepare_image(p, contract) for p in images]) if images else np.zeros((0, 3, 1, 1), np.float32)
    with runner:
        logits = predict(runner, [x[i:i + batch_size] for i in range(0, len(x), batch_size)], batch_size)
    if logits.shape[1:] != (len(names),):
        raise ConfigError(f"{path}: gives {logits.shape[1:]} outputs, its class list has {len(names)} names")
    from fopro_edge.deploy.gate import softmax

    probs = softmax(logits)
    k = min(top_k, len(names))
    out = []
    for img, p in zip(images, probs, strict=True):
        order = np.argsort(-p, kind="stable")[:k]
        out.append(Prediction(str(img), tuple((names[i], round(float(p[i]), 6)) for i in order)))
    return out
