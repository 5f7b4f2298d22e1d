"""The environment fingerprint: runtimes' view of this machine, and a Jetson read from fake files."""

from __future__ import annotations

from fopro_edge import envinfo


def test_fingerprint_with_runtimes():
    env = envinfo.collect_env(runtimes=True)
    cpu = env["cpu"]
    assert cpu["usable_cores"] >= 1 and isinstance(cpu["isa"], list) and set(cpu["isa"]) <= set(envinfo.ISA_FLAGS)
    assert env["packages"]["torch"] and env["torch"]["version"]
    if env["openvino"] is not None:
        assert env["openvino"]["cpu_default_inference_precision"] in ("f32", "bf16", "f16")
    if env["onnxruntime"] is not None:
        assert "CPUExecutionProvider" in env["onnxruntime"]["providers"]
    assert "openvino" not in envinfo.collect_env()  # the cheap fingerprint does not load runtimes


def test_not_a_jetson_here_unless_it_is():
    info = envinfo.jetson_info()
    assert info is None or "model" in info


def test_jetson_model_power_mode_and_clocks(monkeypatch):
    files = {
        "/proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit",
        "/etc/nv_tegra_release": "# R36 (release), REVISION: 4.0\nmore",
        "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "1510400",
        "/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq": "1510400",
        "/sys/class/devfreq/17000000.gpu/cur_freq": "306000000",
        "/sys/class/devfreq/17000000.gpu/max_freq": "624750000",
    }
    monkeypatch.setattr(envinfo, "_read", files.get)
    monkeypatch.setattr(envinfo.glob, "glob", lambda pattern: {
        "/sys/devices/system/cpu/cpu[0-9]*/cpufreq": ["/sys/devices/system/cpu/cpu0/cpufreq"],
        "/sys/class/devfreq/*": ["/sys/class/devfreq/17000000.gpu"],
    }.get(pattern, []))
    monkeypatch.setattr(envinfo.os.path, "realpath", lambda p: p)
    monkeypatch.setattr(envinfo.shutil, "which", lambda name: None)
    info = envinfo.jetson_info()
    assert info["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert info["l4t_release"] == "# R36 (release), REVISION: 4.0"
    assert info["cpu_clocks"]["cpu0"] == {"cur_mhz": 1510.4, "max_mhz": 1510.4}
    assert info["devfreq_clocks"]["17000000.gpu"] == {"cur_mhz": 306.0, "max_mhz": 624.75}
    assert info["clocks_at_max"] is False  # the GPU is below its maximum: jetson_clocks was not run
    assert "nvpmodel" not in info
