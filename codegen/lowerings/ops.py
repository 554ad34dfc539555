"""Keras 3 Operation nodes: arithmetic, indexing and ``keras.ops`` calls on symbolic
tensors (``x * 0.5``, ``x[:, 1:3]``, ``keras.ops.mean(x, axis=1)``).

These share class names with layers (``ops.Add`` vs ``layers.Add``), so they are
registered with ``kind="op"``.  Constant arguments arrive in ``node.args``.
"""

from __future__ import annotations

from kgen.codegen.ir import BinOp, Call, Index, Lowered, Neg, Node, Sym
from kgen.codegen.registry import register

_BINARY = {
    "Add": "+",
    "Subtract": "-",
    "Multiply": "*",
    "Divide": "/",
    "TrueDivide": "/",
    "FloorDivide": "//",
    "Power": "**",
    "Mod": "%",
    "Matmul": "@",
    "Less": "<",
    "LessEqual": "<=",
    "Greater": ">",
    "GreaterEqual": ">=",
    "Equal": "==",
    "NotEqual": "!=",
}


def _binary(node: Node) -> Lowered:
    a, b = node.args[:2]
    return Lowered(BinOp(_BINARY[node.class_name], a, b))


for _name in _BINARY:
    register(_name, family="ops", kind="op")(_binary)


@register("Negative", family="ops", kind="op")
def lower_negative(node: Node) -> Lowered:
    return Lowered(Neg(node.args[0]))


@register("GetItem", family="ops", kind="op")
def lower_get_item(node: Node) -> Lowered:
    x, key = node.args[:2]
    return Lowered(Index(x, key))


def _reduction(fn: str):
    def lower_reduction(node: Node) -> Lowered:
        c = node.config
        kwargs = {}
        axis = c.get("axis")
        if axis is not None:
            kwargs["axis"] = tuple(axis) if isinstance(axis, (list, tuple)) else int(axis)
        if c.get("keepdims"):
            kwargs["keepdims"] = True
        return Lowered(Call(Sym(fn), (node.args[0],), kwargs))

    lower_reduction.__name__ = f"lower_{fn.split('.')[-1]}"
    return lower_reduction


for _name, _fn in {
    "Mean": "jnp.mean",
    "Sum": "jnp.sum",
    "Max": "jnp.max",
    "Min": "jnp.min",
    "Prod": "jnp.prod",
}.items():
    register(_name, family="ops", kind="op", handles={"axis", "keepdims"}, requires={"initial": None})(
        _reduction(_fn)
    )
