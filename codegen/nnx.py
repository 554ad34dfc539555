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
    return lambda mod, node: ir.Module(ir.Sym(fn), (_in_features(node), *mod.args), mod.kwargs)


def _same(fn: str):
    return lambda mod, node: ir.Module(ir.Sym(fn), mod.args, mod.kwargs)


def _with_features(fn: str):
    return lambda mod, node: ir.Module(
        ir.Sym(fn), (_feature_shape(mod, node), *mod.args), mod.kwargs
    )


def _group_norm(mod: ir.Module, node: ir.Node) -> ir.Module:
    channels = _in_features(node, int(mod.kwargs.get("axis", -1)))
    return ir.Module(ir.Sym("rt.nnx.GroupNorm"), (channels, *mod.args), mod.kwargs)


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
}


def supported() -> list[str]:
    """The linen constructors that have an NNX form."""
    return sorted(RULES)


def check(lowered) -> None:
    """Raise one :class:`UnsupportedError` naming every layer of ``lowered`` (nested
    models and traced layers included) whose submodule has no NNX rule."""
    missing: dict[str, list[str]] = defaultdict(list)
    seen: set[int] = set()

    def walk(lg) -> None:
        if id(lg) in seen:
            return
        seen.add(id(lg))
        for lnode in lg.nodes:
            mod = lnode.lowered.module if lnode.lowered is not None else None
            if mod is not None and isinstance(mod.fn, ir.Sym) and mod.fn.path not in RULES:
                missing[f"{lnode.node.class_name} ({mod.fn.path})"].append(lnode.node.name)
            if lnode.subclass is not None:
                walk(lnode.subclass)
        for child in lg.children:
            walk(child)

    walk(lowered)
    if missing:
        listed = "; ".join(
            f"{what} x{len(names)} ({', '.join(repr(n) for n in names[:3])}"
            + (", ...)" if len(names) > 3 else ")")
            for what, names in sorted(missing.items())
        )
        raise UnsupportedError(
            f"--api nnx: no Flax NNX form yet for {listed}; emit this model with --api linen"
        )


def nnx_module(mod: ir.Module, node: ir.Node) -> ir.Module:
    """The NNX constructor for ``mod`` (a class of the same file is kept as it is);
    :func:`check` has made sure there is a rule."""
    if isinstance(mod.fn, ir.LocalClass):
        return mod
    return RULES[mod.fn.path](mod, node)
