"""Host memory for serving on CPU: glibc's malloc told to keep what XLA frees.

XLA's CPU client allocates its output and temporary buffers afresh on every call and
frees them after it.  With glibc's defaults a block above 32 MiB (a batch of 8 images at
112x112 with 96 channels is 38.5 MB) is a fresh ``mmap``, unmapped when freed, so its
pages fault in and are zeroed again on every call, and a call's threads, each with a
malloc arena of its own, cannot reuse one another's freed memory.  TensorFlow's own
allocator keeps its memory.  On a 2-core VM (docs/performance.md, Run 10) this cost the
generated MobileNetV2 a quarter of its time at batch 8: an ``x + 1`` over such a block
ran at 3.4 GB/s, where numpy's on the same buffer ran at 16 GB/s.

:func:`keep_memory` sets the three malloc parameters that stop this (one arena, no
``mmap`` for large blocks, freed memory kept), the same as starting the process with
``GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...``.
It changes the whole process's malloc, so kgen never calls it on its own: a server
calls it once, first thing, and ``kgen bench`` calls it in the generated module's
process.  It must run before JAX starts its CPU backend: the threads XLA starts then
take malloc arenas of their own, and a later call would change nothing for them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_memory"]

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
#: Freed memory at the top of the heap is handed back above this much (mallopt takes an
#: int): in practice, never.
TRIM_THRESHOLD = 2**31 - 1
_kept = False  # set once keep_memory() has taken effect in this process


def _glibc():
    """The process's C library if it is glibc (it has ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- musl and others lack it
    except (OSError, AttributeError):
        return None
    return libc


def _backend_started() -> bool:
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def keep_memory() -> bool:
    """Make glibc's malloc keep the memory XLA frees after each call, so that large
    buffers are not mapped, faulted in and zeroed again on the next: one malloc arena for
    every thread, no ``mmap`` for large blocks, freed memory not handed back to the
    system.  Call it once, before JAX runs anything (before the first computation,
    ``jax.devices()`` or a module's ``init``); it affects the whole process.

    Returns True when set (again True on later calls), False where the C library is not
    glibc (nothing to do).  Raises RuntimeError, changing nothing, when first called after
    JAX's backend has started."""
    global _kept
    if _kept:
        return True
    libc = _glibc()
    if libc is None:
        return False
    if _backend_started():
        raise RuntimeError(
            "kgen.runtime.keep_memory() must run before JAX starts its backend (before the "
            "first computation or jax.devices()); call it first thing, or start the "
            "process with GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
            f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
        )
    for param, value in (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_MAX, 0),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ):
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"glibc's mallopt({param}, {value}) failed")
    _kept = True
    return True
