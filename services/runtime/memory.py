"""How a service process's C allocator hands memory back.

glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which
blocks of that size come from heaps that keep what is freed; and every thread that
allocates gets an arena of its own. A service that plans a 100,000-peer policy on worker
threads frees tables of megabytes again and again: with the defaults its resident size kept
some 20 MB more than it used (policyd's peak at a 100,000-peer apply, bench/cidr_scale.py).
A fixed threshold sends every block over it to mmap and back to the kernel when freed.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3          # mallopt parameters (glibc's malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024    # glibc's initial value, kept fixed
ARENA_MAX = 2


def hand_back_freed_memory() -> bool:
    """Fix the mmap threshold and bound the arenas; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
