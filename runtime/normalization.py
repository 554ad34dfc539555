"""Keras ``LayerNormalization`` and ``Normalization`` (the preprocessing layer), and
``GroupNormalization`` and ``UnitNormalization``.

Both reproduce Keras 3's own inference formulas rather than Flax's ``LayerNorm``:
the statistics and the order of operations are Keras's, so results match to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from kgen.runtime.layers import _at_least_float32, _broadcast_shape

__all__ = ["GroupNorm", "LayerNorm", "Normalization", "l2_normalize", "normalize"]

#: ``keras.backend.epsilon()``, the floor under the standard deviation in ``Normalization``.
KERAS_EPSILON = 1e-7


class LayerNorm(nn.Module):
    """Keras 3 ``LayerNormalization`` over ``axis`` (one axis or several).

    Keras computes ``inv = rsqrt(var + eps) * gamma`` and ``x * inv + (beta - mean * inv)``
    with the biased variance about the mean (``tf.nn.moments``); Flax's ``LayerNorm``
    computes ``(x - mean) * inv + beta`` with a different epsilon default.
    ``rms_scaling`` is Keras's deprecated variant: ``x * rsqrt(var + eps) * gamma``, where
    ``var`` is still the variance about the mean, and there is no ``beta``.
    ``scale``/``bias`` have the shape of the normalised dims.
    """

    axis: Sequence[int] = (-1,)
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    rms_scaling: bool = False

    @nn.compact
    def __call__(self, x):
        axes = tuple(sorted(a % x.ndim for a in self.axis))
        feature_shape = tuple(x.shape[a] for a in axes)
        use_gamma = self.scale or self.rms_scaling
        use_beta = self.center and not self.rms_scaling
        gamma = self.param("scale", nn.initializers.ones, feature_shape) if use_gamma else None
        beta = self.param("bias", nn.initializers.zeros, feature_shape) if use_beta else None
        return layer_norm(
            x, gamma, beta, axis=self.axis, epsilon=self.epsilon, rms_scaling=self.rms_scaling
        )


def layer_norm(x, gamma, beta, *, axis: Sequence[int], epsilon: float, rms_scaling: bool):
    """Keras's LayerNormalization on ``x`` (see :class:`LayerNorm`); ``gamma``/``beta``
    shaped like the normalised dims, or None."""
    # float16/bfloat16 in: computed in float32, the input's dtype out (as Keras)
    dtype, x = x.dtype, _at_least_float32(x)
    axes = tuple(sorted(a % x.ndim for a in axis))
    feature_shape = tuple(x.shape[a] for a in axes)
    shape = _broadcast_shape(x.ndim, axes, feature_shape)
    gamma, beta = (None if p is None else p.astype(x.dtype) for p in (gamma, beta))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    inv = lax.rsqrt(var + epsilon)
    if rms_scaling:
        return (x * inv * gamma.reshape(shape)).astype(dtype)
    if gamma is not None:
        inv = inv * gamma.reshape(shape)
    shift = -mean * inv
    if beta is not None:
        shift = shift + beta.reshape(shape)
    return (x * inv + shift).astype(dtype)


def normalize(x, mean, variance, invert: bool = False):
    """Keras ``Normalization``: ``(x - mean) / max(sqrt(variance), 1e-7)``, or with
    ``invert`` the inverse ``mean + x * max(sqrt(variance), 1e-7)``.  ``mean`` and
    ``variance`` must already broadcast against ``x``."""
    std = jnp.maximum(jnp.sqrt(variance), KERAS_EPSILON)
    if invert:
        return mean + x * std
    return (x - mean) / std


class Normalization(nn.Module):
    """Keras ``Normalization`` whose statistics are weights (built without ``mean=`` /
    ``variance=``, then adapted or loaded; EfficientNet's input normalisation).

    The statistics are not trainable in Keras, so they live in the ``batch_stats``
    collection (next to BatchNorm's moving statistics, which training loops already
    thread through) as ``mean`` and ``variance``, shaped like the kept ``axis`` dims.
    The module never changes them.
    """

    axis: Sequence[int] = (-1,)
    invert: bool = False

    @nn.compact
    def __call__(self, x):
        axes = tuple(sorted(a % x.ndim for a in self.axis))
        feature_shape = tuple(x.shape[a] for a in axes)
        shape = _broadcast_shape(x.ndim, axes, feature_shape)
        mean = self.variable("batch_stats", "mean", jnp.zeros, feature_shape, jnp.float32)
        var = self.variable("batch_stats", "variance", jnp.ones, feature_shape, jnp.float32)
        return normalize(x, mean.value.reshape(shape), var.value.reshape(shape), self.invert)


class GroupNorm(nn.Module):
    """Keras ``GroupNormalization``: channels ``axis`` split into ``groups`` contiguous
    groups, each normalised over every other non-batch dim with the biased variance.

    Keras's formula ``inv = rsqrt(var + eps) * gamma``, ``x * inv + (beta - mean * inv)``
    (Flax's ``GroupNorm`` computes ``(x - mean) * inv + beta`` and its variance as
    ``E[x^2] - E[x]^2``).  ``scale``/``bias`` have one entry per channel.
    """

    groups: int
    axis: int = -1
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True

    @nn.compact
    def __call__(self, x):
        channels = x.shape[self.axis % x.ndim]
        gamma = self.param("scale", nn.initializers.ones, (channels,)) if self.scale else None
        beta = self.param("bias", nn.initializers.zeros, (channels,)) if self.center else None
        return group_norm(x, gamma, beta, groups=self.groups, axis=self.axis, epsilon=self.epsilon)


def group_norm(x, gamma, beta, *, groups: int, axis: int, epsilon: float):
    """Keras's GroupNormalization on ``x`` (see :class:`GroupNorm`); ``gamma``/``beta``
    of one entry per channel, or None."""
    dtype, x = x.dtype, _at_least_float32(x)  # as LayerNorm
    axis = axis % x.ndim
    channels = x.shape[axis]
    gamma, beta = (None if p is None else p.astype(x.dtype) for p in (gamma, beta))
    per_group = (groups, channels // groups)
    grouped = x.reshape(x.shape[:axis] + per_group + x.shape[axis + 1 :])
    reduce = tuple(i for i in range(1, grouped.ndim) if i != axis)
    mean = jnp.mean(grouped, axis=reduce, keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axis=reduce, keepdims=True)
    shape = _broadcast_shape(grouped.ndim, (axis, axis + 1), per_group)
    inv = lax.rsqrt(var + epsilon)
    if gamma is not None:
        inv = inv * gamma.reshape(shape)
    shift = -mean * inv
    if beta is not None:
        shift = shift + beta.reshape(shape)
    return (grouped * inv + shift).reshape(x.shape).astype(dtype)


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """Keras ``ops.normalize(order=2)``: ``x * min(rsqrt(sum(x^2)), 1 / epsilon)``, so an
    all-zero slice stays zero.  ``UnitNormalization`` uses ``epsilon=1e-12``, ``Dot``'s
    ``normalize`` Keras's default ``1e-7``."""
    square_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jnp.minimum(lax.rsqrt(square_sum), 1.0 / epsilon)
