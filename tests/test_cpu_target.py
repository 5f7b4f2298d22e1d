"""The deployment CPU decides the INT8 scheme: 7-bit weights where u8 x s8 pair sums saturate."""

from __future__ import annotations

import pytest

from fopro_edge.deploy.cpu_target import CpuClass, classify, int8_scheme


@pytest.mark.parametrize(("arch", "isa", "want"), [
    ("x86_64", {"avx2", "fma"}, CpuClass.AVX2),  # e.g. AMD EPYC (Zen 2/3), older Xeons
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, CpuClass.AVX2),  # AVX-512 without VNNI (Skylake-SP) saturates too
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, CpuClass.VNNI),
    ("x86_64", {"avx2", "avx_vnni"}, CpuClass.VNNI),  # Alder Lake and later client CPUs
    ("x86_64", {"avx2", "amx_int8", "amx_tile"}, CpuClass.VNNI),
    ("aarch64", {"asimd", "asimddp"}, CpuClass.ARM),  # Jetson Orin, Graviton
])
def test_cpu_classes(arch, isa, want):
    assert classify(arch, isa) is want


def test_a_cpu_without_vnni_gets_seven_bit_weights_and_u8_activations():
    s = int8_scheme("avx2", check_cpu=CpuClass.VNNI)
    assert s.reduce_range and s.overflow_fix == "enable" and s.ort_activation == "u8"
    assert s.deploy_cpu == "avx2" and s.check_cpu == "vnni"


def test_vnni_keeps_eight_bit_weights_and_times_the_activation_format_only_on_a_vnni_machine():
    here = int8_scheme("auto", check_cpu=CpuClass.VNNI)
    assert not here.reduce_range and here.overflow_fix == "first_layer_only" and here.ort_activation is None
    elsewhere = int8_scheme("vnni", check_cpu=CpuClass.AVX2)
    assert elsewhere.ort_activation == "u8" and not elsewhere.reduce_range
    # checked where it saturates, deployed where it does not: ONNX Runtime checks with exact integer arithmetic
    assert elsewhere.exact_check and not here.exact_check
    assert not int8_scheme("avx2", check_cpu=CpuClass.VNNI).exact_check  # exact here, 7-bit weights: nothing to emulate


def test_arm_gets_signed_activations():
    s = int8_scheme("arm", check_cpu=CpuClass.AVX2)
    assert s.ort_activation == "s8" and not s.reduce_range
    assert any("verify" in n for n in s.notes)


def test_auto_is_this_cpu_and_the_report_says_so():
    s = int8_scheme("auto", check_cpu=CpuClass.AVX2)
    assert s.deploy_cpu == "avx2" and s.requested == "auto" and "auto: this CPU" in s.notes[0]
