"""Export layer, unit level: profiles, the gate, the no-FFT assertion, calibration sets, TensorRT
QDQ rules, the trtexec command and the repair plan. No trained model needed."""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fopro_edge.deploy import profiles as P
from fopro_edge.deploy.gate import evaluate_gate, rare_class_score, true_class_margins
from fopro_edge.deploy.repair import plan_repairs
from fopro_edge.errors import ConfigError

NAMES = ["head", "mid", "rare-a", "rare-b"]
RARE = ["rare-a", "rare-b"]




# --------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("target", P.targets(), ids=lambda t: t.replace("tensorrt", "trt"))  # "tensorrt" as an id would skip it (conftest)
def test_every_shipped_profile_loads_and_documents_the_defaults(target, repo):
    path = repo / "export" / f"{target}.yaml"
    assert path.is_file(), f"missing profile {path}"
    text = path.read_text()
    assert text.lstrip().startswith("#"), "a profile starts with a comment saying what it is for"
    profile = P.load_profile(target, profile_file=path)
    assert profile == P.profile_type(target)(), "export/<target>.yaml must state exactly the built-in defaults"
    assert profile.opset >= 17


def test_profile_errors_name_file_key_and_fix(tmp_path):
    bad = tmp_path / "ov.yaml"
    bad.write_text("nncf:\n  presett: mixed\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: nncf.presett: unknown key \(did you mean 'preset'\?\)$"):
        P.load_profile("openvino", profile_file=bad)
    with pytest.raises(ConfigError, match=r"^r.yaml: export.openvin: unknown target \(did you mean 'openvino'\?\)"):
        P.load_profile("openvino", recipe_export={"openvin": {}}, recipe_source="r.yaml")
    with pytest.raises(ConfigError, match=r"^r.yaml: export.onnxruntime.check.max_rare_recall_drop: 2.0 is out of range"):
        P.load_profile("onnxruntime", recipe_export={"onnxruntime": {"check": {"max_rare_recall_drop": 2}}},
                       recipe_source="r.yaml")
    with pytest.raises(ConfigError, match=r"^command line: precision: 'fp16' is not allowed"):
        P.load_profile("onnxruntime", overrides={"precision": "fp16"})
    with pytest.raises(ConfigError, match=r"repair.float_layers: layer counts must be >= 1"):
        P.load_profile("onnxruntime", overrides=P.overrides_to_dict(["repair.float_layers=[0, 2]"]))
    with pytest.raises(ConfigError, match=r"--target: unknown target 'onnxrt'"):
        P.check_target("onnxrt")


def test_profile_layers_merge_in_order(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("calibration: {size: 100, method: entropy}\ncheck: {max_rare_clear_losses: 3}\n")
    p = P.load_profile(
        "onnxruntime",
        profile_file=f,
        recipe_export={"onnxruntime": {"calibration": {"size": 50}}, "openvino": {"precision": "fp16"}},
        overrides=P.overrides_to_dict(["check.max_rare_clear_losses=0", "quantization.activation_type=s8"]),
    )
    assert p.calibration.size == 50 and p.calibration.method == "entropy"  # recipe over file, file kept the rest
    assert p.check.max_rare_clear_losses == 0  # command line over file
    assert p.quantization.activation_type == "s8"
    assert p.check.max_balanced_accuracy_drop == P.GateConfig().max_balanced_accuracy_drop  # default kept


# --------------------------------------------------------------------------- gate


def _logits(preds, k=4):
    out = np.zeros((len(preds), k), np.float32)
    out[np.arange(len(preds)), preds] = 5.0
    return out


def test_gate_counts_flips_per_class_and_separately_for_rare():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3])
    ref = np.array([0, 0, 1, 1, 1, 2, 2, 3, 0])  # one head mistake, one rare-b mistake
    new = np.array([0, 1, 0, 1, 1, 2, 0, 3, 3])  # head r->w and w->r, rare-a r->w, rare-b w->r
    r = evaluate_gate(labels, _logits(ref), _logits(new), NAMES, RARE, P.GateConfig(max_mean_kl=None))
    assert (r.flips.total, r.flips.right_to_wrong, r.flips.wrong_to_right) == (4, 2, 2)
    assert (r.flips.rare_total, r.flips.rare_right_to_wrong, r.flips.rare_wrong_to_right) == (2, 1, 1)
    rows = {c.name: c for c in r.classes}
    assert rows["rare-a"].right_to_wrong == 1 and rows["rare-a"].recall == 0.5 and rows["rare-a"].delta == -0.5
    assert rows["rare-b"].wrong_to_right == 1 and rows["rare-b"].recall == 1.0
    assert rows["head"].reference_recall == pytest.approx(2 / 3) and rows["head"].rare is False
    assert not r.passed and r.failing_classes == ("rare-a",)
    assert any("right -> wrong" in x for x in r.reasons) and any("'rare-a': recall 1.000 -> 0.500" in x for x in r.reasons)
    md = r.to_markdown()
    assert "| rare-a | yes | 2 | 100.0 | 50.0 | -50.0 | [-100.0, +0.0] | 1 | 0 | 1.000 | FAIL |" in md
    d = json.loads(json.dumps(r.to_dict()))
    assert d["status"] == "FAILED" and d["classes"][2]["delta"] == -0.5


def test_gate_passes_identical_predictions_and_checks_fp32_parity():
    labels = np.array([0, 1, 2, 3])
    ref = _logits(labels)
    ok = evaluate_gate(labels, ref, ref + 1e-4, NAMES, RARE, P.GateConfig(), check_parity=True)
    assert ok.passed and ok.parity.max_abs_logit_diff == pytest.approx(1e-4, rel=1e-2)
    drift = evaluate_gate(labels, ref, ref + 0.5, NAMES, RARE, P.GateConfig(), check_parity=True)
    assert not drift.passed and "max |logit diff|" in drift.reasons[0] and drift.failing_classes == ()
    assert evaluate_gate(labels, ref, ref + 0.5, NAMES, RARE, P.GateConfig()).passed  # parity off for int8 steps


def test_gate_balanced_accuracy_drop_names_the_classes_that_fell():
    labels = np.repeat(np.arange(4), 10)
    new = labels.copy()
    new[:3] = 1  # three head images lost
    r = evaluate_gate(labels, _logits(labels), _logits(new), NAMES, RARE,
                      P.GateConfig(max_balanced_accuracy_drop=0.05))
    assert not r.passed and r.failing_classes == ("head",)
    assert r.balanced_accuracy_drop == pytest.approx(0.075)


def test_a_failed_confirmation_is_named_in_the_error_and_the_summary(tmp_path):
    from fopro_edge.deploy.pipeline import ExportResult, StepResult, format_summary
    from fopro_edge.errors import GateFailedError

    labels = np.repeat(np.arange(4), 10)
    lost = labels.copy()
    lost[:3] = 1  # three head images lost: balanced accuracy -7.5 points
    check = P.GateConfig(max_balanced_accuracy_drop=0.05)
    selection = evaluate_gate(labels, _logits(labels), _logits(labels), NAMES, RARE, check, split="val")
    confirmation = evaluate_gate(labels, _logits(labels), _logits(lost), NAMES, RARE, check, split="test")
    step = StepResult("int8", "ONNX Runtime INT8", "FAILED", tmp_path, gate=selection, confirmation=confirmation)
    result = ExportResult("onnxruntime", "int8", tmp_path, tmp_path / "best.pt", "0" * 64, (step,), {})
    with pytest.raises(GateFailedError) as e:
        result.raise_for_gate()
    assert "at step 'int8' (ONNX Runtime INT8) on its confirmation (test split, passed on val): failing classes: head" in str(e.value)
    assert "--set quantization.method=qat" in str(e.value)
    table = format_summary(result)
    assert [ln.split()[:2] + ln.split()[-1:] for ln in table.splitlines()[2:]] == [["int8", "(val)", "PASS"], ["int8", "(test)", "FAIL"]]
    one = replace(step, confirmation=None, gate=confirmation)  # failed on the selection split: no hint
    with pytest.raises(GateFailedError) as e:
        replace(result, steps=(one,)).raise_for_gate()
    assert "on its confirmation" not in str(e.value) and "quantization.method" not in str(e.value)


def test_gate_class_without_images_is_unchecked_and_a_missing_rare_class_fails():
    labels = np.array([0, 1, 2, 2])
    r = evaluate_gate(labels, _logits(labels), _logits(labels), NAMES, RARE, P.GateConfig(allow_missing_rare=True))
    assert r.passed and r.unchecked_classes == ("rare-b",)
    assert r.classes[3].recall is None and "not checked" in r.to_markdown()
    strict = evaluate_gate(labels, _logits(labels), _logits(labels), NAMES, RARE, P.GateConfig())
    assert not strict.passed and strict.failing_classes == ("rare-b",) and "holds no image" in strict.reasons[0]


def test_gate_fails_a_clear_rare_loss_and_judges_rare_close_calls_by_margin_erosion():
    labels = np.repeat(np.arange(4), 10)
    rare = labels >= 2
    ref = _logits(labels)
    ref[20, 0] = 4.8  # rare-a image 20: right by a softmax gap of about 0.1 (a close call)
    ref[21, 0] = 2.0  # rare-a image 21: right by a gap of about 0.89 (clear)
    ref[30, 0] = 5.2  # rare-b image 30: wrong ('head') by a gap of about 0.1 (a close call)
    new = ref.copy()
    new[20, 0] = new[21, 0] = 6.0  # both rare-a images now predicted 'head'
    strict = P.GateConfig(max_rare_recall_drop=0.2, max_balanced_accuracy_drop=0.1, max_flip_rate=0.1, max_mean_kl=None)
    r = evaluate_gate(labels, ref, new, NAMES, RARE, strict)
    f = r.flips
    # 18 of the 20 rare images keep their margin: no erosion, so only the clear loss fails the gate
    assert r.rare_margin_shift.images == 20 and r.rare_margin_shift.interval.high > 0.0 and not r.rare_margin_shift.eroded
    assert (f.rare_right_to_wrong, f.rare_close_calls, f.rare_clear_right_to_wrong) == (2, 1, 1)
    assert not r.passed and r.failing_classes == ("rare-a",)
    assert r.reasons == ("1 rare-class image(s) the PyTorch student got clearly right (top-2 gap at least 0.5) went "
                         "right -> wrong (> 0): 'rare-a' 1",)
    assert evaluate_gate(labels, ref, new, NAMES, RARE, replace(strict, max_rare_clear_losses=1)).passed
    lost = {x.index: x for x in r.rare_lost}
    assert lost[20].close_call and not lost[21].close_call and lost[20].predicted == "head"
    assert lost[20].reference_gap == pytest.approx(0.1, abs=0.01) and lost[21].reference_gap > 0.5
    md = r.to_markdown()
    assert "| 20 | rare-a | head |" in md and "| close call |" in md and "| clear loss |" in md and "2 (1 close call)" == f.rare_text()
    assert "no systematic erosion" in md

    new[21, 0] = 0.0  # only the close call is lost and nothing else moved: rounding noise
    r = evaluate_gate(labels, ref, new, NAMES, RARE, strict)
    assert r.passed and r.flips.rare_right_to_wrong == 1 and r.flips.rare_clear_right_to_wrong == 0
    shrunk = evaluate_gate(labels, ref, 0.5 * new, NAMES, RARE, strict)  # all logits halved: no prediction moves
    assert shrunk.passed and shrunk.rare_margin_shift.scale == pytest.approx(0.5, abs=0.05)
    eroded = new.copy()
    eroded[rare, labels[rare]] -= 1.0  # every rare image loses a fifth of its margin: a one-way drift
    r = evaluate_gate(labels, ref, eroded, NAMES, RARE, strict)
    assert r.rare_margin_shift.interval.high < 0 and not r.passed and r.failing_classes == ("rare-a",)
    assert r.reasons[0].startswith("the rare classes' margins eroded: mean margin shift -0.")
    assert r.reasons[0].endswith("of the rare margins' mean size); 1 rare close call(s) lost, 0 gained")
    assert r.rare_margin_shift.floor == pytest.approx(0.05 * np.abs(true_class_margins(labels, ref)[rare]).mean())
    # numerical noise that is significant but tiny (an fp32 artifact's 1e-4 logits) is no erosion
    noise = ref.copy()
    noise[rare, labels[rare]] -= 1e-4
    tiny = evaluate_gate(labels, ref, noise, NAMES, RARE, strict)
    assert tiny.passed and tiny.rare_margin_shift.interval.high < 0 and not tiny.rare_margin_shift.eroded
    assert "eroded" in r.to_markdown()
    assert evaluate_gate(labels, ref, eroded, NAMES, RARE, replace(strict, rare_margin_test=False)).passed
    drift = ref.copy()
    drift[rare, labels[rare]] -= 1.0  # the same drift with no prediction changed still fails: margins are what erode
    assert not evaluate_gate(labels, ref, drift, NAMES, RARE, strict).passed
    # without intervals the test cannot tell noise from erosion: a rare close call lost beyond those gained fails
    r = evaluate_gate(labels, ref, new, NAMES, RARE, replace(strict, bootstrap=0))
    assert not r.passed and "1 rare close call(s) lost beyond those gained" in r.reasons[0]
    new[30, 3] = 9.0
    r = evaluate_gate(labels, ref, new, NAMES, RARE, strict)
    assert r.passed and r.flips.rare_close_calls_gained == 1
    assert evaluate_gate(labels, ref, new, NAMES, RARE, replace(strict, bootstrap=0)).passed  # one lost, one gained
    assert [x.index for x in r.rare_lost] == [20]
    assert r.flips.close_calls == 2 and r.flips.close_call_images == 2 and r.flips.decisive_rate(40) == 0.0
    count_all = evaluate_gate(labels, ref, new, NAMES, RARE, replace(strict, close_call_gap=0.0))
    assert not count_all.passed and count_all.flips.rare_close_calls == 0
    flips_only = P.GateConfig(max_flip_rate=0.0, max_rare_clear_losses=5, max_rare_recall_drop=1.0,
                              max_balanced_accuracy_drop=1.0, max_mean_kl=None)
    assert evaluate_gate(labels, ref, new, NAMES, RARE, flips_only).passed  # changed close calls are not decisive flips
    decisive = new.copy()
    decisive[0, 1] = 9.0  # a head image the student called clearly now goes to 'mid'
    r = evaluate_gate(labels, ref, decisive, NAMES, RARE, flips_only)
    assert not r.passed and "1/38 decisive predictions changed" in r.reasons[0] and "2 close call(s) more" in r.reasons[0]
    # per-class recall limits count decisive images: two close calls of one class tipping is no 20-point drop,
    # two decisive losses are
    loose = replace(strict, max_rare_clear_losses=5, max_rare_recall_drop=0.1)
    two = _logits(labels)
    two[22:24, 0] = 4.8  # two rare-a close calls ('head' just behind)
    tipped = two.copy()
    tipped[22:24, 0] = 6.0
    r = evaluate_gate(labels, two, tipped, NAMES, RARE, loose)
    assert r.passed and r.classes[2].recall == pytest.approx(0.8)
    clear = _logits(labels)
    lost_two = clear.copy()
    lost_two[22:24, 0] = 9.0
    r = evaluate_gate(labels, clear, lost_two, NAMES, RARE, loose)
    assert not r.passed and "rare class 'rare-a': recall 1.000 -> 0.800 (drop 0.200) > 0.1" in r.reasons


def test_fidelity_rule_fails_outputs_far_from_the_student_even_where_every_argmax_survives():
    """Rescaled, shifted or noisy logits that keep every prediction: the accuracy rules pass them, the
    fidelity rule (mean softmax KL, no scale or offset fitted first) does not; rounding-sized noise passes."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    ref = rng.normal(0, 1.0, (100, 4)).astype(np.float32)
    ref[np.arange(100), labels] += 4.0  # the student is right on every image, with a clear margin
    check = P.GateConfig()
    healthy = evaluate_gate(labels, ref, ref + rng.normal(0, 0.1, ref.shape), NAMES, RARE, check)
    assert healthy.passed and healthy.parity.mean_kl < 0.01
    for broken in (3.0 * ref, ref + np.array([0.0, 0.0, 2.5, -2.5]), ref + rng.normal(0, 1.2, ref.shape)):
        broken = np.where(broken.argmax(1)[:, None] == labels[:, None], broken, ref)  # every argmax kept
        r = evaluate_gate(labels, ref, broken.astype(np.float32), NAMES, RARE, check)
        assert r.flips.total == 0 and r.parity.mean_kl > check.max_mean_kl
        assert not r.passed and r.reasons[-1].startswith("outputs unfaithful to the PyTorch student: mean softmax KL")
        assert r.failing_classes and set(r.failing_classes) <= set(NAMES) and "- fidelity: mean softmax KL" in r.to_markdown()
        assert evaluate_gate(labels, ref, broken.astype(np.float32), NAMES, RARE, replace(check, max_mean_kl=None)).passed


def test_softmax_kl_is_zero_for_equal_or_shifted_logits_and_finite_for_confident_disagreement():
    from fopro_edge.deploy.gate import softmax_kl

    z = np.array([[1.0, 2.0, 3.0], [50.0, -50.0, 0.0]])
    assert np.allclose(softmax_kl(z, z), 0.0) and np.allclose(softmax_kl(z, z + 7.0), 0.0)
    far = softmax_kl(z, z[:, ::-1])
    assert np.all(np.isfinite(far)) and far[1] == pytest.approx(50.0, rel=1e-6)  # -log q of the class p holds
    p = np.exp(z[0]) / np.exp(z[0]).sum()
    q = np.exp(z[0, ::-1]) / np.exp(z[0, ::-1]).sum()
    assert far[0] == pytest.approx(float((p * np.log(p / q)).sum()))


def test_rare_class_score_is_mean_rare_recall():
    labels = np.array([0, 2, 2, 3])
    assert rare_class_score(labels, np.array([0, 2, 0, 3]), 4, [2, 3]) == pytest.approx(0.75)
    assert rare_class_score(labels, np.array([0, 2, 0, 3]), 4, []) == pytest.approx((1 + 0.5 + 1) / 3)


# --------------------------------------------------------------------------- no FFT ops


def _model_with(op_type: str, domain: str = "", in_function: bool = False):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    opsets = [helper.make_opsetid("", 20)]
    functions = []
    if in_function:
        fn = helper.make_function("custom", "Spectral", ["a"], ["b"], [helper.make_node("DFT", ["a"], ["b"])], opsets)
        functions.append(fn)
        node = helper.make_node("Spectral", ["x"], ["y"], domain="custom")
        opsets.append(helper.make_opsetid("custom", 1))
    else:
        node = helper.make_node(op_type, ["x"], ["y"], name="spectral", domain=domain)
        if domain:
            opsets.append(helper.make_opsetid(domain, 1))
    graph = helper.make_graph([node], "g", [x], [y])
    return helper.make_model(graph, opset_imports=opsets, functions=functions)


@pytest.mark.onnx
@pytest.mark.parametrize("op,domain", [("DFT", ""), ("STFT", ""), ("Rfft", "com.microsoft"), ("MyFFTv2", "custom")])
def test_no_fft_assertion_rejects_spectral_ops(op, domain, tmp_path):
    from fopro_edge.deploy.onnx_backend import (
        ForbiddenOpError,
        assert_no_fft,
        find_fft_ops,
    )

    model = _model_with(op, domain)
    assert find_fft_ops(model)
    path = tmp_path / "user.onnx"
    import onnx

    onnx.save(model, str(path))
    with pytest.raises(ForbiddenOpError, match=rf"{path}: 1 FFT-like op\(s\) in the graph: .*{op}"):
        assert_no_fft(path)  # user-supplied files too
    with pytest.raises(ConfigError):  # exit code 2 family
        assert_no_fft(model)


@pytest.mark.onnx
def test_no_fft_assertion_looks_inside_functions_and_passes_plain_graphs():
    from fopro_edge.deploy.onnx_backend import assert_no_fft, find_fft_ops

    assert any("function custom:Spectral" in f for f in find_fft_ops(_model_with("", in_function=True)))
    assert_no_fft(_model_with("Relu"))


# --------------------------------------------------------------------------- calibration


def test_calibration_is_stratified_with_every_rare_class_and_round_trips(tmp_path):
    from fopro_edge.deploy.calibration import (
        load_calibration,
        save_calibration,
        select_calibration,
    )

    labels = np.array([0] * 200 + [1] * 60 + [2] * 5 + [3] * 2)
    cal = select_calibration(labels, NAMES, RARE, size=20, seed=0)
    assert len(cal) == 20 and cal.rare_missing == ()
    assert cal.class_counts["rare-a"] >= 1 and cal.class_counts["rare-b"] >= 1
    assert cal.class_counts["head"] < 200 * 20 / len(labels) + 5  # not proportional: the head is capped
    assert select_calibration(labels, NAMES, RARE, size=20, seed=0).indices == cal.indices  # deterministic
    path = tmp_path / "calibration.json"
    save_calibration(path, cal)
    again = load_calibration(path, labels, NAMES, RARE, "calibration.indices_file")
    assert again.indices == cal.indices and again.source.startswith("file:")
    with pytest.raises(ConfigError, match="made for a train split of 267 images, this one has 10"):
        load_calibration(path, labels[:10], NAMES, RARE, "calibration.indices_file")


def test_a_head_only_calibration_file_is_accepted_but_recorded(tmp_path, caplog):
    from fopro_edge.deploy.calibration import load_calibration

    labels = np.array([0] * 30 + [2] * 3 + [3] * 3)
    path = tmp_path / "head.json"
    path.write_text(json.dumps({"indices": list(range(10))}))
    cal = load_calibration(path, labels, NAMES, RARE, "calibration.indices_file")
    assert cal.rare_missing == ("rare-a", "rare-b")
    assert "holds no image of rare class(es): rare-a, rare-b" in caplog.text


def test_ort_reader_drops_partial_batch_only_for_fixed_batch():
    pytest.importorskip("onnxruntime")
    from fopro_edge.deploy.calibration import ort_reader

    images = np.zeros((5, 3, 4, 4), np.float32)
    assert [b["input"].shape[0] for b in iter(ort_reader(images, "input", 2).get_next, None)] == [2, 2, 1]
    assert [b["input"].shape[0] for b in iter(ort_reader(images, "input", 2, fixed_batch=True).get_next, None)] == [2, 2]


def test_runner_chunks_pad_to_a_fixed_batch():
    from fopro_edge.deploy.runners import iter_chunks

    images = np.ones((5, 3, 2, 2), np.float32)
    chunks = list(iter_chunks(images, 4))
    assert [c.shape[0] for c, _ in chunks] == [4, 4] and [n for _, n in chunks] == [4, 1]
    assert [c.shape[0] for c, _ in iter_chunks(images, None, default=2)] == [2, 2, 1]


# --------------------------------------------------------------------------- TensorRT rules and command


@pytest.fixture(scope="module")
def tiny_float_onnx(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    import torch

    d = tmp_path_factory.mktemp("tiny")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    path = d / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(net, (torch.rand(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "b"}})
    return path


@pytest.mark.onnx
def test_trt_qdq_rules_hold_for_the_symmetric_quantizer_and_catch_asymmetric(tiny_float_onnx, tmp_path):
    from fopro_edge.deploy import onnxruntime_backend as ob

    images = np.random.default_rng(0).random((8, 3, 8, 8), dtype=np.float32)
    pre = ob.preprocess(tiny_float_onnx, tmp_path / "pre.onnx")
    sym = ob.quantize_qdq(pre, tmp_path / "trt.onnx", images, ob.QuantSettings(
        activation_type="s8", symmetric=True, op_types=("Conv", "Gemm", "MatMul")), target="tensorrt")
    assert any("feeds Relu" in p for p in ob.check_trt_qdq(sym.path))  # ONNX Runtime's output Q/DQ before the ReLU
    ob.place_for_tensorrt(sym.path)
    assert ob.check_trt_qdq(sym.path) == []
    ob.assert_trt_qdq(sym.path)
    asym = ob.quantize_qdq(pre, tmp_path / "cpu.onnx", images, ob.QuantSettings(activation_type="u8"))
    problems = ob.check_trt_qdq(asym.path)
    assert any("uint8" in p or "non-zero zero point" in p for p in problems)
    assert any("INT32 bias" in p for p in problems)
    with pytest.raises(ConfigError, match="not a TensorRT explicit-quantization graph"):
        ob.assert_trt_qdq(asym.path)
    assert ob.check_trt_qdq(tiny_float_onnx) == ["no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized graph"]


@pytest.mark.onnx
def test_trt_rules_catch_per_channel_weights_on_the_wrong_axis(tiny_float_onnx, tmp_path):
    import onnx
    from onnx import numpy_helper

    from fopro_edge.deploy import onnxruntime_backend as ob

    images = np.random.default_rng(0).random((8, 3, 8, 8), dtype=np.float32)
    pre = ob.preprocess(tiny_float_onnx, tmp_path / "pre.onnx")
    art = ob.quantize_qdq(pre, tmp_path / "trt.onnx", images, ob.QuantSettings(
        activation_type="s8", symmetric=True, op_types=("Conv",)))
    model = onnx.load(str(art.path))
    for node in model.graph.node:  # move the conv weight's per-channel axis to the input channels
        if node.op_type == "DequantizeLinear" and any(a.name == "axis" for a in node.attribute):
            next(a for a in node.attribute if a.name == "axis").i = 1
    assert any("output-channel axis is 0" in p for p in ob.check_trt_qdq(model))
    inits = {i.name: i for i in model.graph.initializer}
    assert any(numpy_helper.to_array(i).dtype == np.int8 for i in inits.values())


def test_trtexec_command_is_exact():
    from fopro_edge.deploy.tensorrt_backend import EngineSpec, trtexec_command

    fixed = EngineSpec("input", 224, False, 1, 8, 1024)
    assert trtexec_command("onnx/model.onnx", "engine/model.fp16.engine", "fp16", fixed) == (
        "trtexec --onnx=onnx/model.onnx --saveEngine=engine/model.fp16.engine --fp16 "
        "--timingCacheFile=timing.cache --memPoolSize=workspace:1024M"
    )
    dyn = EngineSpec("input", 64, True, 4, 16, 512)
    cmd = trtexec_command("q.onnx", "m.engine", "int8", dyn)
    assert "--int8 --fp16" in cmd
    assert "--minShapes=input:1x3x64x64 --optShapes=input:4x3x64x64 --maxShapes=input:16x3x64x64" in cmd
    strong = trtexec_command("q.onnx", "m.engine", "int8", dyn, strongly_typed=True)
    assert "--stronglyTyped" in strong and "--int8" not in strong


def test_tensorrt_status_explains_why_not():
    from fopro_edge.deploy.tensorrt_backend import tensorrt_status

    ok, why = tensorrt_status()
    assert ok or why


# --------------------------------------------------------------------------- repair plan


def test_repair_plan_puts_the_strongest_tries_first_and_is_bounded():
    plans = plan_repairs(100, 1000, size_factor=2.0, methods=["percentile", "entropy", "minmax"], base_method="minmax",
                         float_layers=[1, 3], qat=True, accuracy_control=True, max_tries=10)
    assert plans[0].qat and plans[1].accuracy_control
    assert [p.float_layers for p in plans[2:4]] == [1, 3]
    assert [p.method for p in plans[4:6]] == ["percentile", "entropy"]
    assert plans[-1].label == "larger rare-stratified calibration set (200 images)" and plans[-1].calibration_size == 200
    # the default budget (6 tries) reaches QAT-KD and accuracy control
    short = plan_repairs(100, 1000, size_factor=2.0, methods=["percentile"], base_method="minmax", float_layers=[3],
                         qat=True, accuracy_control=True, max_tries=6)
    assert short[0].qat and short[1].accuracy_control and len(short) == 5
    assert len(plan_repairs(100, 1000, size_factor=2.0, methods=["entropy"], base_method="minmax",
                            float_layers=[1, 2, 3], max_tries=3)) == 2
    # every train image is already in the set: no "larger set" try
    small = plan_repairs(85, 85, size_factor=2.0, methods=[], base_method="minmax", float_layers=[1], max_tries=6)
    assert [p.float_layers for p in small] == [1]


def test_repair_plan_moves_the_larger_set_first_when_calibration_misses_a_rare_class():
    plans = plan_repairs(100, 1000, size_factor=2.0, methods=[], base_method="minmax", float_layers=[3], qat=True,
                         rare_missing=True, max_tries=6)
    assert plans[0].calibration_size == 200 and plans[1].qat


def test_no_deploy_module_is_named_like_the_package_it_wraps():
    deploy = Path(__file__).resolve().parents[1] / "fopro_edge" / "deploy"
    names = {p.stem for p in deploy.glob("*.py")}
    assert not names & {"onnx", "onnxruntime", "openvino", "tensorrt", "nncf"}


def test_qat_early_stop_scores_as_the_gate_judges():
    from fopro_edge.deploy.qat import _nothing_to_fix, _score

    labels = np.repeat(np.arange(4), 40)  # one image of a class: 0.625 points of balanced accuracy
    rare = labels >= 2
    ref = _logits(labels)
    ref[100, 0] = 4.8  # a rare close call
    new = ref.copy()
    new[100, 0] = 6.0  # ... lost, nothing else moved: rounding noise
    check = P.GateConfig()
    assert _score(labels, ref, new, [2, 3], check)[:4] == (True, 0, 1, 0)
    assert _nothing_to_fix(_score(labels, ref, new, [2, 3], check))
    # the same logits under a gate they fail (balanced accuracy): not a place to stop
    strict = _score(labels, ref, new, [2, 3], P.GateConfig(max_balanced_accuracy_drop=0.005))
    assert strict[:4] == (False, 0, 1, 0) and not _nothing_to_fix(strict)
    eroded = new.copy()
    eroded[rare, labels[rare]] -= 1.0  # the rare margins erode: the gate fails, training has something to fix
    assert _score(labels, ref, eroded, [2, 3], check)[:4] == (False, 0, 1, 0)
    assert not _nothing_to_fix(_score(labels, ref, eroded, [2, 3], check))


def test_qat_returns_a_clean_start_untrained_and_trains_one_that_is_not():
    import torch

    from fopro_edge.data import ImageList
    from fopro_edge.deploy.qat import qat_distill

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    names = tuple(NAMES)
    train = ImageList(rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), np.arange(16) % 4, names)
    images = rng.random((12, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        reference = student(torch.from_numpy(images)).numpy()
    labels = reference.argmax(1)
    config = P.QATConfig(steps=4, batch_size=4, eval_every=2, patience=1, device="cpu")
    kw = dict(image_size=8, config=config, select_images=images, select_labels=labels, rare_ids=[2, 3],
              check=P.GateConfig(close_call_gap=0.0))
    clean = qat_distill(student, copy.deepcopy(student), train, select_reference=reference, **kw)
    assert (clean.steps, clean.best_step, len(clean.history)) == (0, 0, 1)  # nothing to fix: not trained
    shifted = reference.copy()
    shifted[np.arange(12), labels] -= 100.0  # the start now changes every decisive prediction
    trained = qat_distill(student, copy.deepcopy(student), train, select_reference=shifted, **kw)
    assert trained.steps > 0 and len(trained.history) > 1


def test_qat_scores_the_deployed_artifact_not_the_fake_quantized_model():
    """A start that is clean in PyTorch but not as deployed (the runtime's INT8 kernels differ) is trained,
    and every score comes from the deployed logits."""
    import torch

    from fopro_edge.data import ImageList
    from fopro_edge.deploy.qat import qat_distill

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    train = ImageList(rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), np.arange(16) % 4, tuple(NAMES))
    images = rng.random((12, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        reference = student(torch.from_numpy(images)).numpy()
    labels = reference.argmax(1)
    calls = []

    def deployed_logits(model):
        calls.append(model.training)
        wrong = reference.copy()
        wrong[np.arange(12), labels] -= 100.0  # as deployed, every decisive prediction changes
        return wrong

    result = qat_distill(student, copy.deepcopy(student), train, image_size=8,
                         config=P.QATConfig(steps=4, batch_size=4, eval_every=2, patience=1, device="cpu"),
                         select_images=images, select_labels=labels, select_reference=reference, rare_ids=[2, 3],
                         check=P.GateConfig(close_call_gap=0.0), deployed_logits=deployed_logits)
    assert result.steps > 0 and len(calls) == len(result.history) > 1 and not any(calls)  # scored in eval mode
    assert all(h.flips == 12 for h in result.history)


def _outcome(passed: bool, rare_rw: int, flips: int, close_calls: int = 0, gained: int = 0):
    from types import SimpleNamespace

    from fopro_edge.deploy.gate import Flips
    from fopro_edge.deploy.repair import Outcome

    report = SimpleNamespace(
        passed=passed, status="PASSED" if passed else "FAILED", failing_classes=() if passed else ("c",),
        flips=Flips(total=flips, right_to_wrong=rare_rw, wrong_to_right=0, other=flips - rare_rw, rare_total=rare_rw,
                    rare_right_to_wrong=rare_rw, rare_wrong_to_right=gained, rare_close_calls=close_calls,
                    rare_close_calls_gained=gained),
        balanced_accuracy_drop=0.0, parity=SimpleNamespace(mean_kl=0.01),
        candidate=SimpleNamespace(balanced_accuracy=0.9, rare_recall=0.9),
    )
    return Outcome(None, report, {}, 10)


@pytest.mark.parametrize("until, tries, chosen", [("passed", 1, 1), ("clean", 3, 3)])
def test_repair_goes_on_past_a_pass_with_a_rare_flip_until_clean(until, tries, chosen):
    from fopro_edge.deploy.repair import TryPlan, run_tries

    outcomes = [_outcome(True, 1, 4), _outcome(False, 0, 9), _outcome(True, 0, 2), _outcome(True, 0, 0)]
    made = []

    def make(plan, best, k):
        made.append(k)
        return outcomes[k - 1]

    plans = [TryPlan(f"try {k}") for k in (2, 3, 4)]
    best, log = run_tries(TryPlan("ptq"), make, plans, enabled=True, until=until)
    assert made == list(range(1, tries + 1)) and log.chosen == chosen and best is outcomes[chosen - 1]
    assert log.passed and log.until == until and len(log.attempts) == tries
    # a failing try never replaces a passing one, however few its rare flips
    assert [a.status for a in log.attempts][:2] == ["PASSED", "FAILED"][:tries]


def test_repair_until_clean_stops_at_a_pass_whose_only_rare_loss_is_a_cancelled_close_call():
    from fopro_edge.deploy.repair import TryPlan, run_tries, score_key

    outcomes = [_outcome(True, 1, 3, close_calls=1, gained=1), _outcome(True, 0, 0)]
    best, log = run_tries(TryPlan("ptq"), lambda plan, best, k: outcomes[k - 1], [TryPlan("qat")], enabled=True,
                          until="clean")
    assert best is outcomes[0] and len(log.attempts) == 1 and "1 (1 close call)" in log.to_markdown()
    assert score_key(outcomes[1]) > score_key(outcomes[0])  # with both at hand, no close call lost is better
