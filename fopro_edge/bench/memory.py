"""Resident memory of this process: current and peak (``VmRSS`` / ``VmHWM``), and GPU memory.

``bench`` measures every artifact in a fresh subprocess, so the peak is that artifact's alone:
the Python interpreter, the one runtime it imports, the loaded model and the timed loop. In-process
measurements (``isolate=False``) reset the peak before each artifact where Linux allows it
(``/proc/self/clear_refs``) and otherwise report the process-wide peak.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size: ``VmHWM`` on Linux, else ``getrusage`` (KiB on Linux, bytes on macOS)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru if sys.platform == "darwin" else ru * 1024)


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


class GpuMemory:
    """Peak GPU memory over an interval, where torch with CUDA is already in use.

    ``torch_peak_bytes``: torch's caching allocator (PyTorch models, TensorRT I/O buffers).
    ``device_used_delta_bytes``: the device-wide used memory at the end minus at the start
    (covers runtimes that allocate outside torch, e.g. TensorRT's activations; other processes
    on the GPU would show here too).
    """

    def __init__(self) -> None:
        self._torch: Any = None
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            self._torch = torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            free, total = torch.cuda.mem_get_info()
            self._used0 = total - free
            self._used_max = self._used0

    @property
    def active(self) -> bool:
        return self._torch is not None

    def poll(self) -> None:
        if self._torch is not None:
            free, total = self._torch.cuda.mem_get_info()
            self._used_max = max(self._used_max, total - free)

    def result(self) -> dict[str, int] | None:
        if self._torch is None:
            return None
        self.poll()
        return {
            "torch_peak_bytes": int(self._torch.cuda.max_memory_allocated()),
            "device_used_delta_bytes": int(self._used_max - self._used0),
        }
