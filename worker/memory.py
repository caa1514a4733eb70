"""glibc's malloc set up to keep the memory a CPU job frees, for its next training step.

torch allocates a CPU tensor with ``posix_memalign``. glibc serves a large one (above its
mmap threshold: 128 KiB at first, raised to the largest block freed, 32 MiB at most) with a
fresh ``mmap``, returned at once when freed, and it trims the top of its heap once more than
twice that threshold is free there. A training step frees most of what it allocated, so the
next step gets new pages from the kernel, each a page fault and a page zeroed. Measured on a
digits CNN (conv128-conv256, batch 32, one thread, ~0.8 s an epoch): 8,000-10,700 page faults
and 13-20 ms of kernel time an epoch with glibc's defaults, none with these settings, and
the same peak memory (BENCHMARKS.md). What the worker keeps: up to
DESCENT_WORKER_MALLOC_KEEP_MB (256) of freed memory, blocks of up to 32 MiB from its heap;
0 leaves glibc's defaults. Nothing happens where the C library is not glibc (``mallopt``
absent or refusing).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on a 64-bit machine (DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD = 32 << 20


def keep_freed_memory(keep_mb: int) -> bool:
    """Set this process's malloc to serve blocks of up to 32 MiB from its heap and to keep up
    to ``keep_mb`` MiB free at the heap's top; whether it took (False: 0, or not glibc)."""
    if keep_mb <= 0:
        return False
    try:  # the C library the process runs with (as descent/cli.py finds prctl)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    taken = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    taken = taken and mallopt(M_TRIM_THRESHOLD, min(keep_mb << 20, 2**31 - 1)) == 1
    log.debug("malloc keeps up to %d MiB of freed memory: %s", keep_mb, taken)
    return taken
