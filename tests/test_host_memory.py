"""Compiling a step ahead of its first call, and returning freed host memory to the OS."""

import ctypes

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from peft_jax.bench.worker import rss_mb
from peft_jax.train import host_memory, step


@pytest.mark.skipif(not host_memory.available(), reason="no glibc malloc_trim on this platform")
def test_release_returns_freed_heap_pages_to_the_os():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunk, count = 64 * 1024, 2048  # 128 MiB in chunks small enough for the heap, not mmap
    ptrs = [libc.malloc(chunk) for _ in range(count)]
    for p in ptrs:
        ctypes.memset(p, 1, chunk)  # make every page resident
    sentinel = libc.malloc(chunk)  # keeps the freed chunks below the top of the heap (no automatic trim)
    for p in ptrs:
        libc.free(p)
    before = rss_mb()
    host_memory.release()
    after = rss_mb()
    libc.free(sentinel)
    assert before - after > 64, f"RSS {before:.0f} MiB -> {after:.0f} MiB: the freed 128 MiB were not returned"


def test_compile_step_compiles_once_and_consumes_no_donated_argument():
    fn = jax.jit(lambda a, b: (a * 2.0 + b, b + 1.0), donate_argnums=(0,))
    a, b = jnp.arange(6.0).reshape(2, 3), jnp.ones((2, 3))
    compiles = []

    def listener(event, secs, **kw):
        if event.endswith("backend_compile_duration"):
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        step.compile_step(fn, a, b)
        assert len(compiles) == 1
        assert not a.is_deleted(), "compile_step consumed a donated argument"
        out, _ = fn(a, b)
        assert len(compiles) == 1, "the first call compiled again"
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    np.testing.assert_array_equal(np.asarray(out), np.arange(6.0).reshape(2, 3) * 2 + 1)
