"""Flax NNX modules for the layers kgen writes as ``rt.<Name>`` in linen, and loading.

``kgen emit --api nnx`` writes an ``nnx.Module``: each layer is built in ``__init__``
from its input size, as NNX layers are (``nnx.Linear(in_features, out_features)``),
and called in ``__call__``.  Flax's own NNX layers are used where their computation is
Keras's (``nnx.Linear``, ``nnx.Dropout``, ``nnx.Embed``); the classes here are the
NNX forms of kgen's linen runtime layers.  Each computes through the same function as
its linen twin (``batch_norm``, ``layer_norm``, ``depthwise_conv``...), and holds the
same variables under the same names and shapes, so one weights file layout serves
both APIs:

* ``params`` are :class:`flax.nnx.Param`;
* ``batch_stats`` (BatchNorm's moving statistics, Normalization's constants) are
  :class:`flax.nnx.BatchStat`;
* ``state`` (a traced custom layer's non-trainable weights) is :class:`State`.

:func:`load` builds a generated class without computing any initialiser
(``nnx.eval_shape``) and fills it from a ``.safetensors`` file or a variables dict.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kgen.errors import WeightsError
from kgen.runtime.conv import (
    _ntuple,
    conv_impl,
    depthwise_conv,
    is_pointwise,
    pointwise_conv,
)
from kgen.runtime.layers import batch_norm, moving_update
from kgen.runtime.normalization import group_norm, layer_norm, normalize

__all__ = [
    "BatchNorm",
    "Conv",
    "DepthwiseConv",
    "GroupNorm",
    "LayerNorm",
    "LayerScale",
    "Normalization",
    "SeparableConv",
    "State",
    "load",
    "load_variables",
    "variables",
]


class State(nnx.Variable):
    """A non-trainable weight of a traced custom layer (linen collection ``state``)."""


#: linen collection -> the NNX variable type that holds it.
COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat, "state": State}


def _features(shape) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)


class Conv(nnx.Conv):
    """``nnx.Conv`` with :class:`kgen.runtime.Conv`'s pointwise fast path on CPU."""

    def __init__(self, in_features: int, out_features: int, kernel_size, *, impl="auto", **kw):
        super().__init__(in_features, out_features, kernel_size, **kw)
        self.impl = impl

    def __call__(self, inputs):
        n = inputs.ndim - 2
        groups, dilation = self.feature_group_count, self.input_dilation
        fast = is_pointwise(n, self.kernel_size, groups, dilation, self.padding, self.mask)
        if not fast or conv_impl(self.impl) == "xla":
            return super().__call__(inputs)
        kernel = self.kernel.value
        bias = None if self.bias is None else self.bias.value
        x, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return pointwise_conv(x, kernel, bias, 1 if self.strides is None else self.strides)


class DepthwiseConv(nnx.Module):
    """:class:`kgen.runtime.DepthwiseConv` in NNX: ``kernel`` (*k, 1, features)."""

    def __init__(
        self,
        features: int,
        kernel_size: Sequence[int],
        *,
        strides: Sequence[int] | int = 1,
        padding: str | Sequence[tuple[int, int]] = "VALID",
        kernel_dilation: Sequence[int] | int = 1,
        use_bias: bool = True,
        impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        self.kernel_size = tuple(kernel_size)
        n = len(self.kernel_size)
        self.strides = _ntuple(strides, n)
        self.padding = padding
        self.kernel_dilation = _ntuple(kernel_dilation, n)
        self.impl = impl
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (*self.kernel_size, 1, features)))
        self.bias = nnx.Param(jnp.zeros((features,))) if use_bias else None

    def __call__(self, x):
        y = depthwise_conv(
            x,
            self.kernel.value,
            strides=self.strides,
            padding=self.padding,
            dilation=self.kernel_dilation,
            impl=self.impl,
        )
        return y if self.bias is None else y + self.bias.value.astype(y.dtype)


class SeparableConv(nnx.Module):
    """:class:`kgen.runtime.SeparableConv` in NNX: ``depthwise`` then ``pointwise``."""

    def __init__(
        self,
        in_features: int,
        features: int,
        kernel_size: Sequence[int],
        *,
        depth_multiplier: int = 1,
        strides: Sequence[int] | int = 1,
        padding: str = "VALID",
        kernel_dilation: Sequence[int] | int = 1,
        use_bias: bool = True,
        impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        middle = in_features * depth_multiplier
        self.depthwise = DepthwiseConv(
            middle,
            kernel_size,
            strides=strides,
            padding=padding,
            kernel_dilation=kernel_dilation,
            use_bias=False,
            impl=impl,
            rngs=rngs,
        )
        ones = (1,) * len(tuple(kernel_size))
        self.pointwise = Conv(middle, features, ones, padding="VALID", use_bias=use_bias, rngs=rngs)

    def __call__(self, x):
        return self.pointwise(self.depthwise(x))


class BatchNorm(nnx.Module):
    """Keras ``BatchNormalization`` (:class:`kgen.runtime.BatchNorm`) in NNX.

    ``num_features``: the size of the normalised axis (a tuple for several axes).  With
    ``use_running_average=False`` it normalises with the batch statistics and moves
    ``mean``/``var`` towards them, as Keras does in training.
    """

    def __init__(
        self,
        num_features,
        *,
        axis: Sequence[int] = (-1,),
        epsilon: float = 1e-3,
        momentum: float = 0.99,
        center: bool = True,
        scale: bool = True,
        unbiased_update: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        shape = _features(num_features)
        self.axis = tuple(axis)
        self.epsilon = epsilon
        self.momentum = momentum
        self.unbiased_update = unbiased_update
        self.mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(shape, jnp.float32))
        self.scale = nnx.Param(jnp.ones(shape)) if scale else None
        self.bias = nnx.Param(jnp.zeros(shape)) if center else None

    def __call__(self, x, *, use_running_average: bool = True):
        y, update = batch_norm(
            x,
            None if self.scale is None else self.scale.value,
            None if self.bias is None else self.bias.value,
            self.mean.value,
            self.var.value,
            axis=self.axis,
            epsilon=self.epsilon,
            use_running_average=use_running_average,
            unbiased_update=self.unbiased_update,
        )
        if update is not None:
            moving = (self.mean.value, self.var.value)
            self.mean.value, self.var.value = moving_update(moving, update, self.momentum)
        return y


class LayerNorm(nnx.Module):
    """Keras 3 ``LayerNormalization`` (:class:`kgen.runtime.LayerNorm`) in NNX;
    ``num_features``: the normalised dims' sizes."""

    def __init__(
        self,
        num_features,
        *,
        axis: Sequence[int] = (-1,),
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        rms_scaling: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        shape = _features(num_features)
        self.axis = tuple(axis)
        self.epsilon = epsilon
        self.rms_scaling = rms_scaling
        self.scale = nnx.Param(jnp.ones(shape)) if scale or rms_scaling else None
        self.bias = nnx.Param(jnp.zeros(shape)) if center and not rms_scaling else None

    def __call__(self, x):
        gamma = None if self.scale is None else self.scale.value
        beta = None if self.bias is None else self.bias.value
        return layer_norm(
            x, gamma, beta, axis=self.axis, epsilon=self.epsilon, rms_scaling=self.rms_scaling
        )


class GroupNorm(nnx.Module):
    """Keras ``GroupNormalization`` (:class:`kgen.runtime.GroupNorm`) in NNX."""

    def __init__(
        self,
        num_features: int,
        groups: int,
        *,
        axis: int = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        rngs: nnx.Rngs | None = None,
    ):
        self.groups = groups
        self.axis = axis
        self.epsilon = epsilon
        self.scale = nnx.Param(jnp.ones((num_features,))) if scale else None
        self.bias = nnx.Param(jnp.zeros((num_features,))) if center else None

    def __call__(self, x):
        gamma = None if self.scale is None else self.scale.value
        beta = None if self.bias is None else self.bias.value
        return group_norm(x, gamma, beta, groups=self.groups, axis=self.axis, epsilon=self.epsilon)


class Normalization(nnx.Module):
    """Keras ``Normalization`` with its statistics as weights
    (:class:`kgen.runtime.Normalization`): ``mean``/``variance`` are ``BatchStat``s,
    shaped like the kept axes, never changed by the module."""

    def __init__(
        self,
        num_features,
        *,
        axis: Sequence[int] = (-1,),
        invert: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        shape = _features(num_features)
        self.axis = tuple(axis)
        self.invert = invert
        self.mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
        self.variance = nnx.BatchStat(jnp.ones(shape, jnp.float32))

    def __call__(self, x):
        axes = tuple(sorted(a % x.ndim for a in self.axis))
        shape = [x.shape[d] if d in axes else 1 for d in range(x.ndim)]
        mean = self.mean.value.reshape(shape)
        return normalize(x, mean, self.variance.value.reshape(shape), self.invert)


class LayerScale(nnx.Module):
    """ConvNeXt's ``LayerScale``: ``x * gamma``."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs | None = None):
        self.gamma = nnx.Param(jnp.zeros((dim,)))

    def __call__(self, x):
        return x * self.gamma.value


def _leaves(module) -> dict[tuple, nnx.Variable]:
    """``{path: variable}`` of every weight variable (not rng state) of ``module``."""
    out = {}
    for path, value in nnx.iter_graph(module):
        if isinstance(value, nnx.Variable) and not isinstance(value, nnx.RngState):
            out[tuple(str(p) for p in path)] = value
    return out


def load_variables(module, variables: dict) -> None:
    """Fill ``module`` (a generated NNX class) from ``{collection: nested dict}``, as
    :func:`kgen.runtime.load_variables` returns it.  Every variable of the module must be
    given once, with its shape; anything else is a :class:`WeightsError`."""
    from kgen.runtime.variables import flatten

    held = _leaves(module)
    seen = set()
    for collection, tree in variables.items():
        kind = COLLECTIONS.get(collection)
        if kind is None:
            raise WeightsError(f"unknown collection {collection!r} for an NNX module")
        for key, array in flatten(tree).items():
            path = tuple(key.split("/"))
            var = held.get(path)
            if var is None or not isinstance(var, kind):
                raise WeightsError(f"{collection}/{key} is not a {kind.__name__} of the module")
            if tuple(var.value.shape) != tuple(array.shape):
                raise WeightsError(
                    f"{collection}/{key}: shape {tuple(array.shape)}, the module has "
                    f"{tuple(var.value.shape)}"
                )
            var.value = jnp.asarray(array, dtype=var.value.dtype)
            seen.add(path)
    missing = sorted("/".join(p) for p in set(held) - seen)
    if missing:
        raise WeightsError(f"{len(missing)} variables not given, e.g. {missing[0]}")


def variables(module) -> dict:
    """The module's weights as ``{collection: nested dict}`` (numpy), the layout that
    :func:`kgen.runtime.save_variables` writes and :func:`load_variables` reads."""
    from kgen.runtime.variables import unflatten

    kinds = {kind: name for name, kind in COLLECTIONS.items()}
    flat: dict[str, dict] = {}
    for path, var in _leaves(module).items():
        collection = next((n for k, n in kinds.items() if isinstance(var, k)), None)
        if collection is None:
            raise WeightsError(f"{'/'.join(path)}: a {type(var).__name__}, not a weight")
        flat.setdefault(collection, {})["/".join(path)] = np.asarray(var.value)
    return {c: unflatten(f) for c, f in flat.items()}


def load(cls, weights: str | os.PathLike | dict, *, seed: int = 0, **kwargs):
    """An instance of the generated NNX class ``cls`` holding ``weights`` (a path to its
    ``.safetensors`` or a variables dict), built without running any initialiser.
    ``seed`` seeds its rng streams (dropout); ``kwargs`` go to ``cls``."""
    from kgen.runtime.variables import load_variables as read

    if not isinstance(weights, dict):
        weights = read(weights)
    module = nnx.eval_shape(lambda: cls(**kwargs, rngs=nnx.Rngs(0)))
    load_variables(module, weights)
    _reseed(module, seed)
    return module


def _reseed(module, seed: int) -> None:
    """Give the rng streams of a module built under ``nnx.eval_shape`` real keys."""
    root = jax.random.key(seed)
    for i, (_, value) in enumerate(nnx.iter_graph(module)):
        if isinstance(value, nnx.RngKey):
            value.value = jax.random.fold_in(root, i)
        elif isinstance(value, nnx.RngCount):
            value.value = jnp.zeros((), jnp.uint32)
