"""Keep this thread's alternate signal stack valid around OpenVINO.

OpenVINO's CPU plugin (Linux) maps an alternate signal stack of its own when a ``Core`` loads it,
and when that ``Core`` is freed it puts back the stack it found and unmaps its own. Two Cores freed
in the order they were made (NNCF and the runners make several) leave the thread pointing at an
unmapped stack; the next signal handled on it (every Python-level handler runs there: Ctrl-C, the
SIGCHLD handler torch installs for data-loader workers) kills the process with SIGSEGV.

:func:`remember` notes the thread's stack before OpenVINO first runs; :func:`repair` puts it back
when the installed one is no longer mapped; :func:`kept` does both around a block.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SS_DISABLE = 2
_base: dict[int, tuple[int | None, int, int]] = {}  # thread -> (sp, flags, size) before OpenVINO


class _Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc() -> ctypes.CDLL | None:
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def current() -> tuple[int | None, int, int] | None:
    """This thread's alternate signal stack as ``(sp, flags, size)``; None where there is none to ask."""
    libc = _libc()
    if libc is None:
        return None
    s = _Stack()
    return (s.ss_sp, s.ss_flags, s.ss_size) if libc.sigaltstack(None, ctypes.byref(s)) == 0 else None


def install(sp: int | None, size: int, *, disable: bool = False) -> bool:
    libc = _libc()
    if libc is None:
        return False
    s = _Stack(None, SS_DISABLE, 0) if disable or not sp else _Stack(sp, 0, size)
    return libc.sigaltstack(ctypes.byref(s), None) == 0


def is_mapped(sp: int, size: int) -> bool:
    """Whether every page of ``[sp, sp + size)`` is mapped (``mincore`` fails with ENOMEM if not)."""
    libc = _libc()
    if libc is None:
        return True
    page = mmap.PAGESIZE
    start = sp - sp % page
    length = sp + size - start
    vec = ctypes.create_string_buffer((length + page - 1) // page)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    return libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) == 0


def remember() -> None:
    """Note this thread's stack, once, before OpenVINO touches it."""
    now = current()
    if now is not None:
        _base.setdefault(threading.get_ident(), now)


def repair() -> bool:
    """If the installed stack is no longer mapped, put back the one :func:`remember` noted (or turn
    the alternate stack off); True when it had to."""
    now = current()
    if now is None or now[1] & SS_DISABLE or not now[0] or is_mapped(now[0], now[2]):
        return False
    sp, flags, size = _base.get(threading.get_ident(), (None, SS_DISABLE, 0))
    usable = bool(sp) and not flags & SS_DISABLE and is_mapped(sp, size)
    return install(sp, size, disable=not usable)


@contextmanager
def kept() -> Iterator[None]:
    """Run OpenVINO work, free what it left behind, and leave this thread a mapped signal stack."""
    remember()
    try:
        yield
    finally:
        gc.collect()  # Cores made inside are freed now, so their stack swaps happen before the check
        repair()
