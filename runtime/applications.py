"""Flax modules for layers that ``keras.applications`` defines for one model family."""

from __future__ import annotations

import flax.linen as nn

__all__ = ["LayerScale"]


class LayerScale(nn.Module):
    """ConvNeXt's ``LayerScale``: ``x * gamma`` with a learned ``gamma`` of shape ``(dim,)``."""

    dim: int

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.zeros, (self.dim,))
        return x * gamma
