"""Functions for Keras semantics that differ from the jax.nn/flax defaults."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "batch_reshape",
    "crop",
    "hard_shrink",
    "hard_sigmoid_tf_keras",
    "leaky_relu",
    "relu",
    "soft_shrink",
    "softmax",
    "sparsemax",
    "tanh_shrink",
    "zero_pad",
]


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras ``ReLU`` layer / ``activations.relu`` with all its options.

    Follows ``keras.src.activations.activations.ReLU.static_call``: keep ``x`` where
    ``x > threshold`` (so ``x == threshold`` gives 0), clip to ``[0, max_value]``, then
    subtract ``negative_slope * relu(threshold - x)``.
    """
    if negative_slope == 0.0 and max_value is None and threshold == 0.0:
        return jax.nn.relu(x)
    if max_value is None and threshold == 0.0:
        return leaky_relu(x, negative_slope)
    y = jnp.where(x > threshold, x, 0.0) if threshold != 0.0 else jax.nn.relu(x)
    if max_value is not None:
        y = jnp.clip(y, 0.0, max_value)
    if negative_slope != 0.0:
        y = y - negative_slope * jax.nn.relu(threshold - x)
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


def softmax(x, axis=-1, impl: str = "auto"):
    """``jax.nn.softmax(x, axis)``: on CPU with the maximum it subtracts taken by
    ``argmax`` (see :func:`_row_max`); ``impl="xla"`` (or ``KGEN_SOFTMAX=xla``, or another
    backend) is ``jax.nn.softmax`` itself."""
    m = _row_max(x, axis, impl)
    if m is None:
        return jax.nn.softmax(x, axis=axis)
    unnormalized = jnp.exp(x - m)
    return unnormalized / jnp.sum(unnormalized, axis=axis, keepdims=True)


def log_softmax(x, axis=-1, impl: str = "auto"):
    """``jax.nn.log_softmax(x, axis)``, its maximum found as :func:`softmax` finds it."""
    m = _row_max(x, axis, impl)
    if m is None:
        return jax.nn.log_softmax(x, axis=axis)
    shifted = x - m
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def _row_max(x, axis, impl: str):
    """The maximum along ``axis`` (kept as a dim, no gradient), found by ``argmax`` and
    a gather on CPU; ``None`` where ``jax.nn.softmax`` should run as it is.

    XLA's CPU compiler (jaxlib 0.10) fuses a softmax's ``reduce_max`` with the dense
    layers before it into one YNNPACK region, which then runs them many times over:
    VGG16's head (three dense layers, softmax) took 1.1 s at batch 8 against 49 ms
    without the fusion.  An ``argmax`` is a two-output reduction, which the fusion
    leaves out; the values are the same (the same maximum is subtracted)."""
    from kgen.runtime.conv import resolve_impl

    if resolve_impl("softmax", impl, ("auto", "xla", "argmax"), "KGEN_SOFTMAX") == "xla":
        return None
    if not isinstance(axis, int) or x.ndim == 0:
        return None
    index = jnp.expand_dims(jnp.argmax(x, axis=axis), axis)
    return jax.lax.stop_gradient(jnp.take_along_axis(x, index, axis=axis))


def masked_softmax(x, mask, axis=-1):
    """Keras 3 ``Softmax`` called with a ``mask``: masked positions (``mask`` False, or
    not above 0.5) get ``-1e9`` (``-3e4`` in float16) before the softmax and 0 after it,
    so a fully masked row is all zeros."""
    mask = mask if mask.dtype == jnp.bool_ else mask > 0.5
    large_negative = -3e4 if x.dtype == jnp.float16 else -1e9
    out = jax.nn.softmax(jnp.where(mask, x, large_negative), axis=axis)
    return jnp.where(mask, out, 0.0)


def soft_shrink(x, threshold=0.5):
    return jnp.where(x > threshold, x - threshold, jnp.where(x < -threshold, x + threshold, 0.0))


def hard_shrink(x, threshold=0.5):
    return jnp.where(jnp.abs(x) > threshold, x, 0.0)


def tanh_shrink(x):
    return x - jnp.tanh(x)


def sparsemax(x, axis=-1):
    """``keras.ops.sparsemax`` exactly as every Keras 3 backend computes it.

    Keras's threshold is ``tau = (sum of the cumulative sums over the support - 1) / k``,
    not the paper's ``(cumsum[k - 1] - 1) / k`` (Martins & Astudillo, 2016), so its output
    need not sum to 1; parity with Keras wins here.
    """
    z_sorted = -jnp.sort(-x, axis=axis)
    cumsum = jnp.cumsum(z_sorted, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    r = jnp.arange(1, x.shape[axis] + 1, dtype=x.dtype).reshape(shape)
    support = z_sorted - (cumsum - 1) / r > 0
    k = jnp.sum(support, axis=axis, keepdims=True).astype(x.dtype)
    tau = (jnp.sum(jnp.where(support, cumsum, 0.0), axis=axis, keepdims=True) - 1) / k
    return jnp.maximum(x - tau, 0.0)


def batch_reshape(x, target):
    """``layers.Reshape``: ``target`` excludes the batch dim and may hold one -1."""
    return jnp.reshape(x, (x.shape[0], *target))
