"""tf.keras ``TFOpLambda`` / ``SlicingOpLambda`` nodes, keyed by their TF symbol.

tf.keras turns TF calls on Keras tensors (``x * 2.``, ``tf.concat``, ``x[:, 1:]``) into
these layers.  Positional and keyword arguments are bound to the TF signature in
:data:`SIGNATURES` (checked against TensorFlow's own in the tests), so
``tf.concat([a, b], -1)`` and ``tf.concat([a, b], axis=-1)`` lower the same way, and an
argument a lowering does not implement is an error unless it has its no-op value.
"""

from __future__ import annotations

import numpy as np

from kgen.codegen.ir import BinOp, Call, Index, Lowered, Neg, Node, Sym
from kgen.codegen.lowerings.common import dtype_sym
from kgen.codegen.registry import Unsupported, register

__all__ = ["SIGNATURES"]

_ONLY_TF = ("tf_keras",)

_XY = ("x", "y", "name")
_X = ("x", "name")
_FEATURES = ("features", "name")
_REDUCE = ("input_tensor", "axis", "keepdims", "name")

#: TF parameter order of every symbol lowered here (``tf.<symbol>``'s signature).
SIGNATURES: dict[str, tuple[str, ...]] = {
    # binary operators
    "__operators__.add": _XY,
    "math.add": _XY,
    "math.subtract": _XY,
    "math.multiply": _XY,
    "math.truediv": _XY,
    "math.divide": _XY,
    "math.pow": _XY,
    "math.floordiv": _XY,
    "compat.v1.floor_div": _XY,
    "math.floormod": _XY,
    "math.maximum": _XY,
    "math.minimum": _XY,
    "math.squared_difference": _XY,
    # comparisons and logic
    "math.greater": _XY,
    "math.greater_equal": _XY,
    "math.less": _XY,
    "math.less_equal": _XY,
    "math.equal": _XY,
    "math.not_equal": _XY,
    "math.logical_and": _XY,
    "math.logical_or": _XY,
    "math.logical_not": _X,
    "where": ("condition", "x", "y", "name"),
    "cast": ("x", "dtype", "name"),
    "linalg.matmul": (
        "a",
        "b",
        "transpose_a",
        "transpose_b",
        "adjoint_a",
        "adjoint_b",
        "a_is_sparse",
        "b_is_sparse",
        "output_type",
        "grad_a",
        "grad_b",
        "name",
    ),
    # elementwise
    "nn.relu": _FEATURES,
    "nn.relu6": _FEATURES,
    "nn.elu": _FEATURES,
    "nn.selu": _FEATURES,
    "math.softplus": _FEATURES,
    "nn.silu": ("features", "beta"),
    "nn.gelu": ("features", "approximate", "name"),
    "nn.leaky_relu": ("features", "alpha", "name"),
    "math.sigmoid": _X,
    "math.tanh": _X,
    "math.exp": _X,
    "math.log": _X,
    "math.sqrt": _X,
    "math.rsqrt": _X,
    "math.abs": _X,
    "math.square": _X,
    "math.negative": _X,
    "math.reciprocal": _X,
    "math.sin": _X,
    "math.cos": _X,
    "math.erf": _X,
    "math.sign": _X,
    "math.floor": _X,
    "math.ceil": _X,
    "math.round": _X,
    "nn.softsign": _FEATURES,
    "stop_gradient": ("input", "name"),
    "identity": ("input", "name"),
    "zeros_like": ("input", "dtype", "name", "layout"),
    "ones_like": ("input", "dtype", "name", "layout"),
    "math.l2_normalize": ("x", "axis", "epsilon", "name", "dim"),
    "clip_by_value": ("t", "clip_value_min", "clip_value_max", "name"),
    # reductions and softmax
    "math.reduce_mean": _REDUCE,
    "math.reduce_sum": _REDUCE,
    "math.reduce_max": _REDUCE,
    "math.reduce_min": _REDUCE,
    "math.reduce_prod": _REDUCE,
    "math.reduce_any": _REDUCE,
    "math.reduce_all": _REDUCE,
    "nn.softmax": ("logits", "axis", "name"),
    "nn.log_softmax": ("logits", "axis", "name"),
    # shapes
    "__operators__.getitem": ("tensor", "slice_spec", "var"),
    "concat": ("values", "axis", "name"),
    "stack": ("values", "axis", "name"),
    "tile": ("input", "multiples", "name"),
    "einsum": ("equation", "inputs", "kwargs"),
    "reshape": ("tensor", "shape", "name"),
    "transpose": ("a", "perm", "conjugate", "name"),
    "compat.v1.transpose": ("a", "perm", "name", "conjugate"),
    "expand_dims": ("input", "axis", "name"),
    "squeeze": ("input", "axis", "name"),
    "compat.v1.squeeze": ("input", "axis", "name", "squeeze_dims"),
    "compat.v1.shape": ("input", "name", "out_type"),  # tf.shape records as this
    "split": ("value", "num_or_size_splits", "axis", "num", "name"),
    "image.resize": ("images", "size", "method", "preserve_aspect_ratio", "antialias", "name"),
}


def _constant(value):
    """A 0-d array constant (``2. * x`` stores ``array(2.)``) as a plain Python number."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def _bind(node: Node, required=(), defaults: dict | None = None, fixed: dict | None = None) -> dict:
    """Bind a TF call's positional and keyword arguments to the symbol's signature.

    ``required`` names the arguments the TF function has no default for; ``defaults``
    are the TF defaults of the arguments the lowering implements; ``fixed`` are
    arguments it only supports at one (no-op) value.  ``name`` is dropped.
    """
    params = SIGNATURES[node.class_name]
    shown = ", ".join(p for p in params if p != "name")
    if len(node.args) > len(params):
        raise Unsupported(f"tf.{node.class_name} positional arguments", len(node.args), shown)
    bound = dict(defaults or {})
    for key, value in [*zip(params, node.args), *node.kwargs.items()]:
        if key not in params:
            raise Unsupported(f"tf.{node.class_name} argument {key}", value, shown)
        bound[key] = _constant(value)
    bound.pop("name", None)
    for key, value in (fixed or {}).items():
        if key in bound and (got := bound.pop(key)) != value:
            raise Unsupported(f"tf.{node.class_name} argument {key}", got, repr(value))
    for key in required:
        if key not in bound:
            raise Unsupported(f"tf.{node.class_name} argument {key}", None, "a value")
    unknown = set(bound) - set(required) - set(defaults or {})
    if unknown:
        key = min(unknown)
        raise Unsupported(f"tf.{node.class_name} argument {key}", bound[key], "its default")
    return bound


def _axis(value):
    if isinstance(value, (list, tuple)):
        return tuple(int(a) for a in value)
    return None if value is None else int(value)


def _tf(*symbols: str):
    return register(*symbols, family="tf_ops", kind="tfop", sources=_ONLY_TF)


_BINARY = {
    "__operators__.add": "+",
    "math.add": "+",
    "math.subtract": "-",
    "math.multiply": "*",
    "math.truediv": "/",
    "math.divide": "/",
    "math.pow": "**",
    "math.floordiv": "//",
    "compat.v1.floor_div": "//",
    "math.floormod": "%",
    "math.greater": ">",
    "math.greater_equal": ">=",
    "math.less": "<",
    "math.less_equal": "<=",
    "math.equal": "==",
    "math.not_equal": "!=",
}


@_tf(*_BINARY)
def lower_tf_binary(node: Node) -> Lowered:
    b = _bind(node, ("x", "y"))
    return Lowered(BinOp(_BINARY[node.class_name], b["x"], b["y"]))


_MATMUL_FIXED = dict.fromkeys(
    (
        "transpose_a",
        "transpose_b",
        "adjoint_a",
        "adjoint_b",
        "a_is_sparse",
        "b_is_sparse",
        "grad_a",
        "grad_b",
    ),
    False,
)


@_tf("linalg.matmul")
def lower_tf_matmul(node: Node) -> Lowered:
    b = _bind(node, ("a", "b"), fixed={**_MATMUL_FIXED, "output_type": None})
    return Lowered(BinOp("@", b["a"], b["b"]))


_BINARY_FN = {
    "math.maximum": "jnp.maximum",
    "math.minimum": "jnp.minimum",
    "math.logical_and": "jnp.logical_and",
    "math.logical_or": "jnp.logical_or",
}


@_tf(*_BINARY_FN)
def lower_tf_binary_fn(node: Node) -> Lowered:
    b = _bind(node, ("x", "y"))
    return Lowered(Call(Sym(_BINARY_FN[node.class_name]), (b["x"], b["y"])))


@_tf("math.squared_difference")
def lower_tf_squared_difference(node: Node) -> Lowered:
    b = _bind(node, ("x", "y"))
    return Lowered(Call(Sym("jnp.square"), (BinOp("-", b["x"], b["y"]),)))


@_tf("where")
def lower_tf_where(node: Node) -> Lowered:
    b = _bind(node, ("condition",), {"x": None, "y": None})
    if b["x"] is None or b["y"] is None:
        raise Unsupported(
            "tf.where arguments x/y",
            None,
            "both given (where(condition) has a data-dependent shape)",
        )
    return Lowered(Call(Sym("jnp.where"), (b["condition"], b["x"], b["y"])))


@_tf("cast")
def lower_tf_cast(node: Node) -> Lowered:
    """A float-to-int cast truncates toward zero in TF and in JAX."""
    b = _bind(node, ("x", "dtype"))
    return Lowered(Call(Sym("jnp.asarray"), (b["x"],), {"dtype": dtype_sym(b["dtype"])}))


@_tf("zeros_like", "ones_like")
def lower_tf_fill_like(node: Node) -> Lowered:
    b = _bind(node, ("input",), {"dtype": None}, fixed={"layout": None})
    fn = "jnp.zeros_like" if node.class_name == "zeros_like" else "jnp.ones_like"
    kwargs = {} if b["dtype"] is None else {"dtype": dtype_sym(b["dtype"])}
    return Lowered(Call(Sym(fn), (b["input"],), kwargs))


@_tf("identity", "stop_gradient")
def lower_tf_identity(node: Node) -> Lowered:
    x = _bind(node, ("input",))["input"]
    if node.class_name == "stop_gradient":
        return Lowered(Call(Sym("lax.stop_gradient"), (x,)))
    return Lowered(x)


@_tf("math.l2_normalize")
def lower_tf_l2_normalize(node: Node) -> Lowered:
    """``x * rsqrt(max(sum(x**2, axis, keepdims=True), epsilon))``; ``dim`` is TF's
    deprecated alias of ``axis``."""
    b = _bind(node, ("x",), {"axis": None, "epsilon": 1e-12, "dim": None})
    axis = b["axis"] if b["axis"] is not None else b["dim"]
    kwargs = {"keepdims": True} if axis is None else {"axis": _axis(axis), "keepdims": True}
    square_sum = Call(Sym("jnp.sum"), (Call(Sym("jnp.square"), (b["x"],)),), kwargs)
    clipped = Call(Sym("jnp.maximum"), (square_sum, float(b["epsilon"])))
    return Lowered(BinOp("*", b["x"], Call(Sym("lax.rsqrt"), (clipped,))))


_UNARY = {
    "nn.relu": "jax.nn.relu",
    "nn.relu6": "jax.nn.relu6",
    "nn.elu": "jax.nn.elu",
    "nn.selu": "jax.nn.selu",
    "math.softplus": "jax.nn.softplus",
    "math.sigmoid": "jax.nn.sigmoid",
    "math.tanh": "jnp.tanh",
    "math.exp": "jnp.exp",
    "math.log": "jnp.log",
    "math.sqrt": "jnp.sqrt",
    "math.rsqrt": "lax.rsqrt",
    "math.abs": "jnp.abs",
    "math.square": "jnp.square",
    "math.reciprocal": "jnp.reciprocal",
    "math.sin": "jnp.sin",
    "math.cos": "jnp.cos",
    "math.erf": "lax.erf",
    "math.sign": "jnp.sign",
    "math.floor": "jnp.floor",
    "math.ceil": "jnp.ceil",
    "math.round": "jnp.round",  # half to even, as TF's
    "math.logical_not": "jnp.logical_not",
    "nn.softsign": "jax.nn.soft_sign",
}


@_tf(*_UNARY)
def lower_tf_unary(node: Node) -> Lowered:
    (x,) = _bind(node, (SIGNATURES[node.class_name][0],)).values()
    return Lowered(Call(Sym(_UNARY[node.class_name]), (x,)))


@_tf("math.negative")
def lower_tf_negative(node: Node) -> Lowered:
    return Lowered(Neg(_bind(node, ("x",))["x"]))


@_tf("nn.silu")
def lower_tf_silu(node: Node) -> Lowered:
    """``features * sigmoid(beta * features)``."""
    b = _bind(node, ("features",), {"beta": 1.0})
    x, beta = b["features"], b["beta"]
    if not isinstance(beta, (int, float)):
        raise Unsupported("tf.nn.silu argument beta", beta, "a constant")
    if float(beta) == 1.0:
        return Lowered(Call(Sym("jax.nn.silu"), (x,)))
    return Lowered(BinOp("*", x, Call(Sym("jax.nn.sigmoid"), (BinOp("*", float(beta), x),))))


@_tf("nn.gelu")
def lower_tf_gelu(node: Node) -> Lowered:
    b = _bind(node, ("features",), {"approximate": False})
    return Lowered(
        Call(Sym("jax.nn.gelu"), (b["features"],), {"approximate": bool(b["approximate"])})
    )


@_tf("nn.leaky_relu")
def lower_tf_leaky_relu(node: Node) -> Lowered:
    b = _bind(node, ("features",), {"alpha": 0.2})
    return Lowered(
        Call(Sym("jax.nn.leaky_relu"), (b["features"],), {"negative_slope": float(b["alpha"])})
    )


@_tf("clip_by_value")
def lower_tf_clip(node: Node) -> Lowered:
    b = _bind(node, ("t", "clip_value_min", "clip_value_max"))
    return Lowered(Call(Sym("jnp.clip"), (b["t"], b["clip_value_min"], b["clip_value_max"])))


def _reduce(fn: str):
    def lower_tf_reduce(node: Node) -> Lowered:
        b = _bind(node, ("input_tensor",), {"axis": None, "keepdims": False})
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
    "math.reduce_any": "jnp.any",
    "math.reduce_all": "jnp.all",
}.items():
    _tf(_symbol)(_reduce(_fn))


@_tf("nn.softmax", "nn.log_softmax")
def lower_tf_softmax(node: Node) -> Lowered:
    b = _bind(node, ("logits",), {"axis": None})
    axis = -1 if b["axis"] is None else _axis(b["axis"])
    kwargs = {} if axis == -1 else {"axis": axis}
    fn = "jax.nn.softmax" if node.class_name == "nn.softmax" else "jax.nn.log_softmax"
    return Lowered(Call(Sym(fn), (b["logits"],), kwargs))


@_tf("__operators__.getitem")
def lower_tf_getitem(node: Node) -> Lowered:
    """``tensor[slice_spec]``; a list spec (as tf.keras stores it) indexes like a tuple."""
    b = _bind(node, ("tensor", "slice_spec"), fixed={"var": None})
    key = b["slice_spec"]
    if isinstance(key, list):
        key = tuple(key)
    return Lowered(Index(b["tensor"], key))


@_tf("concat")
def lower_tf_concat(node: Node) -> Lowered:
    b = _bind(node, ("values", "axis"))
    return Lowered(Call(Sym("jnp.concatenate"), (list(b["values"]),), {"axis": int(b["axis"])}))


@_tf("stack")
def lower_tf_stack(node: Node) -> Lowered:
    """Default ``axis=0`` stacks along the batch axis, as TF does."""
    b = _bind(node, ("values",), {"axis": 0})
    return Lowered(Call(Sym("jnp.stack"), (list(b["values"]),), {"axis": int(b["axis"])}))


@_tf("tile")
def lower_tf_tile(node: Node) -> Lowered:
    """``multiples`` includes the batch axis."""
    b = _bind(node, ("input", "multiples"))
    multiples = b["multiples"]
    if not isinstance(multiples, (list, tuple, np.ndarray)):
        raise Unsupported("tf.tile argument multiples", multiples, "a constant list")
    return Lowered(Call(Sym("jnp.tile"), (b["input"], tuple(int(m) for m in multiples))))


@_tf("einsum")
def lower_tf_einsum(node: Node) -> Lowered:
    """``tf.einsum(equation, *inputs)``: its inputs are variadic, so not bound by name."""
    kwargs = {k: v for k, v in node.kwargs.items() if k != "name"}
    if kwargs:
        key = min(kwargs)
        raise Unsupported(f"tf.einsum argument {key}", kwargs[key], "no keyword arguments")
    if not node.args or not isinstance(node.args[0], str):
        raise Unsupported("tf.einsum argument equation", None, "a constant string")
    return Lowered(Call(Sym("jnp.einsum"), (node.args[0], *node.args[1:])))


@_tf("reshape")
def lower_tf_reshape(node: Node) -> Lowered:
    """``tf.reshape``'s shape includes the batch dimension (usually ``-1``)."""
    b = _bind(node, ("tensor", "shape"))
    shape = b["shape"]
    if isinstance(shape, (list, np.ndarray)):
        shape = tuple(_constant(np.asarray(s)) if isinstance(s, np.ndarray) else s for s in shape)
    return Lowered(Call(Sym("jnp.reshape"), (b["tensor"], shape)))


@_tf("transpose", "compat.v1.transpose")
def lower_tf_transpose(node: Node) -> Lowered:
    """No ``perm`` reverses every axis, the batch axis included, as TF does."""
    b = _bind(node, ("a",), {"perm": None}, fixed={"conjugate": False})
    perm = None if b["perm"] is None else tuple(int(p) for p in b["perm"])
    return Lowered(Call(Sym("jnp.transpose"), (b["a"], perm) if perm else (b["a"],)))


@_tf("expand_dims")
def lower_tf_expand_dims(node: Node) -> Lowered:
    b = _bind(node, ("input", "axis"))
    return Lowered(Call(Sym("jnp.expand_dims"), (b["input"],), {"axis": _axis(b["axis"])}))


@_tf("squeeze", "compat.v1.squeeze")
def lower_tf_squeeze(node: Node) -> Lowered:
    """``squeeze_dims`` is tf.compat.v1's deprecated alias of ``axis``."""
    b = _bind(node, ("input",), {"axis": None, "squeeze_dims": None})
    axis = b["axis"] if b["axis"] is not None else b["squeeze_dims"]
    kwargs = {} if axis is None else {"axis": _axis(axis)}
    return Lowered(Call(Sym("jnp.squeeze"), (b["input"],), kwargs))


@_tf("compat.v1.shape")
def lower_tf_shape(node: Node) -> Lowered:
    """``tf.shape(x)``: under ``jax.jit`` every shape is static, so a constant vector
    read from the array (``out_type`` int32 by default, as TF's)."""
    b = _bind(node, ("input",), {"out_type": "int32"})
    dtype = b["out_type"] if isinstance(b["out_type"], str) else "int32"
    return Lowered(
        Call(
            Sym("jnp.array"), (Call(Sym("jnp.shape"), (b["input"],)),), {"dtype": dtype_sym(dtype)}
        )
    )


@_tf("split")
def lower_tf_split(node: Node) -> Lowered:
    """``tf.split`` into a number of equal parts or into parts of the given sizes."""
    b = _bind(node, ("value", "num_or_size_splits"), {"axis": 0}, fixed={"num": None})
    parts, axis = b["num_or_size_splits"], int(b["axis"])
    if isinstance(parts, (list, tuple, np.ndarray)):
        sizes = [int(p) for p in np.asarray(parts).reshape(-1)]
        if -1 in sizes:
            known = sum(p for p in sizes if p != -1)
            total = node.input_shapes[0][axis]
            if total is None:
                raise Unsupported("tf.split argument num_or_size_splits", sizes, "known sizes")
            sizes[sizes.index(-1)] = total - known
        parts = tuple(int(i) for i in np.cumsum(sizes)[:-1])
    else:
        parts = int(parts)
    return Lowered(Call(Sym("jnp.split"), (b["value"], parts), {"axis": axis}))


@_tf("image.resize")
def lower_tf_image_resize(node: Node) -> Lowered:
    """``tf.image.resize`` (TF 2: half-pixel sampling) through ``rt.resize``."""
    from kgen.codegen.lowerings.resampling import resize_call

    b = _bind(
        node,
        ("images", "size"),
        {"method": "bilinear", "antialias": False},
        fixed={"preserve_aspect_ratio": False},
    )
    size = b["size"]
    if not isinstance(size, (list, tuple, np.ndarray)) or len(np.asarray(size).reshape(-1)) != 2:
        raise Unsupported("tf.image.resize argument size", size, "two constant ints")
    if len(node.input_shapes[0]) != 4:
        raise Unsupported("input rank", len(node.input_shapes[0]), "4 (a batch of images)")
    size = tuple(int(v) for v in np.asarray(size).reshape(-1))
    method = b["method"] if isinstance(b["method"], str) else str(b["method"])
    method = method.split(".")[-1].lower()  # ResizeMethod.BILINEAR -> bilinear
    config = {"interpolation": method, "antialias": bool(b["antialias"])}
    return Lowered(resize_call(b["images"], size, config))
