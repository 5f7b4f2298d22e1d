"""The trained student as a timm model folder: loads with ``local-dir:``, same logits, labels kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fopro_edge.config import load_recipe
from fopro_edge.distill.checkpoint import load_student, save_checkpoint
from fopro_edge.errors import ConfigError
from fopro_edge.io import sha256_files
from fopro_edge.models.hf_export import save_student_for_timm

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke_synthetic.yaml"
CLASSES = ["polyp", "ulcer", "normal", "bleeding"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny test_resnet student (32 px, 4 classes) with non-trivial BatchNorm statistics."""
    from fopro_edge.models.student import build_student

    torch.manual_seed(0)
    recipe = load_recipe(SMOKE)
    student = build_student(recipe.student, len(CLASSES)).train()
    with torch.no_grad():
        for _ in range(3):
            student(torch.rand(8, 3, 32, 32))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {
        "student": student.eval().state_dict(), "recipe": recipe.to_dict(), "class_names": CLASSES,
        "rare_classes": ["bleeding"], "image_size": 32, "epoch": 1, "metrics": {},
    })
    return path


def _load(folder: Path):
    import timm

    return timm.create_model("local-dir:" + str(folder), pretrained=True).eval()


def test_timm_loads_the_student_with_the_same_logits_and_labels(checkpoint, tmp_path):
    from safetensors.torch import load_file

    out = save_student_for_timm(checkpoint, tmp_path / "run" / "student")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in out.parent.iterdir()] == ["student"]  # no temp folder left beside it
    student, info = load_student(checkpoint)
    assert set(load_file(str(out / "model.safetensors"))) == set(student.backbone.state_dict())  # no prefix, no heads

    model = _load(out)
    cfg = model.pretrained_cfg
    x01 = torch.rand(4, 3, 32, 32)
    mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        diff = (model((x01 - mean) / std) - student(x01)).abs().max().item()
    assert diff <= 1e-5

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == model.num_classes == len(CLASSES)
    assert config["label_names"] == cfg["label_names"] == CLASSES
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 32, 32] and pcfg["crop_pct"] == 1.0 and pcfg["interpolation"] == "bilinear"
    assert config["fopro_edge"]["rare_classes"] == ["bleeding"]
    assert config["fopro_edge"]["checkpoint_sha256"] == sha256_files([checkpoint]) == info.sha256


def test_timm_preprocessing_is_the_runs_eval_transform_then_normalisation(checkpoint, tmp_path):
    import numpy as np
    import timm.data
    from PIL import Image

    from fopro_edge.data import build_transform

    model = _load(save_student_for_timm(checkpoint, tmp_path / "student"))
    timm_tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    cfg = model.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(-1, 1, 1) for k in ("mean", "std"))
    ours = (build_transform(32, "none", training=False)(image) - mean) / std
    assert torch.allclose(timm_tf(image), ours, atol=1e-5)


def test_the_reloaded_model_saves_again_for_the_hub(checkpoint, tmp_path):
    """``push_to_hf_hub`` writes with ``save_for_hf``: labels and preprocessing survive a second save."""
    from timm.models import save_for_hf

    model = _load(save_student_for_timm(checkpoint, tmp_path / "student"))
    save_for_hf(model, str(tmp_path / "hub"), safe_serialization=True)
    again = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert again["pretrained_cfg"]["label_names"] == CLASSES
    assert again["pretrained_cfg"]["input_size"] == [3, 32, 32]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(_load(tmp_path / "hub")(x), model(x))


def test_a_failed_write_keeps_the_previous_folder(checkpoint, tmp_path, monkeypatch):
    import timm.models

    out = save_student_for_timm(checkpoint, tmp_path / "student")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(model, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(timm.models, "save_for_hf", disk_full)
    with pytest.raises(ConfigError, match=r"student: cannot write the timm model folder: No space left on device"):
        save_student_for_timm(checkpoint, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["student"]
    monkeypatch.undo()
    assert save_student_for_timm(checkpoint, out) == out  # an existing folder is replaced
    assert [p.name for p in tmp_path.iterdir()] == ["student"]


def test_a_missing_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint not found: .*nothing\.pt") as e:
        save_student_for_timm(tmp_path / "nothing.pt", tmp_path / "student")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "student").exists()
