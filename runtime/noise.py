"""Keras's training-time noise layers: ``GaussianNoise``, ``GaussianDropout``,
``AlphaDropout``.

All three are identities at inference (``deterministic=True``).  In training they draw
from the ``"dropout"`` rng stream, as ``flax.linen.Dropout`` does, with Keras's
formulas (the random numbers themselves differ from Keras's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax

__all__ = ["AlphaDropout", "GaussianDropout", "GaussianNoise"]


class GaussianNoise(nn.Module):
    """``x + N(0, stddev^2)`` in training."""

    stddev: float

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        if deterministic or self.stddev == 0:
            return x
        noise = jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype)
        return x + self.stddev * noise


class GaussianDropout(nn.Module):
    """``x * N(1, rate / (1 - rate))`` in training."""

    rate: float

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        if deterministic or self.rate == 0:
            return x
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        noise = jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype)
        return x * (1.0 + stddev * noise)


class AlphaDropout(nn.Module):
    """Keras ``AlphaDropout`` in training: dropped units are set to SELU's negative
    saturation ``-alpha * scale``, then ``a * x + b`` restores the mean and variance.
    ``noise_shape`` is Keras's, batch dim included, ``None`` for the input's size."""

    rate: float
    noise_shape: Sequence[int | None] | None = None

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        if deterministic or self.rate == 0:
            return x
        shape = x.shape
        if self.noise_shape is not None:
            shape = tuple(d if n is None else n for d, n in zip(x.shape, self.noise_shape))
        alpha = 1.6732632423543772848170429916717
        scale = 1.0507009873554804934193349852946
        alpha_p = -alpha * scale
        kept = jax.random.uniform(self.make_rng("dropout"), shape) >= self.rate
        kept = kept.astype(x.dtype)
        a = ((1 - self.rate) * (1 + self.rate * alpha_p**2)) ** -0.5
        b = -a * alpha_p * self.rate
        return a * (x * kept + alpha_p * (1 - kept)) + b
