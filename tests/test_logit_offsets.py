"""Per-class logit offsets: fitted as planted, and subtracted by the ONNX and IR artifacts alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fopro_edge.deploy.logit_offsets import fit_offsets


def test_fit_recovers_a_planted_per_class_shift_and_common_scale():
    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 3.0, (400, 5))
    planted = np.array([0.5, -0.2, 0.0, 0.1, -0.4])
    quantized = 0.9 * reference + planted + 7.0 + rng.normal(0.0, 0.05, reference.shape)  # + a shift of every logit
    fitted = fit_offsets(quantized, reference)
    assert fitted.scale == pytest.approx(0.9, abs=0.01) and fitted.images == 400
    np.testing.assert_allclose(fitted.offsets, planted - planted.mean(), atol=0.02)
    assert fitted.largest == pytest.approx(0.5, abs=0.02)
    # subtracted, the shift no longer moves predictions; only the noise does
    agree = lambda q: (q.argmax(1) == reference.argmax(1)).mean()  # noqa: E731
    assert agree(quantized) < 0.95 and agree(quantized - fitted.offsets) > 0.98
    with pytest.raises(ValueError, match="two equal"):
        fit_offsets(quantized[:, :4], reference)


def _tiny_onnx(path, k=4):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(3 * 2 * 2, k, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"fopro_edge.class_names": json.dumps(["a", "b", "c", "d"])})
    onnx.save(model, str(path))


@pytest.mark.onnx
def test_an_onnx_model_subtracts_the_offsets_and_keeps_its_metadata(tmp_path):
    from fopro_edge.deploy.onnx_backend import read_metadata, subtract_from_logits
    from fopro_edge.deploy.runners import OrtRunner

    path = tmp_path / "m.onnx"
    _tiny_onnx(path)
    x = np.random.default_rng(1).random((3, 3, 2, 2), dtype=np.float32)
    with OrtRunner(path, precision="fp32") as r:
        before = r.infer(x)
    subtract_from_logits(path, [0.5, -0.25, 0.0, 1.0])
    with OrtRunner(path, precision="fp32") as r:
        np.testing.assert_allclose(r.infer(x), before - [0.5, -0.25, 0.0, 1.0], atol=1e-6)
    assert json.loads(read_metadata(path)["fopro_edge.class_names"]) == ["a", "b", "c", "d"]


@pytest.mark.openvino
def test_an_ir_subtracts_the_offsets_and_keeps_its_rt_info_and_output_name(tmp_path):
    import openvino as ov

    from fopro_edge.deploy.openvino_backend import opset, read_rt_info, subtract_from_logits
    from fopro_edge.deploy.runners import OpenVINORunner

    ops = opset()

    x_in = ops.parameter([-1, 4], np.float32, name="input")
    y = ops.multiply(x_in, ops.constant(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)))
    y.output(0).get_tensor().set_names({"logits"})
    model = ov.Model([y], [x_in], "tiny")
    model.set_rt_info("x", ["fopro_edge", "rare_classes"])
    xml = tmp_path / "m.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    x = np.random.default_rng(2).random((3, 4), dtype=np.float32)
    with OpenVINORunner(xml, precision="fp32") as r:
        before = r.infer(x)
    subtract_from_logits(xml, [0.5, -0.25, 0.0, 1.0])
    with OpenVINORunner(xml, precision="fp32") as r:
        np.testing.assert_allclose(r.infer(x), before - [0.5, -0.25, 0.0, 1.0], atol=1e-6)
    assert read_rt_info(xml)["rare_classes"] == "x"
    assert ov.Core().read_model(str(xml)).outputs[0].get_names() == {"logits"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # no work files left
