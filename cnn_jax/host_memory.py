"""Keeps the host memory of XLA:CPU's per-step buffers mapped from one step to the next.

On the CPU backend each XLA convolution runs Eigen's tensor contraction, which allocates its
packing buffers (75 MB for a 3x3, 16-channel convolution on 128x32x32 images) with `malloc` on
XLA's pool threads, every step. glibc serves a request that large in a thread's arena by a fresh
`mmap` and gives it back with `munmap` at `free`, whatever M_MMAP_THRESHOLD says, so every step
maps, zero-fills and unmaps the same memory again: on a ResNet-20 training step (batch 128, 2-core
AMD EPYC) 74,000 page faults and 0.17 CPU-s of kernel time, a fifth of the step's CPU time
(benchmarks/RESULTS.md, issue 15). With one malloc arena, `mmap` off and no trimming, freed
blocks are kept and reused: ResNet-20 training on CIFAR-10 ran 1.30x faster in the trainer and
1.07x in the benchmark (page faults 2.57M -> 0.40M per process), at about twice the peak
resident memory (0.9 -> 1.7 GB for ResNet-20; 1.6 -> 3.4 GB for ResNet-56).

`keep_host_buffers` sets those three glibc parameters with `mallopt` (through ctypes); on other
C libraries and systems it does nothing. Nothing in jax, XLA or the Python standard library sets
them, and the MALLOC_* environment variables would have to be set before the interpreter starts,
hence this module. It must run before JAX starts its CPU backend (the pool threads pick their
arena at their first allocation): `launch.py` and `cnn_jax.benchmark` call it right after parsing
their flags, before any JAX computation, unless `--keep_host_buffers=false`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Freed memory at the top of the heap is returned to the system only beyond this many bytes.
# glibc reads the int as a size_t, so -1 means never. At 2**31 - 1 (the largest positive int) a
# heap with more than 2 GiB free at its top was trimmed and grown again: ResNet-56 at batch 128
# (528 MiB of temporaries a step) went 1,045 -> 2,630 MiB, back to 517, then grew again, 135,000
# page faults each time (benchmarks/cpu_logs/2026-12-07-avx2/probe_heap_vm.txt).
TRIM_THRESHOLD = -1

_applied: bool | None = None


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_host_buffers() -> bool:
    """One malloc arena, no mmap'd chunks, no trimming: whether glibc took all three settings.

    Idempotent; False (and nothing changed) where the C library is not glibc.
    """
    global _applied
    if _applied is None:
        libc = _libc()
        if libc is None or not hasattr(libc, "mallopt"):
            _applied = False
        else:
            _applied = all(libc.mallopt(param, value) == 1 for param, value in (
                (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    return _applied


def kept() -> bool:
    """Whether `keep_host_buffers` ran in this process and glibc took its settings."""
    return bool(_applied)
