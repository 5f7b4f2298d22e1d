"""The trained student as a plain timm model folder (``model.safetensors`` + ``config.json``).

``timm.create_model("local-dir:RUN/student", pretrained=True)`` rebuilds it, and the folder is what
``timm.models.push_to_hf_hub`` uploads. Unlike the exported graphs, this model takes *normalised*
input: ``pretrained_cfg`` holds the mean/std the student applied inside, so timm's data config and
transform reproduce the run's eval preprocessing.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fopro_edge.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from fopro_edge.distill.checkpoint import StudentInfo
    from fopro_edge.models.student import Student

FORMAT = "fopro-edge-timm/1"


def save_student_for_timm(source: str | Path | tuple[Student, StudentInfo], out_dir: str | Path) -> Path:
    """Write the student of a checkpoint (or a loaded ``(student, info)``) to ``out_dir`` for timm.

    Only the timm classifier is written (no ``backbone.`` prefix, no training-only heads). The folder
    is built beside ``out_dir`` and renamed into place: it is complete, or the previous one is kept.
    """
    from fopro_edge.distill.checkpoint import load_student

    student, info = load_student(source) if isinstance(source, (str, Path)) else source
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as e:
        raise ConfigError(f"{out_dir}: cannot create the timm model folder: {e.strerror or e}") from None
    try:
        _write(student, info, tmp)
        _fsync_files(tmp)
        _replace_dir(tmp, out_dir)
    except OSError as e:
        raise ConfigError(f"{out_dir}: cannot write the timm model folder: {e.strerror or e}") from None
    except ValueError as e:  # timm refuses the model's input or arguments as exported
        raise ConfigError(f"{out_dir}: timm cannot describe the student '{info.model}': {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def plain_classifier(student: Student) -> nn.Module:
    """A CPU copy of the student's timm classifier in eval mode, with contiguous (not channels-last) weights."""
    import torch

    return copy.deepcopy(student.backbone).to("cpu", memory_format=torch.contiguous_format).eval()


def timm_configs(student: Student, info: StudentInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model_config`` and ``data_config`` for timm's ``save_for_hf``/``push_to_hf_hub``."""
    from fopro_edge.data.transforms import EVAL_CROP_PCT, INTERPOLATION

    data_config = {
        "img_size": int(info.image_size),
        "mean": [float(v) for v in student.mean.flatten()],
        "std": [float(v) for v in student.std.flatten()],
        "crop_pct": EVAL_CROP_PCT,
        "crop_mode": "center",
        "interpolation": INTERPOLATION,
    }
    model_config = {
        "label_names": list(info.class_names),
        # the source weights' own labels (e.g. ImageNet's) do not describe this classifier
        "pretrained_cfg": {"label_names": None, "label_descriptions": None},
        "fopro_edge": {
            "format": FORMAT,
            "student_model": info.model,
            "rare_classes": list(info.rare_classes),
            "checkpoint": Path(info.checkpoint).name,
            "checkpoint_sha256": info.sha256,
        },
    }
    return model_config, data_config


def _write(student: Student, info: StudentInfo, folder: Path) -> None:
    from timm.models import save_for_hf

    model_config, data_config = timm_configs(student, info)
    save_for_hf(plain_classifier(student), str(folder), model_config=model_config, data_config=data_config,
                safe_serialization=True)


def _fsync_files(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an earlier ``target`` is moved aside first, removed last."""
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, aside / target.name)
    try:
        os.replace(new, target)
    except OSError:
        if aside is not None:
            os.replace(aside / target.name, target)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
