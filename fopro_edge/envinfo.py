"""A fingerprint of the machine and library versions, attached to every run and report.

``collect_env()`` is cheap (files and package metadata). ``collect_env(runtimes=True)`` also asks
the inference runtimes what they will use here: ONNX Runtime's execution providers, OpenVINO's
CPU capabilities and default inference precision (bf16 on CPUs with bf16 units), TensorRT's
version; and on a Jetson its model, L4T release, power mode and clocks.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

PACKAGES = ("torch", "torchvision", "timm", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf", "tensorrt")

# Instruction sets that decide int8 / bf16 speed: x86 (VNNI, AVX-512 BF16/FP16, AMX) and Arm (dot
# product, int8 matmul, bf16, fp16 arithmetic, SVE).
ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "fphp",
)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().replace("\x00", "").strip()
    except OSError:
        return None


def cpu_info() -> dict[str, Any]:
    model, flags = "", set()
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith(("model name", "Model")) and ":" in line and not model:
            model = line.split(":", 1)[1].strip()
        elif line.startswith(("flags", "Features")) and ":" in line and not flags:
            flags = set(line.split(":", 1)[1].split())
    out: dict[str, Any] = {
        "model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": sorted(f for f in ISA_FLAGS if f in flags),
        "virtualized": "hypervisor" in flags,
    }
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        out["governor"] = governor
    mem = _read("/proc/meminfo") or ""
    for line in mem.splitlines():
        if line.startswith("MemTotal:"):
            out["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    return out


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_info() -> dict[str, Any] | None:
    if "torch" not in sys.modules:
        try:
            import torch
        except ImportError:
            return None
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def torch_info() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    out: dict[str, Any] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    try:
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        pass
    return out


def onnxruntime_info() -> dict[str, Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return {"version": ort.__version__, "providers": ort.get_available_providers()}


def openvino_info() -> dict[str, Any] | None:
    """Version, devices, and for the CPU its capabilities and *default* inference precision
    (what an IR runs in unless INFERENCE_PRECISION_HINT is set; each measurement records the
    precision really used)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    from fopro_edge.deploy import signal_stack
    from fopro_edge.deploy.runners import ov_precision_name

    with signal_stack.kept():
        core = ov.Core()
        out: dict[str, Any] = {"version": ov.get_version(), "devices": list(core.available_devices)}
        try:
            out["cpu_capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            out["cpu_default_inference_precision"] = ov_precision_name(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
            out["cpu_name"] = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        except Exception as e:  # noqa: BLE001 - a property this OpenVINO build does not have
            out["cpu_properties_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        del core
    return out


def tensorrt_info() -> dict[str, Any] | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return {"version": trt.__version__}


def _freq_mhz(path: str) -> float | None:
    v = _read(path)
    try:
        return None if v is None else int(v.split()[0]) / 1000.0
    except ValueError:
        return None


def jetson_info() -> dict[str, Any] | None:
    """Model, L4T release, power mode (``nvpmodel -q``) and clocks of an NVIDIA Jetson; ``None``
    elsewhere. Clocks: CPU cur/max (kHz files), GPU and EMC devfreq cur/max (Hz files);
    ``clocks_at_max`` is true when every readable current clock equals its maximum (what
    ``sudo jetson_clocks`` sets)."""
    model = _read("/proc/device-tree/model")
    release = _read("/etc/nv_tegra_release")
    if not release and not (model and ("jetson" in model.lower() or "nvidia" in model.lower())):
        return None
    out: dict[str, Any] = {"model": model, "l4t_release": (release or "").splitlines()[0] if release else None}
    if shutil.which("nvpmodel"):
        try:
            q = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10, check=False)
            out["nvpmodel"] = " ".join(ln.strip() for ln in q.stdout.splitlines() if ln.strip()) or q.stderr.strip()
        except (OSError, subprocess.SubprocessError) as e:
            out["nvpmodel"] = f"unreadable ({e})"
    at_max = []
    cpus = {}
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq")):
        cur, mx = _freq_mhz(f"{d}/scaling_cur_freq"), _freq_mhz(f"{d}/scaling_max_freq")
        if cur is not None:
            cpus[d.split("/")[-2]] = {"cur_mhz": cur, "max_mhz": mx}
            if mx:
                at_max.append(cur >= mx)
    out["cpu_clocks"] = cpus
    devfreq = {}
    for d in sorted(glob.glob("/sys/class/devfreq/*")):
        name = os.path.basename(os.path.realpath(d))
        cur, mx = _read(f"{d}/cur_freq"), _read(f"{d}/max_freq")
        if cur and cur.isdigit():
            devfreq[name] = {"cur_mhz": int(cur) / 1e6, "max_mhz": int(mx) / 1e6 if mx and mx.isdigit() else None}
            if mx and mx.isdigit():
                at_max.append(int(cur) >= int(mx))
    out["devfreq_clocks"] = devfreq  # the GPU (e.g. 17000000.gpu / gpu.0) and memory (EMC) where exposed
    out["clocks_at_max"] = all(at_max) if at_max else None
    return out


def collect_env(*, runtimes: bool = False) -> dict[str, Any]:
    """The fingerprint; with ``runtimes`` also the inference runtimes' view of this machine."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": cpu_info(),
        "gpu": gpu_info(),
        "packages": package_versions(),
    }
    jetson = jetson_info()
    if jetson is not None:
        env["jetson"] = jetson
    if runtimes:
        env["torch"] = torch_info()
        env["onnxruntime"] = onnxruntime_info()
        env["openvino"] = openvino_info()
        env["tensorrt"] = tensorrt_info()
    return env


def machine_line() -> str:
    """One line for a benchmark header: CPU model, logical cores and INT8 CPU class (avx2, vnni, ...)."""
    from fopro_edge.deploy.cpu_target import this_cpu

    cpu = cpu_info()
    return f"{cpu.get('model') or 'unknown CPU'}, {cpu.get('logical_cores')} logical cores, CPU class {this_cpu()}"
