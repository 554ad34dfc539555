"""Flax modules for Keras layers that need more than one line of generated code.

Each reproduces the Keras inference formula exactly (see the notes on each class); the
generated modules call them as ``rt.<Name>(...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from kgen.runtime.conv import Conv, DepthwiseConv

__all__ = ["BatchNorm", "PReLU", "ReversibleEmbedding", "SeparableConv"]


def _broadcast_shape(ndim: int, axes: Sequence[int], sizes: Sequence[int]) -> list[int]:
    shape = [1] * ndim
    for a, s in zip(axes, sizes):
        shape[a] = s
    return shape


class BatchNorm(nn.Module):
    """Keras ``BatchNormalization``.

    Inference uses the Keras/TF form ``x * inv + (beta - mean * inv)`` with
    ``inv = rsqrt(var + eps) * gamma``, which rounds differently from Flax's
    ``(x - mean) * inv + beta``.  Training normalises with the biased batch variance and
    updates ``batch_stats`` (when mutable) as ``m * momentum + batch * (1 - momentum)``; set
    ``unbiased_update`` for tf.keras's fused kernel, which updates the moving variance
    with the unbiased ``n / (n - 1)`` batch variance.
    """

    axis: Sequence[int] = (-1,)
    epsilon: float = 1e-3
    momentum: float = 0.99
    center: bool = True
    scale: bool = True
    unbiased_update: bool = False

    @nn.compact
    def __call__(self, x, *, use_running_average: bool = True):
        axes = tuple(a % x.ndim for a in self.axis)
        feature_shape = tuple(x.shape[a] for a in axes)
        mean_v = self.variable("batch_stats", "mean", jnp.zeros, feature_shape, jnp.float32)
        var_v = self.variable("batch_stats", "var", jnp.ones, feature_shape, jnp.float32)
        gamma = self.param("scale", nn.initializers.ones, feature_shape) if self.scale else None
        beta = self.param("bias", nn.initializers.zeros, feature_shape) if self.center else None
        y, update = batch_norm(
            x,
            gamma,
            beta,
            mean_v.value,
            var_v.value,
            axis=self.axis,
            epsilon=self.epsilon,
            use_running_average=use_running_average,
            unbiased_update=self.unbiased_update,
        )
        # Only when the caller lets batch_stats change (``mutable=["batch_stats"]``): a
        # tf.keras layer called with ``training=True`` uses batch statistics even
        # when the generated module runs for inference.
        mutable = self.is_mutable_collection("batch_stats") and not self.is_initializing()
        if update is not None and mutable:
            moving = (mean_v.value, var_v.value)
            mean_v.value, var_v.value = moving_update(moving, update, self.momentum)
        return y


def batch_norm(
    x,
    gamma,
    beta,
    moving_mean,
    moving_var,
    *,
    axis: Sequence[int],
    epsilon: float,
    use_running_average: bool,
    unbiased_update: bool = False,
):
    """Keras's BatchNormalization on ``x`` (see :class:`BatchNorm`), for the linen and
    the NNX module alike.  Returns ``(y, update)``: ``update`` is None with
    ``use_running_average``, else the batch ``(mean, variance)`` to move the moving
    statistics towards (the variance unbiased with ``unbiased_update``), gradient-free.
    """
    # float16/bfloat16 in (mixed precision): statistics and normalisation in float32,
    # the input's dtype out, as Keras's BatchNormalization does
    dtype, x = x.dtype, _at_least_float32(x)
    axes = tuple(a % x.ndim for a in axis)
    feature_shape = tuple(x.shape[a] for a in axes)
    gamma, beta = (None if p is None else p.astype(x.dtype) for p in (gamma, beta))
    update = None
    if use_running_average:
        mean, var = moving_mean, moving_var
    else:
        reduce = tuple(i for i in range(x.ndim) if i not in axes)
        mean = jnp.mean(x, axis=reduce)
        # As tf.nn.moments (Keras 3 and tf.keras): no gradient through the mean inside
        # the variance, a term that is zero in exact arithmetic (deviations sum to 0).
        centered = x - lax.stop_gradient(jnp.expand_dims(mean, reduce))
        var = jnp.mean(jnp.square(centered), axis=reduce)
        n = 1
        for i in reduce:
            n *= x.shape[i]
        update_var = var * (n / max(n - 1, 1)) if unbiased_update else var
        update = (lax.stop_gradient(mean), lax.stop_gradient(update_var))
    shape = _broadcast_shape(x.ndim, axes, feature_shape)
    inv = lax.rsqrt(var + epsilon)
    if gamma is not None:
        inv = inv * gamma
    shift = -mean * inv if beta is None else beta - mean * inv
    return (x * inv.reshape(shape) + shift.reshape(shape)).astype(dtype), update


def moving_update(moving: tuple, batch: tuple, momentum: float) -> tuple:
    """Keras's moving statistics after one batch: ``m * momentum + b * (1 - momentum)``."""
    return tuple(m * momentum + b * (1.0 - momentum) for m, b in zip(moving, batch))


def _at_least_float32(x):
    """``x`` in float32 if it is a narrower float (float16, bfloat16), else as it is."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class SeparableConv(nn.Module):
    """Keras ``SeparableConv1D/2D``: depthwise conv (the layer's strides, padding and
    dilation), then a 1x1 pointwise conv, then one bias.  The activation is applied by
    the caller.  The depthwise half is :class:`~kgen.runtime.conv.DepthwiseConv` (fast on
    CPU); ``impl`` picks its implementation."""

    features: int
    kernel_size: Sequence[int]
    depth_multiplier: int = 1
    strides: Sequence[int] | int = 1
    padding: str = "VALID"
    kernel_dilation: Sequence[int] | int = 1
    use_bias: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        ones = (1,) * len(self.kernel_size)
        x = DepthwiseConv(
            channels * self.depth_multiplier,
            tuple(self.kernel_size),
            strides=self.strides,
            padding=self.padding,
            kernel_dilation=self.kernel_dilation,
            use_bias=False,
            impl=self.impl,
            name="depthwise",
        )(x)
        return Conv(self.features, ones, padding="VALID", use_bias=self.use_bias, name="pointwise")(
            x
        )


class PReLU(nn.Module):
    """Keras ``PReLU``: ``relu(x) - alpha * relu(-x)``, alpha shaped like the input minus
    the batch dim, with the shared axes set to 1 (Flax's PReLU is scalar-only)."""

    alpha_shape: Sequence[int]

    @nn.compact
    def __call__(self, x):
        alpha = self.param("alpha", nn.initializers.zeros, tuple(self.alpha_shape))
        return jax.nn.relu(x) - alpha * jax.nn.relu(-x)


class ReversibleEmbedding(nn.Module):
    """Keras ``ReversibleEmbedding``: an embedding table, and with ``reverse=True`` the
    projection back onto the vocabulary, ``x @ embedding.T`` (or ``x @
    reverse_embeddings`` when ``tie_weights`` is off), optionally soft-capped as
    ``tanh(logits / cap) * cap``.  Tokens are cast to int32, as Keras casts them."""

    num_embeddings: int
    features: int
    tie_weights: bool = True
    logit_soft_cap: float | None = None

    @nn.compact
    def __call__(self, x, reverse: bool = False):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
        table = self.param("embedding", init, (self.num_embeddings, self.features))
        kernel = (
            table.T
            if self.tie_weights
            else self.param(
                "reverse_embeddings",
                nn.initializers.lecun_normal(),
                (self.features, self.num_embeddings),
            )
        )
        if not reverse:
            return jnp.take(table, jnp.asarray(x, jnp.int32), axis=0)
        logits = x @ kernel
        if self.logit_soft_cap is not None:
            logits = jnp.tanh(logits / self.logit_soft_cap) * self.logit_soft_cap
        return logits
