"""Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate."""

from __future__ import annotations

from functools import reduce

from kgen.codegen.ir import BinOp, Call, Lowered, Node, Sym
from kgen.codegen.registry import register


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
