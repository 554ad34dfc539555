"""tf.keras ``LocallyConnected1D/2D``: a convolution whose kernel differs at each output
position (an unshared convolution), with ``padding="valid"``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def patches(x, kernel_size: Sequence[int], strides: Sequence[int]):
    """``(batch, positions, prod(kernel_size) * channels)`` and the output's spatial
    shape: each output position's receptive field, positions row-major, each patch
    flattened in ``(k1, ..., channels)`` order, as tf.keras's ``backend.local_conv``
    builds them."""
    n = len(kernel_size)
    spatial = x.shape[1:-1]
    out = [(d - k) // s + 1 for d, k, s in zip(spatial, kernel_size, strides)]
    index = []
    for d in range(n):
        starts = np.arange(out[d]) * strides[d]
        idx = starts[:, None] + np.arange(kernel_size[d])[None, :]  # (out_d, k_d)
        shape = [1] * (2 * n)
        shape[d], shape[n + d] = out[d], kernel_size[d]
        index.append(idx.reshape(shape))
    gathered = x[(slice(None), *index, slice(None))]  # (batch, *out, *kernel, channels)
    return gathered.reshape(x.shape[0], math.prod(out), -1), tuple(out)


class LocallyConnected(nn.Module):
    """``kernel``: ``(positions, prod(kernel_size) * channels_in, filters)``; ``bias``:
    ``(*output_spatial, filters)``.  The activation is applied by the caller."""

    filters: int
    kernel_size: Sequence[int]
    strides: Sequence[int]
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        p, out = patches(x, self.kernel_size, self.strides)
        kernel = self.param("kernel", nn.initializers.zeros, (p.shape[1], p.shape[2], self.filters))
        y = jnp.einsum("bpk,pkf->bpf", p, kernel).reshape(x.shape[0], *out, self.filters)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (*out, self.filters))
        return y
