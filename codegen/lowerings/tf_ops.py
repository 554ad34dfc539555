"""tf.keras ``TFOpLambda`` / ``SlicingOpLambda`` nodes, keyed by their TF symbol.

tf.keras turns TF calls on Keras tensors (``x * 2.``, ``tf.concat``, ``x[:, 1:]``) into
these layers.  Positional and keyword arguments are bound to the TF signature below,
so ``tf.concat([a, b], -1)`` and ``tf.concat([a, b], axis=-1)`` lower the same way.
"""

from __future__ import annotations

from kgen.codegen.ir import BinOp, Call, Index, Lowered, Neg, Node, Sym
from kgen.codegen.registry import Unsupported, register

_ONLY_TF = ("tf_keras",)


def _bind(node: Node, *names: str, defaults: dict | None = None) -> dict:
    """Map a TF call's positional and keyword arguments onto ``names``."""
    bound = dict(defaults or {})
    for name, value in zip(names, node.args):
        bound[name] = value
    for key, value in node.kwargs.items():
        if key not in names:
            raise Unsupported(f"tf.{node.class_name} argument {key}", value, ", ".join(names))
        bound[key] = value
    return bound


def _axis(value):
    if isinstance(value, (list, tuple)):
        return tuple(int(a) for a in value)
    return None if value is None else int(value)


_BINARY = {
    "__operators__.add": "+",
    "math.add": "+",
    "math.subtract": "-",
    "__operators__.sub": "-",
    "math.multiply": "*",
    "__operators__.mul": "*",
    "math.truediv": "/",
    "math.divide": "/",
    "__operators__.truediv": "/",
    "math.pow": "**",
    "__operators__.pow": "**",
    "math.floordiv": "//",
    "linalg.matmul": "@",
}


def lower_tf_binary(node: Node) -> Lowered:
    b = _bind(node, "x", "y")
    return Lowered(BinOp(_BINARY[node.class_name], b["x"], b["y"]))


for _symbol in _BINARY:
    register(_symbol, family="tf_ops", kind="tfop", sources=_ONLY_TF)(lower_tf_binary)


_UNARY = {
    "nn.relu": "jax.nn.relu",
    "nn.relu6": "jax.nn.relu6",
    "nn.silu": "jax.nn.silu",
    "nn.swish": "jax.nn.silu",
    "nn.elu": "jax.nn.elu",
    "nn.selu": "jax.nn.selu",
    "nn.gelu": None,  # needs approximate handling below
    "math.sigmoid": "jax.nn.sigmoid",
    "nn.sigmoid": "jax.nn.sigmoid",
    "math.tanh": "jnp.tanh",
    "nn.tanh": "jnp.tanh",
    "math.exp": "jnp.exp",
    "math.log": "jnp.log",
    "math.sqrt": "jnp.sqrt",
    "math.rsqrt": "jax.lax.rsqrt",
    "math.abs": "jnp.abs",
    "math.square": "jnp.square",
    "math.softplus": "jax.nn.softplus",
    "nn.softplus": "jax.nn.softplus",
}


def lower_tf_unary(node: Node) -> Lowered:
    b = _bind(node, "x")
    return Lowered(Call(Sym(_UNARY[node.class_name]), (b["x"],)))


for _symbol, _fn in _UNARY.items():
    if _fn is not None:
        register(_symbol, family="tf_ops", kind="tfop", sources=_ONLY_TF)(lower_tf_unary)


@register("nn.gelu", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_gelu(node: Node) -> Lowered:
    b = _bind(node, "features", "approximate", defaults={"approximate": False})
    return Lowered(Call(Sym("jax.nn.gelu"), (b["features"],), {"approximate": bool(b["approximate"])}))


@register("math.negative", "__operators__.neg", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_negative(node: Node) -> Lowered:
    return Lowered(Neg(_bind(node, "x")["x"]))


@register("math.maximum", "math.minimum", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_maximum(node: Node) -> Lowered:
    b = _bind(node, "x", "y")
    fn = "jnp.maximum" if node.class_name == "math.maximum" else "jnp.minimum"
    return Lowered(Call(Sym(fn), (b["x"], b["y"])))


@register("__operators__.getitem", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_getitem(node: Node) -> Lowered:
    x, key = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs["slice_spec"]
    if isinstance(key, list):
        key = tuple(key)
    return Lowered(Index(x, key))


def _reduce(fn: str):
    def lower_tf_reduce(node: Node) -> Lowered:
        b = _bind(node, "input_tensor", "axis", "keepdims", defaults={"axis": None, "keepdims": False})
        kwargs = {}
        if b["axis"] is not None:
            kwargs["axis"] = _axis(b["axis"])
        if b["keepdims"]:
            kwargs["keepdims"] = True
        return Lowered(Call(Sym(fn), (b["input_tensor"],), kwargs))

    lower_tf_reduce.__name__ = f"lower_tf_{fn.split('.')[-1]}"
    return lower_tf_reduce


for _symbol, _fn in {
    "math.reduce_mean": "jnp.mean",
    "math.reduce_sum": "jnp.sum",
    "math.reduce_max": "jnp.max",
    "math.reduce_min": "jnp.min",
    "math.reduce_prod": "jnp.prod",
}.items():
    register(_symbol, family="tf_ops", kind="tfop", sources=_ONLY_TF)(_reduce(_fn))


@register("nn.softmax", "math.softmax", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_softmax(node: Node) -> Lowered:
    b = _bind(node, "logits", "axis", defaults={"axis": None})
    axis = -1 if b["axis"] is None else _axis(b["axis"])
    kwargs = {} if axis == -1 else {"axis": axis}
    return Lowered(Call(Sym("jax.nn.softmax"), (b["logits"],), kwargs))


@register("concat", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_concat(node: Node) -> Lowered:
    b = _bind(node, "values", "axis")
    return Lowered(Call(Sym("jnp.concatenate"), (list(b["values"]),), {"axis": int(b["axis"])}))


@register("reshape", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_reshape(node: Node) -> Lowered:
    b = _bind(node, "tensor", "shape")
    shape = b["shape"]
    if isinstance(shape, list):
        shape = tuple(shape)
    return Lowered(Call(Sym("jnp.reshape"), (b["tensor"], shape)))


@register("transpose", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_transpose(node: Node) -> Lowered:
    b = _bind(node, "a", "perm", "conjugate", defaults={"perm": None, "conjugate": False})
    perm = None if b["perm"] is None else tuple(int(p) for p in b["perm"])
    return Lowered(Call(Sym("jnp.transpose"), (b["a"], perm) if perm else (b["a"],)))


@register("expand_dims", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_expand_dims(node: Node) -> Lowered:
    b = _bind(node, "input", "axis")
    return Lowered(Call(Sym("jnp.expand_dims"), (b["input"],), {"axis": _axis(b["axis"])}))


@register("compat.v1.squeeze", "squeeze", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_squeeze(node: Node) -> Lowered:
    b = _bind(node, "input", "axis", defaults={"axis": None})
    kwargs = {} if b["axis"] is None else {"axis": _axis(b["axis"])}
    return Lowered(Call(Sym("jnp.squeeze"), (b["input"],), kwargs))


@register("clip_by_value", family="tf_ops", kind="tfop", sources=_ONLY_TF)
def lower_tf_clip(node: Node) -> Lowered:
    b = _bind(node, "t", "clip_value_min", "clip_value_max")
    return Lowered(Call(Sym("jnp.clip"), (b["t"], b["clip_value_min"], b["clip_value_max"])))
