"""Keras's poolings: ``Max/AveragePooling1D/2D/3D`` (with a fast path where XLA is slow)
and the adaptive poolings (``AdaptiveAveragePooling1D/2D/3D``, ``AdaptiveMaxPooling*``).

**Max and average pooling.**  XLA on CPU runs ``reduce_window`` at about a tenth of the
speed of TensorFlow's pooling kernels (a 3x3 'same' average pool over (8, 35, 35, 288):
18-30 ms against TF's 2 ms; a 3x3 stride-2 max pool over (8, 147, 147, 64): 22-28 ms
against 2.6 ms).  A window reduction is separable: reduce along one spatial axis at a
time, each as the max or sum of the window's shifted, strided slices; XLA fuses that
into loops that run as fast as TF's (2 ms and 2.5 ms there).  ``impl="auto"`` picks
``"shift"`` on CPU and XLA's ``reduce_window`` (``"xla"``, Flax's ``nn.max_pool`` /
``nn.avg_pool``) elsewhere; ``KGEN_POOL=xla|shift`` forces one, and tests compare them.
The max pool's gradient is always ``reduce_window``'s (a tie in a window gives the
whole gradient to one cell, as TensorFlow's ``MaxPoolGrad`` does; ``jnp.maximum``
would split it).  Average pooling divides by the number of real cells in each window,
as Keras's 'same' pooling does (Flax's ``count_include_pad=False``).

**Adaptive pooling.**  Output bin ``i`` of a spatial axis of length ``n`` pooled to ``m`` covers
``[floor(i * n / m), ceil((i + 1) * n / m))``, as in Keras's backends (and PyTorch);
bins may overlap and differ in size by one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kgen.runtime.conv import _pads, resolve_impl

__all__ = ["adaptive_bins", "adaptive_pool", "avg_pool", "max_pool", "pool_impl"]

POOL_IMPLS = ("auto", "xla", "shift")


def pool_impl(impl: str = "auto") -> str:
    """The implementation ``impl`` resolves to on the current backend."""
    return resolve_impl("pool", impl, POOL_IMPLS, "KGEN_POOL")


def _geometry(x, window, strides, padding):
    n = x.ndim - 2
    window = tuple(int(w) for w in window)
    strides = (1,) * n if strides is None else tuple(int(s) for s in strides)
    pads = tuple(
        _pads(size, w, s, 1, padding.upper()) for size, w, s in zip(x.shape[1:-1], window, strides)
    )
    return window, strides, pads


def _separable(x, window, strides, pads, fill, combine):
    """Reduce each spatial axis in turn over its window: ``combine`` of strided slices."""
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    for axis, (w, s) in enumerate(zip(window, strides), start=1):
        out = (x.shape[axis] - w) // s + 1
        pieces = [lax.slice_in_dim(x, k, k + (out - 1) * s + 1, s, axis) for k in range(w)]
        x = functools.reduce(combine, pieces)
    return x


def _lowest(dtype):
    dtype = jnp.dtype(dtype)
    return -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min


def _max_reduce_window(x, window, strides, pads):
    return lax.reduce_window(
        x,
        _lowest(x.dtype),  # a Python scalar: reduce_window_max, which has a gradient
        lax.max,
        (1, *window, 1),
        (1, *strides, 1),
        ((0, 0), *pads, (0, 0)),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_shift(x, window, strides, pads):
    return _separable(x, window, strides, pads, _lowest(x.dtype), jnp.maximum)


def _max_shift_fwd(x, window, strides, pads):
    return _max_shift(x, window, strides, pads), x


def _max_shift_bwd(window, strides, pads, x, g):
    _, vjp = jax.vjp(lambda a: _max_reduce_window(a, window, strides, pads), x)
    return vjp(g)


_max_shift.defvjp(_max_shift_fwd, _max_shift_bwd)


def max_pool(
    x,
    window: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str = "VALID",
    impl: str = "auto",
):
    """Keras ``MaxPooling1D/2D/3D`` on a channels-last ``x``: ``nn.max_pool``'s
    arguments (``strides`` default 1, ``padding`` ``"VALID"`` or ``"SAME"``)."""
    if pool_impl(impl) == "xla":
        return nn.max_pool(x, tuple(window), strides=strides, padding=padding)
    return _max_shift(x, *_geometry(x, window, strides, padding))


def avg_pool(
    x,
    window: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str = "VALID",
    impl: str = "auto",
):
    """Keras ``AveragePooling1D/2D/3D``: each window's mean over its real (unpadded)
    cells, as ``nn.avg_pool(..., count_include_pad=False)``."""
    if pool_impl(impl) == "xla":
        return nn.avg_pool(
            x, tuple(window), strides=strides, padding=padding, count_include_pad=False
        )
    window, strides, pads = _geometry(x, window, strides, padding)
    total = _separable(x, window, strides, pads, 0, jnp.add)
    # the real cells of a window: a box, so the count is a product over the axes
    inverse = np.ones((1,) * x.ndim, np.float64)
    for axis, (w, s, (lo, hi)) in enumerate(zip(window, strides, pads), start=1):
        real = np.pad(np.ones(x.shape[axis]), (lo, hi))
        count = np.array(
            [real[i * s : i * s + w].sum() for i in range(total.shape[axis])], np.float64
        )
        shape = [1] * x.ndim
        shape[axis] = count.size
        inverse = inverse * (1.0 / count).reshape(shape)
    return total * jnp.asarray(inverse, total.dtype)


def adaptive_bins(n: int, m: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each of the ``m`` bins over an axis of length ``n``."""
    return [((i * n) // m, -((-(i + 1) * n) // m)) for i in range(m)]


def adaptive_pool(x, output_size: Sequence[int], reduce: str = "mean"):
    """Pool the spatial axes of a channels-last ``x`` to ``output_size`` bins each."""
    fn = {"mean": jnp.mean, "max": jnp.max}[reduce]
    for axis, m in enumerate(output_size, start=1):
        bins = adaptive_bins(x.shape[axis], int(m))
        x = jnp.stack(
            [fn(lax.slice_in_dim(x, s, e, axis=axis), axis=axis) for s, e in bins], axis=axis
        )
    return x
