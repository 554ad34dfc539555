"""The Flax NNX constructor of each submodule a lowering asks for (``--api nnx``).

A lowering describes a linen submodule (:class:`~kgen.codegen.ir.Module`), whose input
size Flax infers at the first call.  An NNX layer is built before any call, from its
input size: ``nn.Dense(10)`` becomes ``nnx.Linear(64, 10, rngs=rngs)``.  Each rule
below takes the lowered constructor and the traced node (its input shapes) and returns
the NNX constructor, without ``rngs`` (the renderer passes ``rngs=rngs`` to every
submodule).  The NNX classes keep the linen ones' variables, names and shapes (see
``kgen/runtime/nnx.py``).  A submodule without a rule cannot be written as NNX yet:
:func:`check` lists every such layer in one :class:`~kgen.errors.UnsupportedError`,
which the CLI reports as bad input.
"""

from __future__ import annotations

from collections import defaultdict

from kgen.codegen import ir
from kgen.codegen.lower import walk
from kgen.errors import UnsupportedError


def _in_features(node: ir.Node, axis: int = -1) -> int:
    return int(node.input_shapes[0][axis])


def _feature_shape(mod: ir.Module, node: ir.Node):
    """The sizes of the ``axis`` dims (default the last): an int for one axis."""
    shape = node.input_shapes[0]
    axis = mod.kwargs.get("axis", (-1,))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    sizes = tuple(int(shape[a]) for a in axes)
    return sizes[0] if len(sizes) == 1 else sizes


def _with_input(fn: str):
    return lambda mod, node, call: ir.Module(
        ir.Sym(fn), (_in_features(node), *mod.args), mod.kwargs
    )


def _same(fn: str):
    return lambda mod, node, call: ir.Module(ir.Sym(fn), mod.args, mod.kwargs)


def _with_features(fn: str):
    return lambda mod, node, call: ir.Module(
        ir.Sym(fn), (_feature_shape(mod, node), *mod.args), mod.kwargs
    )


def _group_norm(mod: ir.Module, node: ir.Node, call) -> ir.Module:
    channels = _in_features(node, int(mod.kwargs.get("axis", -1)))
    return ir.Module(ir.Sym("rt.nnx.GroupNorm"), (channels, *mod.args), mod.kwargs)


def _rms_norm(mod: ir.Module, node: ir.Node, call) -> ir.Module:
    if "feature_axes" in mod.kwargs:  # several axes: nnx.RMSNorm's scale is 1-D
        return _linen_backed(mod, node, call)
    return ir.Module(ir.Sym("nnx.RMSNorm"), (_in_features(node),), mod.kwargs)


def _linen_backed(mod: ir.Module, node: ir.Node, call) -> ir.Module:
    """``rt.nnx.Linen(<the linen layer>, <example input shapes>)``: a layer whose NNX
    form is its linen module's variables held as NNX variables (attention, recurrent,
    noise, locally connected layers).  The example shapes are those of the call's
    positional tensors (the batch, and any unknown size, as 1): the variables are
    initialised by calling the linen module once on zeros of those shapes."""
    positional = len(call.args) if call is not None else 1
    shapes = tuple(
        tuple(1 if d is None else int(d) for d in shape) for shape in node.input_shapes[:positional]
    )
    return ir.Module(ir.Sym("rt.nnx.Linen"), (ir.Call(mod.fn, mod.args, mod.kwargs), shapes))


#: linen constructor -> its NNX rule.
RULES = {
    "nn.Dense": _with_input("nnx.Linear"),
    "nn.Dropout": _same("nnx.Dropout"),
    "nn.Embed": _same("nnx.Embed"),
    "rt.Conv": _with_input("rt.nnx.Conv"),
    "rt.DepthwiseConv": _same("rt.nnx.DepthwiseConv"),
    "rt.SeparableConv": _with_input("rt.nnx.SeparableConv"),
    "rt.BatchNorm": _with_features("rt.nnx.BatchNorm"),
    "rt.LayerNorm": _with_features("rt.nnx.LayerNorm"),
    "rt.Normalization": _with_features("rt.nnx.Normalization"),
    "rt.GroupNorm": _group_norm,
    "rt.LayerScale": _same("rt.nnx.LayerScale"),
    "rt.PReLU": _same("rt.nnx.PReLU"),
    "rt.EinsumDense": _same("rt.nnx.EinsumDense"),
    "nn.ConvTranspose": _with_input("nnx.ConvTranspose"),
    "nn.RMSNorm": _rms_norm,
    **{
        f"rt.{name}": _linen_backed
        for name in (
            "MultiHeadAttention",
            "Attention",
            "AdditiveAttention",
            "SimpleRNN",
            "GRU",
            "LSTM",
            "Bidirectional",
            "LocallyConnected",
            "GaussianNoise",
            "GaussianDropout",
            "AlphaDropout",
            "ReversibleEmbedding",
        )
    },
}


def supported() -> list[str]:
    """The linen constructors that have an NNX form."""
    return sorted(RULES)


def check(lowered) -> None:
    """Raise one :class:`UnsupportedError` naming every layer of ``lowered`` (nested
    models and traced layers included) whose submodule has no NNX rule."""
    missing: dict[str, list[str]] = defaultdict(list)
    for lnode in walk(lowered):
        mod = lnode.lowered.module if lnode.lowered is not None else None
        if mod is not None and isinstance(mod.fn, ir.Sym) and mod.fn.path not in RULES:
            missing[f"{lnode.node.class_name} ({mod.fn.path})"].append(lnode.node.name)
    if missing:
        listed = "; ".join(
            f"{what} x{len(names)} ({', '.join(repr(n) for n in names[:3])}"
            + (", ...)" if len(names) > 3 else ")")
            for what, names in sorted(missing.items())
        )
        raise UnsupportedError(
            f"--api nnx: no Flax NNX form yet for {listed}; emit this model with --api linen"
        )


def nnx_module(mod: ir.Module, node: ir.Node, expr=None) -> ir.Module:
    """The NNX constructor for ``mod`` (a class of the same file is kept as it is);
    :func:`check` has made sure there is a rule.  ``expr``: the node's expression, whose
    call of the submodule gives the linen-backed layers their example inputs."""
    if isinstance(mod.fn, ir.LocalClass):
        return mod
    return RULES[mod.fn.path](mod, node, _self_call(expr))


def _self_call(expr):
    """The call of the node's own submodule (``SELF(...)``) inside ``expr``, if any."""
    if isinstance(expr, ir.Call):
        if expr.fn is ir.SELF:
            return expr
        for part in (expr.fn, *expr.args, *expr.kwargs.values()):
            found = _self_call(part)
            if found is not None:
                return found
    elif isinstance(expr, (tuple, list)):
        for part in expr:
            found = _self_call(part)
            if found is not None:
                return found
    elif isinstance(expr, (ir.Index, ir.Neg)):
        return _self_call(expr.value)
    elif isinstance(expr, ir.BinOp):
        return _self_call(expr.left) or _self_call(expr.right)
    return None
