"""Host memory for serving on CPU: the buffers XLA frees after a call, kept for the next.

XLA's CPU client allocates a call's temporary buffer afresh on every call and frees it
after (one block for all of a program's temporaries: 78 MB for the generated MobileNetV2
at batch 8).  With glibc's defaults a block above 32 MiB is a fresh ``mmap``, unmapped
when freed, so its pages fault in, 4 KiB at a time and zeroed, on every call: 19,000
faults per call there, a quarter of its time on a 2-core VM.  TensorFlow's own allocator
keeps its memory.

Two settings stop it, and :func:`keep_memory` makes both:

- glibc's malloc neither maps large blocks on their own (``M_MMAP_MAX`` 0) nor hands
  freed memory back to the system (``M_TRIM_THRESHOLD``), so a freed block stays in the
  heap for the next call;
- JAX runs a CPU computation on the thread that calls it (``jax_cpu_enable_async_dispatch``
  off) instead of on a worker thread of XLA's.  glibc gives each thread a malloc arena of
  its own, and a thread's arena other than the main thread's grows in heaps of at most
  64 MiB: a larger block is mapped whatever the settings say.  Called from the main
  thread, the block comes from the main heap, which has no such bound.

So the gain is for a model called from the process's main thread (as ``kgen bench``
does); another thread's large blocks are still mapped per call.  Without asynchronous
dispatch a call returns when its result is ready, which changes nothing for code that
waits for the result anyway (a server answering a request), but a training loop that
prepares the next batch while the device runs loses that overlap: this is for serving.

Both are process-wide, so kgen never makes them on its own: a server calls
:func:`keep_memory` once, first thing, and ``kgen bench`` calls it in the generated
module's process.  It must run before JAX starts its CPU backend, which reads the
dispatch setting when it starts.  An earlier form of this also made every thread share
one malloc arena (``M_ARENA_MAX`` 1), which cost batch 1 3-13%; it is not needed once
the main thread allocates (docs/performance.md, Run 11).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_memory"]

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
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
    """Keep the memory XLA frees after each call on CPU for the next call, so that large
    buffers are not mapped, faulted in and zeroed again (see the module doc): glibc's
    malloc maps no large block on its own and hands nothing back, and JAX runs CPU
    computations on the calling thread.  Call it once, from the main thread, before JAX
    runs anything (before the first computation, ``jax.devices()`` or a module's
    ``init``), and call the model from the main thread; it affects the whole process.

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
            "first computation or jax.devices()); call it first thing"
        )
    for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"glibc's mallopt({param}, {value}) failed")
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    _kept = True
    return True
