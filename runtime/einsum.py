"""Keras ``EinsumDense``: ``einsum(equation, x, kernel) + bias`` with Keras's own
variable shapes (the kernel shape and bias shape come from the converted layer)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["EinsumDense"]


class EinsumDense(nn.Module):
    equation: str
    kernel_shape: Sequence[int]
    bias_shape: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), tuple(self.kernel_shape))
        y = jnp.einsum(self.equation, x, kernel)
        if self.bias_shape is not None:
            y = y + self.param("bias", nn.initializers.zeros, tuple(self.bias_shape))
        return y
