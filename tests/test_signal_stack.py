"""OpenVINO's CPU plugin swaps the thread's alternate signal stack; freed out of order, it leaves an
unmapped one behind and the next Python signal handler (Ctrl-C, torch's SIGCHLD handler) crashes
the process. :mod:`fopro_edge.deploy.signal_stack` puts a mapped stack back."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from fopro_edge.deploy import signal_stack

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack: Linux")


def test_a_dangling_signal_stack_is_put_back():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    before = signal_stack.current()
    signal_stack.remember()
    size = 4 * 16384
    region = libc.mmap(None, size, 3, 0x22, -1, 0)  # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
    try:
        assert signal_stack.install(region, size) and signal_stack.current() == (region, 0, size)
        assert signal_stack.is_mapped(region, size) and not signal_stack.repair()  # a mapped stack is left alone
        assert libc.munmap(region, size) == 0
        assert not signal_stack.is_mapped(region, size)
        assert signal_stack.repair() and signal_stack.current() == before
    finally:
        if before is not None:
            signal_stack.install(before[0], before[2], disable=bool(before[1] & signal_stack.SS_DISABLE))


@pytest.mark.openvino
def test_openvino_runners_closed_in_opening_order_leave_a_usable_signal_stack(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    script = textwrap.dedent(f"""
        import faulthandler, signal, subprocess, sys
        faulthandler.enable()  # an alternate signal stack of Python's own, as under pytest
        from fopro_edge.deploy.runners import OpenVINORunner
        a = OpenVINORunner({str(tmp_path / "m.onnx")!r})
        b = OpenVINORunner({str(tmp_path / "m.onnx")!r})
        a.close()
        b.close()
        del a, b
        signal.signal(signal.SIGCHLD, lambda *args: None)  # as torch does for data-loader workers
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        print("survived")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr[-2000:]
