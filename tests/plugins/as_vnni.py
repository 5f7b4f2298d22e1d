"""pytest plugin: run the export tests with VNNI's INT8 numerics on any x86 CPU.

Every export whose ``deploy_cpu`` is ``auto`` is made for a VNNI CPU instead (8-bit weights). On a CPU
that saturates, ONNX Runtime's gate then runs the Q/DQ ops as written: the exact int32 arithmetic a
VNNI CPU computes. So the ONNX Runtime tests that assert a gate outcome can be checked for a VNNI CPU
here:

    PYTHONPATH=tests/plugins python -m pytest -p as_vnni -m "onnx and not openvino" tests/test_deploy_pipeline.py

Two tests are skipped under it, as they cannot hold by design: one asserts that ``auto`` means this
CPU, the other that ``verify`` on this CPU reproduces the export's check (here it runs this CPU's
saturating kernels on an artifact made for VNNI; on a VNNI CPU both run the same kernels). OpenVINO
has no exact mode, so its tests are left out.
"""

import pytest

_NOT_UNDER_VNNI = {
    "test_cli_onnxruntime_int8_writes_artifact_calibration_timings_and_per_class_report": "asserts auto = this CPU",
    "test_verify_reproduces_the_export_gate_without_torch_and_refuses_a_changed_bundle":
        "verify here runs this CPU's kernels, the export's check VNNI's arithmetic",
}


def pytest_collection_modifyitems(items):
    for item in items:
        why = _NOT_UNDER_VNNI.get(item.originalname)
        if why:
            item.add_marker(pytest.mark.skip(reason=f"made for VNNI: {why}"))


@pytest.fixture(autouse=True)
def _made_for_vnni(monkeypatch):
    from fopro_edge.deploy import cpu_target, pipeline

    def for_vnni(deploy_cpu="auto", check_cpu=None):
        return cpu_target.int8_scheme("vnni" if deploy_cpu == "auto" else deploy_cpu, check_cpu)

    monkeypatch.setattr(pipeline, "int8_scheme", for_vnni)
