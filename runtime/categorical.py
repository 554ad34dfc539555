"""Keras's ``CategoryEncoding`` and ``Discretization`` (dense outputs), as Keras's
TensorFlow backend computes them."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["discretize", "encode_categorical"]


def encode_categorical(x, depth: int, output_mode: str, dtype=jnp.float32):
    """``one_hot``: a trailing axis of size 1 is replaced by the encoding, any other
    input gains one.  ``multi_hot`` / ``count``: presence / count of each token along the
    last axis (a rank-1 input is one sample).  Tokens outside ``[0, depth)`` count as
    nothing."""
    if output_mode == "one_hot":
        if x.ndim > 1 and x.shape[-1] == 1:
            x = x[..., 0]
        return jax.nn.one_hot(x, depth, dtype=dtype)
    hot = jax.nn.one_hot(x, depth, dtype=dtype)
    if output_mode == "multi_hot":
        return jnp.max(hot, axis=-2)
    if output_mode == "count":
        return jnp.sum(hot, axis=-2)
    raise ValueError(f"unknown output_mode {output_mode!r}")


def discretize(x, bin_boundaries: Sequence[float]):
    """Bucket index ``i`` with ``boundaries[i-1] <= x < boundaries[i]`` (int32)."""
    bins = jnp.asarray(bin_boundaries, dtype=jnp.float32)
    return jnp.searchsorted(bins, x, side="right").astype(jnp.int32)
