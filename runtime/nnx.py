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
from kgen.runtime import onednn
from kgen.runtime.conv import (
    _ntuple,
    conv_impl,
    depthwise_conv,
    is_padded,
    is_pointwise,
    onednn_padding,
    padded_conv,
    pointwise_conv,
)
from kgen.runtime.layers import batch_norm, moving_update
from kgen.runtime.normalization import group_norm, layer_norm, normalize

__all__ = [
    "BatchNorm",
    "Conv",
    "DepthwiseConv",
    "EinsumDense",
    "GroupNorm",
    "LayerNorm",
    "LayerScale",
    "Linen",
    "Normalization",
    "PReLU",
    "SeparableConv",
    "State",
    "functional",
    "init",
    "load",
    "load_variables",
    "variables",
]


class State(nnx.Variable):
    """A non-trainable weight of a traced custom layer (linen collection ``state``)."""


#: linen collection -> the NNX variable type that holds it.
COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat, "state": State}


def _value(var: nnx.Variable):
    """A variable's value, in every flax this supports (``.value`` is deprecated in 0.12)."""
    return var.get_value() if hasattr(var, "get_value") else var.value


def _set(var: nnx.Variable, value) -> None:
    if hasattr(var, "set_value"):
        var.set_value(value)
    else:  # flax < 0.12
        var.value = value


def _features(shape) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)


class Conv(nnx.Conv):
    """``nnx.Conv`` with :class:`kgen.runtime.Conv`'s CPU paths (pointwise, padded)."""

    def __init__(self, in_features: int, out_features: int, kernel_size, *, impl="auto", **kw):
        super().__init__(in_features, out_features, kernel_size, **kw)
        self.impl = impl

    def __call__(self, inputs):
        n = inputs.ndim - 2
        groups, dilation = self.feature_group_count, self.input_dilation
        impl = conv_impl(self.impl)
        pointwise = is_pointwise(n, self.kernel_size, groups, dilation, self.padding, self.mask)
        padded = is_padded(n, self.kernel_size, dilation, self.padding, self.mask)
        if impl == "xla" or not (impl in ("onednn", "auto") or pointwise or padded):
            return super().__call__(inputs)
        kernel = _value(self.kernel)
        bias = None if self.bias is None else _value(self.bias)
        x, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        strides = _ntuple(1 if self.strides is None else self.strides, n)
        kernel_dilation = _ntuple(1 if self.kernel_dilation is None else self.kernel_dilation, n)
        pads = None
        if impl in ("onednn", "auto"):
            pads = onednn_padding(
                x.shape,
                kernel.shape,
                strides,
                kernel_dilation,
                self.padding,
                dilation,
                self.mask,
                x.dtype,
                require_pay=impl == "auto",
            )
        if pads is not None:
            y = onednn.conv(x, kernel, strides, pads, kernel_dilation, groups)
        elif pointwise:
            return pointwise_conv(x, kernel, bias, strides)
        elif padded:
            dilation = kernel_dilation
            y = padded_conv(x, kernel, strides, dilation, self.padding, groups, self.precision)
        else:
            return super().__call__(inputs)
        return y if bias is None else y + bias


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
            _value(self.kernel),
            strides=self.strides,
            padding=self.padding,
            dilation=self.kernel_dilation,
            impl=self.impl,
        )
        return y if self.bias is None else y + _value(self.bias).astype(y.dtype)


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
            None if self.scale is None else _value(self.scale),
            None if self.bias is None else _value(self.bias),
            _value(self.mean),
            _value(self.var),
            axis=self.axis,
            epsilon=self.epsilon,
            use_running_average=use_running_average,
            unbiased_update=self.unbiased_update,
        )
        if update is not None:
            moving = (_value(self.mean), _value(self.var))
            mean, var = moving_update(moving, update, self.momentum)
            _set(self.mean, mean)
            _set(self.var, var)
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
        gamma = None if self.scale is None else _value(self.scale)
        beta = None if self.bias is None else _value(self.bias)
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
        gamma = None if self.scale is None else _value(self.scale)
        beta = None if self.bias is None else _value(self.bias)
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
        mean = _value(self.mean).reshape(shape)
        return normalize(x, mean, _value(self.variance).reshape(shape), self.invert)


class LayerScale(nnx.Module):
    """ConvNeXt's ``LayerScale``: ``x * gamma``."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs | None = None):
        self.gamma = nnx.Param(jnp.zeros((dim,)))

    def __call__(self, x):
        return x * _value(self.gamma)


class PReLU(nnx.Module):
    """Keras ``PReLU`` (:class:`kgen.runtime.PReLU`): ``alpha`` shaped like the input
    minus the batch dim, shared axes 1."""

    def __init__(self, alpha_shape: Sequence[int], *, rngs: nnx.Rngs | None = None):
        self.alpha = nnx.Param(jnp.zeros(tuple(alpha_shape)))

    def __call__(self, x):
        alpha = _value(self.alpha)
        return jax.nn.relu(x) - alpha * jax.nn.relu(-x)


class EinsumDense(nnx.Module):
    """Keras ``EinsumDense`` (:class:`kgen.runtime.EinsumDense`)."""

    def __init__(
        self,
        equation: str,
        kernel_shape: Sequence[int],
        bias_shape: Sequence[int] | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        self.equation = equation
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), tuple(kernel_shape)))
        self.bias = None if bias_shape is None else nnx.Param(jnp.zeros(tuple(bias_shape)))

    def __call__(self, x):
        y = jnp.einsum(self.equation, x, _value(self.kernel))
        return y if self.bias is None else y + _value(self.bias)


class _Scope(nnx.Module):
    """One level of a linen layer's variable tree, as attributes."""


class Linen(nnx.Module):
    """A kgen linen runtime layer as an NNX module: its variables are NNX variables of
    this module, under the linen names (``self.query.kernel``...), and a call applies the
    linen module to them.  For the layers whose computation lives in one linen module
    (attention, recurrent, noise and locally connected layers), this keeps one
    implementation for both APIs.

    ``input_shapes``: example shapes of the call's positional inputs; the variables are
    initialised by ``module.init`` on zeros of those shapes (under ``nnx.eval_shape``,
    as :func:`load` builds, nothing is computed).  Calls get the ``dropout`` rng stream.
    """

    def __init__(self, module, input_shapes: Sequence[Sequence[int]], *, rngs: nnx.Rngs):
        self.module = module
        examples = [jnp.zeros(tuple(shape), jnp.float32) for shape in input_shapes]
        keys = {"params": rngs.params(), "dropout": rngs.dropout()}
        variables = module.init(keys, *examples)
        self.collections = tuple(sorted(variables))
        for collection, tree in variables.items():
            if collection not in COLLECTIONS:
                raise ValueError(f"{type(module).__name__}: unknown collection {collection!r}")
            _attach(self, tree, COLLECTIONS[collection])
        self.rngs = rngs["dropout"].fork() if hasattr(rngs, "__getitem__") else rngs

    def __call__(self, *args, **kwargs):
        variables = {c: {} for c in self.collections}
        for path, var in _leaves(self).items():
            node = variables[_collection_of(var)]
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = _value(var)
        key = self.rngs() if callable(self.rngs) else self.rngs.dropout()
        return self.module.apply(variables, *args, rngs={"dropout": key}, **kwargs)


def _attach(owner, tree: dict, kind) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            child = getattr(owner, key, None)
            if child is None:
                child = _Scope()
                setattr(owner, key, child)
            _attach(child, value, kind)
        else:
            setattr(owner, key, kind(value))


def _collection_of(var: nnx.Variable) -> str | None:
    """The linen collection a variable belongs to (see :data:`COLLECTIONS`)."""
    return next((name for name, kind in COLLECTIONS.items() if isinstance(var, kind)), None)


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
    held = _leaves(module)
    seen = set()
    for collection, tree in variables.items():
        kind = COLLECTIONS.get(collection)
        if kind is None:
            raise WeightsError(f"unknown collection {collection!r} for an NNX module")
        for key, array in _flat(tree).items():
            path = tuple(key.split("/"))
            var = held.get(path)
            if var is None or not isinstance(var, kind):
                raise WeightsError(f"{collection}/{key} is not a {kind.__name__} of the module")
            if tuple(_value(var).shape) != tuple(array.shape):
                raise WeightsError(
                    f"{collection}/{key}: shape {tuple(array.shape)}, the module has "
                    f"{tuple(_value(var).shape)}"
                )
            _set(var, jnp.asarray(array))
            seen.add(path)
    missing = sorted("/".join(p) for p in set(held) - seen)
    if missing:
        raise WeightsError(f"{len(missing)} variables not given, e.g. {missing[0]}")


def _flat(tree: dict, prefix: str = "") -> dict:
    """``{"a/b": leaf}`` of a nested dict, the leaves as they are (arrays or tracers)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        out.update(_flat(value, path) if isinstance(value, dict) else {path: value})
    return out


def variables(module) -> dict:
    """The module's weights as ``{collection: nested dict}`` (numpy), the layout that
    :func:`kgen.runtime.save_variables` writes and :func:`load_variables` reads."""
    return _collections(module, np.asarray)


def _collections(module, convert=lambda a: a) -> dict:
    from kgen.runtime.variables import unflatten

    flat: dict[str, dict] = {}
    for path, var in _leaves(module).items():
        collection = _collection_of(var)
        if collection is None:
            raise WeightsError(f"{'/'.join(path)}: a {type(var).__name__}, not a weight")
        flat.setdefault(collection, {})["/".join(path)] = convert(_value(var))
    return {c: unflatten(f) for c, f in flat.items()}


def functional(module):
    """``module`` as a pure function of its weights, for ``jax.grad``/``jax.jit`` over the
    same ``{collection: nested dict}`` that linen's ``apply`` takes:
    ``apply(variables, *inputs, **call_kwargs) -> (outputs, variables after the call)``
    (BatchNorm's moving statistics move when called with ``train=True``).  The module
    itself is left as it is; its rng streams start from their current state each call.
    """
    graphdef, rng_state, weights = nnx.split(module, nnx.RngState, ...)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), weights)

    def apply(variables: dict, *inputs, **kwargs):
        copy = nnx.merge(graphdef, rng_state, abstract, copy=True)
        load_variables(copy, variables)
        return copy(*inputs, **kwargs), _collections(copy)

    return apply


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


def init(cls, *, seed: int = 0, method: str = "auto", **kwargs):
    """A freshly initialised instance of the generated NNX class ``cls``: the values of
    ``cls(rngs=nnx.Rngs(seed))`` up to float rounding, without running its initialisers
    one by one.  ``method`` as for :func:`kgen.runtime.init`: ``"host"`` evaluates them
    with numpy (:mod:`kgen.runtime.host_init`), ``"jit"`` compiles them together under
    ``jax.jit``, ``"auto"`` is ``"host"`` where it can.  ``kwargs`` go to ``cls``."""
    from kgen.runtime.variables import initialise

    def make():
        return nnx.split(cls(**kwargs, rngs=nnx.Rngs(seed)))

    graphdef, _ = nnx.eval_shape(make)
    return nnx.merge(graphdef, initialise(lambda: make()[1], method=method))


def _reseed(module, seed: int) -> None:
    """Give the rng streams of a module built under ``nnx.eval_shape`` real keys."""
    root = jax.random.key(seed)
    for i, (_, value) in enumerate(nnx.iter_graph(module)):
        if isinstance(value, nnx.RngKey):
            _set(value, jax.random.fold_in(root, i))
        elif isinstance(value, nnx.RngCount):
            _set(value, jnp.zeros((), jnp.uint32))
