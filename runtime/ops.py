"""Functions for Keras semantics that differ from the jax.nn/flax defaults."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "relu",
    "leaky_relu",
    "hard_sigmoid_tf_keras",
    "zero_pad",
    "crop",
    "softmax",
    "soft_shrink",
    "hard_shrink",
    "tanh_shrink",
    "sparsemax",
    "batch_reshape",
]


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras ``ReLU`` layer / ``activations.relu`` with all its options."""
    if negative_slope == 0.0 and max_value is None and threshold == 0.0:
        return jax.nn.relu(x)
    if threshold != 0.0:
        neg = negative_slope * (x - threshold)
        y = jnp.where(x >= threshold, x, neg)
    else:
        y = jnp.where(x >= 0, x, negative_slope * x)
    if max_value is not None:
        y = jnp.minimum(y, max_value)
    return y


def leaky_relu(x, negative_slope):
    return jnp.where(x >= 0, x, negative_slope * x)


def hard_sigmoid_tf_keras(x):
    """tf.keras 2 ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)`` (Keras 3 uses relu6(x+3)/6)."""
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def zero_pad(x, pads):
    """``jnp.pad`` of the spatial dims (channels-last); ``pads`` excludes batch/channels."""
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def crop(x, crops):
    """Keras ``Cropping*D``; ``crops`` is ((lo, hi), ...) over the spatial dims."""
    index = [slice(None)]
    for lo, hi in crops:
        index.append(slice(lo, -hi if hi else None))
    return x[tuple(index)]


def softmax(x, axis=-1):
    return jax.nn.softmax(x, axis=axis)


def soft_shrink(x, threshold=0.5):
    return jnp.where(x > threshold, x - threshold, jnp.where(x < -threshold, x + threshold, 0.0))


def hard_shrink(x, threshold=0.5):
    return jnp.where(jnp.abs(x) > threshold, x, 0.0)


def tanh_shrink(x):
    return x - jnp.tanh(x)


def sparsemax(x, axis=-1):
    """Sparsemax (Martins & Astudillo, 2016), as ``keras.ops.sparsemax``."""
    z = jnp.moveaxis(x, axis, -1)
    z_sorted = -jnp.sort(-z, axis=-1)
    k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cumsum = jnp.cumsum(z_sorted, axis=-1)
    support = (1 + k * z_sorted) > cumsum
    k_z = jnp.sum(support, axis=-1, keepdims=True).astype(z.dtype)
    tau = (jnp.take_along_axis(cumsum, k_z.astype(jnp.int32) - 1, axis=-1) - 1) / k_z
    return jnp.moveaxis(jnp.maximum(z - tau, 0.0), -1, axis)


def batch_reshape(x, target):
    """``layers.Reshape``: ``target`` excludes the batch dim and may hold one -1."""
    return jnp.reshape(x, (x.shape[0], *target))
