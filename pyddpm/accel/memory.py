"""glibc malloc settings for processes that run torch on the CPU: keep freed memory for reuse.

torch's CPU tensors come straight from malloc, and every layer's output is a fresh block. With glibc's defaults a
block of a few MiB is mapped from the OS and unmapped when freed (or trimmed from the top of the heap), so each
forward pass pays page faults on fresh pages (measured in commit d76e156 with ``benchmarks/bench_cpu.py``).
pyddpm's command-line tools apply the settings below; a program of your own can call ``keep_freed_memory()``
once. The cost: memory freed by the process stays in it for reuse (peak RSS is kept).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # blocks below this come from the heap: glibc's largest (HEAP_MAX_SIZE / 2, 64-bit)
TRIM_THRESHOLD = 2**30  # free memory at the top of the heap is handed back only above this

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's M_MMAP_THRESHOLD to 32 MiB and M_TRIM_THRESHOLD to 1 GiB for this process, once; True when they
    are set (Linux with glibc), False elsewhere (nothing changes)."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                                       TRIM_THRESHOLD))
    return _applied
