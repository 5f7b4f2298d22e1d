"""Checkpoints: written atomically, read with ``weights_only=True`` (a file carrying code is refused)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fopro_edge.errors import ConfigError, TrainingError
from fopro_edge.io import atomic_torch_save, sha256_files

FORMAT = "fopro-edge-checkpoint/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: the file is complete or keeps its previous content (disk full, crash)."""
    try:
        atomic_torch_save(path, {"format": FORMAT, **state})
    except OSError as e:
        kept = "the previous checkpoint is kept" if Path(path).is_file() else "no checkpoint was written"
        raise TrainingError(
            f"{path}: cannot write checkpoint: {e.strerror or e}; {kept} (free space, then --resume)"
        ) from None


def load_checkpoint(path: str | Path, key: str = "checkpoint") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors of any kind mean "not a safe checkpoint"
        from fopro_edge.models.timm_factory import load_error_reason

        raise ConfigError(
            f"{key}: {path} is not a loadable fopro-edge checkpoint ({load_error_reason(e)}); "
            "only tensors and plain data are accepted"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{key}: {path} is not a fopro-edge checkpoint (no '{FORMAT}' format tag)")
    return state


@dataclass(frozen=True)
class StudentInfo:
    """What an exporter needs to know about a trained student."""

    model: str
    class_names: list[str]
    rare_classes: list[str]
    image_size: int
    checkpoint: str
    sha256: str
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # test-time logit adjustment the run's evaluation applied ({"tau", "class_prior"}; empty: none recorded).
    # The export bakes it into the classifier bias of every artifact.
    logit_adjust: dict[str, Any] = field(default_factory=dict)


def _mismatch(found: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """A one-line summary of how a state dict differs from a model's (None when it fits)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} is {list(getattr(found[k], 'shape', []))} in the file, {list(expected[k].shape)} in the model"
        for k in expected
        if k in found and getattr(found[k], "shape", None) != expected[k].shape
    ]
    parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in (("missing", missing), ("unexpected", unexpected)) if v]
    if shapes:
        parts.append(f"{len(shapes)} of other shape (e.g. {shapes[0]})")
    return "; ".join(parts) or None


def load_student(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the student of a checkpoint (eval mode) and return it with its :class:`StudentInfo`."""
    from fopro_edge.config import recipe_from_dict
    from fopro_edge.models.student import build_student

    state = load_checkpoint(path)
    recipe = recipe_from_dict(state["recipe"], source=f"{path} (embedded recipe)", check_paths=False, saved=True)
    student = build_student(
        type(recipe.student)(**{**recipe.student.__dict__, "pretrained": False, "weights": None}),
        num_classes=len(state["class_names"]),
    )
    weights = state.get("student")
    problem = _mismatch(weights, student.state_dict()) if isinstance(weights, dict) else "no 'student' weights"
    if problem:
        raise ConfigError(
            f"checkpoint: {path}: weights do not fit '{recipe.student.model}' with {len(state['class_names'])} classes: "
            f"{problem} (was it written for another student.model or class list?)"
        )
    student.load_state_dict(weights)
    info = StudentInfo(
        model=recipe.student.model,
        class_names=list(state["class_names"]),
        rare_classes=list(state["rare_classes"]),
        image_size=int(state["image_size"]),
        checkpoint=str(path),
        sha256=sha256_files([path]),
        recipe=state["recipe"],
        metrics=dict(state.get("metrics") or {}),
        logit_adjust=dict(state.get("logit_adjust") or {}),
    )
    return student.to(device).eval(), info
