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
    kernel_axes: Sequence[str] | None = None  # logical axis names, for tensor parallelism
    bias_axes: Sequence[str] | None = None

    @nn.compact
    def __call__(self, x):
        from kgen.runtime.attention import logical_init

        init = logical_init(nn.initializers.lecun_normal(), self.kernel_axes)
        kernel = self.param("kernel", init, tuple(self.kernel_shape))
        y = jnp.einsum(self.equation, x, kernel)
        if self.bias_shape is not None:
            bias_init = logical_init(nn.initializers.zeros, self.bias_axes)
            y = y + self.param("bias", bias_init, tuple(self.bias_shape))
        return y
