"""The CPU an INT8 model will run on, and the quantization scheme that is exact there.

x86 CPUs without VNNI multiply uint8 activations by int8 weights with ``vpmaddubsw``, which adds
pairs of products into a saturating int16: with full 8-bit weights the sum can clip. ONNX Runtime
(U8S8) and OpenVINO's CPU plugin both take that path on AVX2-only CPUs. Weights in 7 bits
(ONNX Runtime's ``reduce_range``, NNCF's ``overflow_fix``) keep every pair sum in range, so the
model computes the same on every x86 CPU. VNNI (``vpdpbusd``) and Arm's dot-product instructions
accumulate in int32 and need no such care.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class CpuClass(StrEnum):
    """What decides INT8 numerics and speed on a CPU."""

    AVX2 = "avx2"  # x86 without VNNI: saturating u8 x s8 pair sums
    VNNI = "vnni"  # x86 with AVX-512 VNNI, AVX-VNNI or AMX: exact int32 accumulation
    ARM = "arm"  # aarch64: signed dot products

    @property
    def saturates(self) -> bool:
        return self is CpuClass.AVX2


DEPLOY_CPU_CHOICES = ("auto", *(c.value for c in CpuClass))


def computes_differently(made_for: CpuClass, here: CpuClass) -> bool:
    """Whether an INT8 model made for ``made_for`` computes other numbers on ``here``: only where this CPU
    saturates and the deployment CPU does not (8-bit weights). 7-bit weights, and every CPU that accumulates
    in int32, give the exact result."""
    return here.saturates and not made_for.saturates
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def classify(arch: str, isa: set[str] | frozenset[str]) -> CpuClass:
    """The class of a CPU from its architecture (``platform.machine()``) and ISA flags."""
    if arch.lower() in ("aarch64", "arm64") or "asimd" in isa:
        return CpuClass.ARM
    return CpuClass.VNNI if isa & _VNNI_FLAGS else CpuClass.AVX2


def this_cpu() -> CpuClass:
    from fopro_edge.envinfo import cpu_info

    info = cpu_info()
    return classify(str(info.get("arch") or platform.machine()), set(info.get("isa") or ()))


@dataclass(frozen=True)
class Int8Scheme:
    """The INT8 settings for one deployment CPU, and what the check on this CPU can show."""

    deploy_cpu: str  # avx2 | vnni | arm
    requested: str  # auto | avx2 | vnni | arm
    check_cpu: str  # the class of the CPU the gate runs on
    reduce_range: bool  # ONNX Runtime: 7-bit weights
    ort_activation: str | None  # u8 | s8 | None (time both here)
    overflow_fix: str  # NNCF: enable (7-bit weights everywhere) | first_layer_only
    notes: tuple[str, ...] = ()
    # this CPU saturates where the deployment CPU does not: ONNX Runtime checks with the Q/DQ ops run as
    # written (exact int32 arithmetic, what the deployment CPU computes), not with this CPU's kernels
    exact_check: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def int8_scheme(deploy_cpu: str = "auto", check_cpu: CpuClass | None = None) -> Int8Scheme:
    """The saturation-safe INT8 scheme for ``deploy_cpu`` (``auto``: the CPU this runs on)."""
    here = check_cpu or this_cpu()
    target = here if deploy_cpu == "auto" else CpuClass(deploy_cpu)
    notes = [f"deployment CPU: {target.value}" + (" (auto: this CPU)" if deploy_cpu == "auto" else "")
             + f"; the gate runs on this CPU ({here.value})"]
    if target.saturates:
        notes.append("no VNNI on the deployment CPU: weights in 7 bits (reduce_range / overflow_fix) so that u8 x s8 "
                     "pair sums cannot saturate; u8 activations (the fast path there)")
        activation: str | None = "u8"
    elif target is CpuClass.ARM:
        notes.append("Arm: s8 activations (signed dot products), full 8-bit weights")
        activation = "s8"
    else:
        notes.append("VNNI: exact int32 accumulation, full 8-bit weights")
        activation = None if here is CpuClass.VNNI else "u8"
    exact_check = computes_differently(target, here)
    if exact_check:
        notes.append(f"this CPU saturates where the {target.value} deployment CPU does not: ONNX Runtime is checked "
                     "with the Q/DQ ops run as written (the exact integer arithmetic of the deployment CPU), "
                     "OpenVINO with this CPU's kernels (pessimistic); verify the artifact on the deployment CPU")
    elif here is not target and not target.saturates:
        notes.append(f"checked on {here.value}, deployed on {target.value}: verify the artifact on the deployment CPU")
    return Int8Scheme(
        deploy_cpu=target.value, requested=deploy_cpu, check_cpu=here.value, reduce_range=target.saturates,
        ort_activation=activation, overflow_fix="enable" if target.saturates else "first_layer_only", notes=tuple(notes),
        exact_check=exact_check,
    )
