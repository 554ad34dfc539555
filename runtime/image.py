"""Keras's deterministic image layers: ``AutoContrast``."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

__all__ = ["auto_contrast"]


def _rescale(x, source: Sequence[float], target: Sequence[float]):
    if tuple(source) == tuple(target):
        return x
    x = (x - source[0]) / (source[1] - source[0])
    return x * (target[1] - target[0]) + target[0]


def auto_contrast(images, value_range: Sequence[float] = (0.0, 255.0)):
    """Stretch each image's channels to the full ``value_range`` (channels last).

    Keras's formula step by step: a constant channel gives NaN there (0 * inf), and
    NaN results keep the input value.
    """
    value_range = tuple(float(v) for v in sorted(value_range))
    x = _rescale(images, value_range, (0.0, 255.0))
    low = jnp.min(x, axis=(1, 2), keepdims=True)
    high = jnp.max(x, axis=(1, 2), keepdims=True)
    scale = 255.0 / (high - low)
    offset = -low * scale
    y = jnp.clip(x * scale + offset, 0.0, 255.0)
    y = _rescale(y, (0.0, 255.0), value_range)
    return jnp.where(jnp.isnan(y), images, y)
