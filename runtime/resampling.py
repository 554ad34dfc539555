"""Keras image resampling: ``ops.image.resize`` (``Resizing``, non-nearest
``UpSampling2D``), ``CenterCrop`` and nearest up-sampling, channels-last.

The reference is Keras on the TensorFlow backend (``tf.image.resize``, half-pixel
centres).  Without antialiasing, ``jax.image.resize`` matches it for nearest, bilinear
and the Lanczos kernels; TF's bicubic kernel samples its Keys cubic (a = -0.5) from a
table at offsets rounded to 1/1024, which :func:`resize` reproduces (``jax.image.resize``
and Keras on the JAX backend differ from it by up to ~1e-3).  With ``antialias=True``
TF and JAX share ``scale_and_translate`` for every kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["center_crop", "resize", "upsample"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5")


def resize(
    x,
    size: Sequence[int],
    interpolation: str = "bilinear",
    *,
    antialias: bool = False,
    crop_to_aspect_ratio: bool = False,
    pad_to_aspect_ratio: bool = False,
    fill_value: float = 0.0,
):
    """``keras.ops.image.resize`` of a batch of images ``(batch, height, width, channels)``.

    ``crop_to_aspect_ratio`` first takes the largest centred crop with the target's
    aspect ratio; ``pad_to_aspect_ratio`` first pads with ``fill_value`` to it.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {interpolation!r}")
    height, width = (int(s) for s in size)
    if crop_to_aspect_ratio:
        x = _crop_to_aspect_ratio(x, height, width)
    elif pad_to_aspect_ratio:
        x = _pad_to_aspect_ratio(x, height, width, fill_value)
    if interpolation == "bicubic" and not antialias:
        return _resize_bicubic_tf(x, height, width)
    method = "cubic" if interpolation == "bicubic" else interpolation
    shape = (x.shape[0], height, width, x.shape[-1])
    return jax.image.resize(x, shape, method=method, antialias=antialias)


def upsample(x, size: Sequence[int], interpolation: str = "nearest"):
    """``UpSampling2D``/``UpSampling3D``: repeat each spatial dim ``size[i]`` times
    (nearest), or :func:`resize` to ``size`` times the input (2-D only)."""
    if interpolation == "nearest":
        for axis, factor in enumerate(size, start=1):
            if factor != 1:
                x = jnp.repeat(x, factor, axis=axis)
        return x
    target = tuple(d * f for d, f in zip(x.shape[1:-1], size))
    return resize(x, target, interpolation)


def center_crop(x, height: int, width: int):
    """Keras ``CenterCrop``: the centred ``height x width`` window; when the input is
    smaller in either dim, crop to the target aspect ratio and resize (bilinear)."""
    h, w = x.shape[1], x.shape[2]
    if h >= height and w >= width:
        top, left = (h - height) // 2, (w - width) // 2
        return x[:, top : top + height, left : left + width]
    return resize(x, (height, width), "bilinear", crop_to_aspect_ratio=True)


def _aspect(size: int, target_other: int, target_this: int) -> int:
    # TF computes int32(float32(size * target_other) / target_this).
    return int(np.float32(size * target_other) / np.float32(target_this))


def _crop_to_aspect_ratio(x, height: int, width: int):
    h, w = x.shape[1], x.shape[2]
    crop_h = max(min(h, _aspect(w, height, width)), 1)
    crop_w = max(min(w, _aspect(h, width, height)), 1)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return x[:, top : top + crop_h, left : left + crop_w]


def _pad_to_aspect_ratio(x, height: int, width: int, fill_value: float):
    h, w = x.shape[1], x.shape[2]
    pad_h = max(h, _aspect(w, height, width))
    pad_w = max(w, _aspect(h, width, height))
    top, left = (pad_h - h) // 2, (pad_w - w) // 2  # the same amount on both sides
    pads = ((0, 0), (top, top), (left, left), (0, 0))
    return jnp.pad(x, pads, constant_values=jnp.asarray(fill_value, x.dtype))


_TABLE_SIZE = 1024  # tensorflow/core/kernels/image/resize_bicubic_op.cc: kTableSize


def _keys_cubic_table(a: float = -0.5) -> np.ndarray:
    """TF's coefficient table: entry 2i is the weight at distance i/1024, 2i+1 at 1+i/1024."""
    a = np.float32(a)
    table = np.empty(2 * (_TABLE_SIZE + 1), np.float32)
    for i in range(_TABLE_SIZE + 1):
        t = np.float32(i / _TABLE_SIZE)
        table[2 * i] = ((a + 2) * t - (a + 3)) * t * t + 1
        t = t + np.float32(1.0)
        table[2 * i + 1] = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return table


def _bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) interpolation matrix of TF's ``ResizeBicubic(half_pixel_centers=True)``:
    taps outside the image get weight 0 and the rest are renormalised."""
    table = _keys_cubic_table()
    scale = np.float32(in_size) / np.float32(out_size)
    weights = np.zeros((out_size, in_size), np.float32)
    for o in range(out_size):
        loc = (np.float32(o) + np.float32(0.5)) * scale - np.float32(0.5)
        base = int(np.floor(loc))
        offset = int(np.rint((loc - np.float32(base)) * _TABLE_SIZE))
        taps = (
            table[offset * 2 + 1],
            table[offset * 2],
            table[(_TABLE_SIZE - offset) * 2],
            table[(_TABLE_SIZE - offset) * 2 + 1],
        )
        kept = [(base - 1 + k, t) for k, t in enumerate(taps) if 0 <= base - 1 + k < in_size]
        total = np.float32(sum(t for _, t in kept))
        for i, t in kept:
            weights[o, i] += t / total if abs(total) > 0 else t
    return weights


def _resize_bicubic_tf(x, height: int, width: int):
    wh = jnp.asarray(_bicubic_weights(x.shape[1], height))
    ww = jnp.asarray(_bicubic_weights(x.shape[2], width))
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", wh, x, precision=hp)
    return jnp.einsum("pw,bowc->bopc", ww, x, precision=hp)
