"""Keep freed activation memory in the process instead of returning it to the OS (glibc).

A scoring forward on a CPU allocates activations of a few MB per layer.  glibc serves blocks
that large with mmap and unmaps them when freed, so the next forward faults every page in
again: with the demo model, 256 images cost 0.3-0.9 million page faults and 0.4-1.4 s of
system time on top of 6 s of compute.  Raising the mmap and trim thresholds keeps those
blocks on the heap for reuse (PyTorch's CPU tuning guide recommends jemalloc or tcmalloc for
the same reason; this needs no preloaded library).  Measured with benchmarks/allocator.py:
page faults 5e5 -> 0 per 256 images, scoring ~8% faster per image (docs/PERFORMANCE.md).

It also keeps every thread on one malloc arena.  glibc gives each new thread its own arena,
and a thread arena returns its memory to the OS far more eagerly than the main heap: a
generate job on a fresh worker thread faulted 2e5 pages in and spent 0.4-1.2 s in the kernel
(6.1 s -> 7.2 s for 64 samples), where the same call on a thread that shares the main heap
faulted 800 pages and none of that time.  The service runs every job on a pool thread, so
serving processes call this **before they start threads** (``worker.celery_app``,
``debm.serve``): a thread that already holds its own arena keeps it.

Process-wide and idempotent.  Elsewhere than glibc (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("debm.model")

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks below this are taken from the heap, never mmap'd: larger than any activation of
# the models this project trains on a CPU, well under the 32 MiB glibc allows per thread arena.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20  # free heap top kept before it is returned to the OS
# One arena: the threads that allocate large blocks run model code one at a time per job,
# and small Python objects come from Python's own allocator, so sharing costs little.
ARENA_MAX = 1

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the thresholds once; True when they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and \
            bool(libc.mallopt(_M_ARENA_MAX, ARENA_MAX))
    except (OSError, AttributeError) as exc:  # no mallopt: leave the allocator as it is
        log.debug("mallopt unavailable: %s", exc)
    return _applied
