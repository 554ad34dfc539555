"""Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot."""

from __future__ import annotations

from functools import reduce

from kgen.codegen.ir import BinOp, Call, Index, Lowered, Node, Sym
from kgen.codegen.registry import Unsupported, register


def _chain(op: str, xs: list):
    # Keras folds left: ((x0 op x1) op x2) ...
    return reduce(lambda a, b: BinOp(op, a, b), xs)


@register("Add", family="merging")
def lower_add(node: Node) -> Lowered:
    return Lowered(_chain("+", node.inputs))


@register("Subtract", family="merging")
def lower_subtract(node: Node) -> Lowered:
    a, b = node.inputs
    return Lowered(BinOp("-", a, b))


@register("Multiply", family="merging")
def lower_multiply(node: Node) -> Lowered:
    return Lowered(_chain("*", node.inputs))


@register("Average", family="merging")
def lower_average(node: Node) -> Lowered:
    xs = node.inputs
    return Lowered(BinOp("/", _chain("+", xs), float(len(xs))))


def _fold_call(fn: str, xs: list):
    return reduce(lambda a, b: Call(Sym(fn), (a, b)), xs)


@register("Maximum", family="merging")
def lower_maximum(node: Node) -> Lowered:
    return Lowered(_fold_call("jnp.maximum", node.inputs))


@register("Minimum", family="merging")
def lower_minimum(node: Node) -> Lowered:
    return Lowered(_fold_call("jnp.minimum", node.inputs))


@register("Concatenate", family="merging", handles={"axis"})
def lower_concatenate(node: Node) -> Lowered:
    axis = int(node.config.get("axis", -1))
    return Lowered(Call(Sym("jnp.concatenate"), (list(node.inputs),), {"axis": axis}))


_DOT_LETTERS = "ijklmnopqrstuvw"


@register("Dot", family="merging", handles={"axes", "normalize"})
def lower_dot(node: Node) -> Lowered:
    """Keras ``batch_dot``: contract ``x`` axis ``axes[0]`` with ``y`` axis ``axes[1]`` per
    sample; the result has ``x``'s other dims then ``y``'s.  Two vectors give
    ``(batch, 1)``.  ``normalize`` L2-normalises both along those axes first
    (``ops.normalize``, epsilon 1e-7)."""
    x, y = node.inputs
    rank_x, rank_y = (len(s) for s in node.input_shapes[:2])
    axes = node.config["axes"]
    axes = (axes, axes) if isinstance(axes, int) else tuple(axes)
    a0, a1 = axes[0] % rank_x, axes[1] % rank_y
    if 0 in (a0, a1):
        raise Unsupported("axes", node.config["axes"], "non-batch axes")
    if node.config.get("normalize"):
        x = Call(Sym("rt.l2_normalize"), (x,), {"axis": a0, "epsilon": 1e-7})
        y = Call(Sym("rt.l2_normalize"), (y,), {"axis": a1, "epsilon": 1e-7})
    letters = iter(_DOT_LETTERS)
    xs = ["b"] + [next(letters) for _ in range(rank_x - 1)]
    ys = ["b"] + [next(letters) for _ in range(rank_y - 1)]
    ys[a1] = xs[a0]
    out = ["b"] + [c for i, c in enumerate(xs) if i not in (0, a0)]
    out += [c for i, c in enumerate(ys) if i not in (0, a1)]
    spec = f"{''.join(xs)},{''.join(ys)}->{''.join(out)}"
    expr = Call(Sym("jnp.einsum"), (spec, x, y))
    if len(out) == 1:  # two vectors: Keras keeps a (batch, 1) result
        expr = Index(expr, (slice(None), None))
    return Lowered(expr)
