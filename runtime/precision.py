"""Mixed precision for generated modules, the way Keras's ``mixed_bfloat16`` and
``mixed_float16`` policies work: variables stay float32 (so optimiser updates and
BatchNorm's moving statistics keep full precision), layers compute in the low-precision
dtype, and normalisation layers compute their statistics in float32 and hand back the
low-precision dtype (Keras's BatchNormalization, LayerNormalization and
GroupNormalization do the same; see :mod:`kgen.runtime.layers` and
:mod:`kgen.runtime.normalization`).

The policy is applied where the module is applied, not written into the generated
file: :func:`mixed` wraps an apply function (``module.apply``, a ``TrainState``'s
``apply_fn``) so that float ``params`` and float inputs are cast to ``dtype`` on the way
in.  Inside a jitted function XLA fuses the casts into the ops that read them.  Because
the cast happens inside the function that ``jax.grad`` differentiates, gradients come
back in float32, for float32 params: the usual master-weights recipe.

Two differences from Keras's policy, both at the level of bfloat16 rounding:

* Keras keeps the normalisation layers' gamma and beta in float32 (``autocast=False``);
  here every float param is cast, so they are rounded to ``dtype`` once before the
  float32 normalisation uses them.
* Softmax runs in ``dtype``, as in Keras unless its layer is given ``dtype="float32"``;
  the model's outputs come back in ``dtype`` (cast them, or apply ``jax.nn.softmax``
  to ``logits.astype(jnp.float32)``, when you need float32 probabilities).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["cast_floating", "mixed"]


def cast_floating(tree, dtype):
    """``tree`` with every floating-point array cast to ``dtype`` (others unchanged)."""

    def cast(a):
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating):
            return jnp.asarray(a).astype(dtype)
        return a

    return jax.tree.map(cast, tree)


def mixed(apply_fn, dtype=jnp.bfloat16):
    """``apply_fn`` computing in ``dtype``: ``mixed(module.apply)(variables, x, ...)``.

    Float ``params`` and float positional inputs are cast to ``dtype``; every other
    collection (``batch_stats``: BatchNorm's moving mean and variance) is passed as it
    is, so it stays float32 and is updated in float32 under ``mutable=["batch_stats"]``.
    Keyword arguments (``train=``, ``rngs=``, ``mutable=``) pass through untouched.
    """
    dtype = jnp.dtype(dtype)

    @functools.wraps(apply_fn)
    def apply(variables, *args, **kwargs):
        variables = {
            collection: cast_floating(tree, dtype) if collection == "params" else tree
            for collection, tree in dict(variables).items()
        }
        return apply_fn(variables, *cast_floating(args, dtype), **kwargs)

    return apply
