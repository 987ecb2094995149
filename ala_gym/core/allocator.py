"""Keep freed CPU memory in the process: steadier, faster CPU training under glibc.

PyTorch allocates CPU tensors with the C library's ``malloc``. Under glibc, an activation of a few MB
(ResNet-32's are 8 MB at batch 128) is either mapped fresh from the kernel or taken from the heap, and
freed memory at the heap's top is handed back, depending on thresholds that glibc adjusts as the
program runs. Memory handed back and taken again is page-faulted in anew on first touch, so two loops
running the same arithmetic can differ in speed by their page faults alone: ``benchmarks/malloc.py``
measures it on ResNet-32 (``benchmarks/results/malloc.md``). After :func:`retain_freed_memory` neither
loop faults.

This is what PyTorch's CPU performance guide gets from swapping in jemalloc or tcmalloc, without
``LD_PRELOAD``. The price is the same as a caching allocator's: the process keeps its peak heap.
It changes no value that training computes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
"""Blocks from this size up are still mapped apart from the heap, and handed back when freed:
glibc's own upper limit for the threshold on 64-bit systems, far above a child's activations."""
TRIM_THRESHOLD = 2**30
"""Free memory at the heap's top kept before glibc hands any of it back."""


def retain_freed_memory() -> bool:
    """Fix glibc's malloc thresholds so that freed tensors' memory stays in the process.

    Call it once, at the start of a CPU training or benchmark process. Returns True if glibc accepted
    both settings, False on other C libraries (macOS, musl), where it does nothing.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    # Setting a threshold also switches off glibc's dynamic adjustment of both.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
