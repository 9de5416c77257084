"""Returning freed host memory to the operating system after XLA compiles a step.

Compiling a large step allocates and frees hundreds of megabytes of small objects on the host. glibc's
malloc keeps the freed pages in its arenas, where the step's own buffers do not reuse them, so without
help the process's peak resident memory is the running step's plus the compiler's leftovers (about
200 MB for an mT5-small LoRA step). `release()` hands those pages back (glibc `malloc_trim`). Where the
C library has no `malloc_trim` (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's `int malloc_trim(size_t pad)`, or None where the C library does not have it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def available() -> bool:
    """Whether `release` can return memory on this platform."""
    return _malloc_trim() is not None


def release() -> bool:
    """Returns the free pages of every malloc arena to the OS; True if any memory was released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
