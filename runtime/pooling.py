"""Keras's adaptive poolings (``AdaptiveAveragePooling1D/2D/3D``, ``AdaptiveMaxPooling*``).

Output bin ``i`` of a spatial axis of length ``n`` pooled to ``m`` covers
``[floor(i * n / m), ceil((i + 1) * n / m))``, as in Keras's backends (and PyTorch);
bins may overlap and differ in size by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

__all__ = ["adaptive_bins", "adaptive_pool"]


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
