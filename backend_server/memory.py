"""Giving freed memory back to the system, so the server's resident size follows its open sessions down."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def pin_malloc_thresholds() -> None:
    """Fix glibc's trim and mmap thresholds at their defaults (once, at start-up). Left dynamic, glibc raises
    both each time it frees an mmapped block (up to 32 and 64 MiB); from then on blocks of that size (a
    windowed volume, a model activation) come from the arena of the thread that asked, and a thread arena's
    free top is given back neither on free (it is below the raised trim threshold) nor by malloc_trim (which
    trims only the main heap's top), so every request and worker thread keeps its last large block for good."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)


def return_memory() -> None:
    """Hand freed memory back to the system: glibc keeps freed blocks of the heap for reuse otherwise, and
    the server's resident size would stay at its peak long after the sessions are gone."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (find_library runs ldconfig: looked up once)."""
    name = ctypes.util.find_library("c")
    if name and "libc" in name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
            return libc
    return None
