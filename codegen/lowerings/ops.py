"""Keras 3 Operation nodes: arithmetic, indexing and ``keras.ops`` calls on symbolic
tensors (``x * 0.5``, ``x[:, 1:3]``, ``keras.ops.mean(x, axis=1)``).

These share class names with layers (``ops.Add`` vs ``layers.Add``), so they are
registered with ``kind="op"``.  Constant arguments arrive in ``node.args``.
"""

from __future__ import annotations

import numpy as np

from kgen.codegen.ir import BinOp, Call, Index, Lowered, Neg, Node, Sym
from kgen.codegen.lowerings.common import bind_args, dtype_sym, size
from kgen.codegen.registry import Unsupported, register

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
    if isinstance(key, list):  # as keras GetItem.call does (a .keras file stores tuples as lists)
        key = tuple(key)
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
    register(
        _name, family="ops", kind="op", handles={"axis", "keepdims"}, requires={"initial": None}
    )(_reduction(_fn))


# --- More keras.ops: element-wise functions, activations, reductions, shapes -------------
# Each class's hyper-parameters come from ``op.get_config()`` (``node.config``); tensors and
# constants from the call (``node.args``/``node.kwargs``).  Every entry has a parity test
# in tests/lowerings/test_ops_more.py.


def _axis(value):
    if value is None:
        return None
    return tuple(int(a) for a in value) if isinstance(value, (list, tuple)) else int(value)


def _nested_ints(value):
    if isinstance(value, (list, tuple)):
        return tuple(_nested_ints(v) for v in value)
    return size(value)


_ELEMENTWISE = {
    # keras/src/ops/numpy.py
    "Absolute": "jnp.abs",
    "Fabs": "jnp.abs",
    "Sqrt": "jnp.sqrt",
    "Cbrt": "jnp.cbrt",
    "Exp": "jnp.exp",
    "Exp2": "jnp.exp2",
    "Expm1": "jnp.expm1",
    "Log": "jnp.log",
    "Log1p": "jnp.log1p",
    "Log2": "jnp.log2",
    "Log10": "jnp.log10",
    "Square": "jnp.square",
    "Reciprocal": "jnp.reciprocal",
    "Sign": "jnp.sign",
    "Floor": "jnp.floor",
    "Ceil": "jnp.ceil",
    "Trunc": "jnp.trunc",
    "Sin": "jnp.sin",
    "Cos": "jnp.cos",
    "Tan": "jnp.tan",
    "Sinh": "jnp.sinh",
    "Cosh": "jnp.cosh",
    "Tanh": "jnp.tanh",
    "Arcsin": "jnp.arcsin",
    "Arccos": "jnp.arccos",
    "Arctan": "jnp.arctan",
    "Arcsinh": "jnp.arcsinh",
    "Arctanh": "jnp.arctanh",
    "LogicalNot": "jnp.logical_not",
    "Isnan": "jnp.isnan",
    "Isinf": "jnp.isinf",
    "Isfinite": "jnp.isfinite",
    "Ravel": "jnp.ravel",
    # keras/src/ops/math.py
    "Rsqrt": "lax.rsqrt",
    "Erf": "lax.erf",
    # keras/src/ops/core.py
    "StopGradient": "lax.stop_gradient",
    # keras/src/ops/nn.py (Keras 3 activation functions; constants checked in the tests)
    "Relu": "jax.nn.relu",
    "Relu6": "jax.nn.relu6",
    "Sigmoid": "jax.nn.sigmoid",
    "Softplus": "jax.nn.softplus",
    "Softsign": "jax.nn.soft_sign",
    "Silu": "jax.nn.silu",
    "LogSigmoid": "jax.nn.log_sigmoid",
    "HardSigmoid": "jax.nn.hard_sigmoid",
    "HardSilu": "jax.nn.hard_silu",
    "Selu": "jax.nn.selu",
    "HardTanh": "jax.nn.hard_tanh",
    "SparsePlus": "jax.nn.sparse_plus",
    "TanhShrink": "rt.tanh_shrink",
}


def lower_elementwise(node: Node) -> Lowered:
    return Lowered(Call(Sym(_ELEMENTWISE[node.class_name]), (node.args[0],)))


for _name in _ELEMENTWISE:
    register(_name, family="ops", kind="op")(lower_elementwise)


def _dtype_kwargs(node: Node) -> dict:
    dtype = node.config.get("dtype")
    return {} if dtype is None else {"dtype": dtype_sym(dtype)}


@register("ZerosLike", "OnesLike", family="ops", kind="op", handles={"dtype"})
def lower_like(node: Node) -> Lowered:
    fn = "jnp.zeros_like" if node.class_name == "ZerosLike" else "jnp.ones_like"
    return Lowered(Call(Sym(fn), (node.args[0],), _dtype_kwargs(node)))


_BINARY_FN = {
    "Maximum": "jnp.maximum",
    "Minimum": "jnp.minimum",
    "LogicalAnd": "jnp.logical_and",
    "LogicalOr": "jnp.logical_or",
    "LogicalXor": "jnp.logical_xor",
    "Arctan2": "jnp.arctan2",
    "Logaddexp": "jnp.logaddexp",
    "Hypot": "jnp.hypot",
}


def lower_binary_function(node: Node) -> Lowered:
    a, b = node.args[:2]
    return Lowered(Call(Sym(_BINARY_FN[node.class_name]), (a, b)))


for _name in _BINARY_FN:
    register(_name, family="ops", kind="op")(lower_binary_function)


@register("Round", family="ops", kind="op", handles={"decimals"})
def lower_round(node: Node) -> Lowered:
    decimals = int(node.config.get("decimals", 0))
    kwargs = {"decimals": decimals} if decimals else {}
    return Lowered(Call(Sym("jnp.round"), (node.args[0],), kwargs))


# Activations with a hyper-parameter.
@register("Gelu", family="ops", kind="op", handles={"approximate"})
def lower_gelu(node: Node) -> Lowered:
    """``keras.ops.gelu`` defaults to the tanh approximation (the ``Activation("gelu")``
    layer does not); ``jax.nn.gelu``'s approximation is the same formula."""
    approximate = bool(node.config.get("approximate", True))
    kwargs = {} if approximate else {"approximate": False}
    return Lowered(Call(Sym("jax.nn.gelu"), (node.args[0],), kwargs))


@register("LeakyRelu", family="ops", kind="op", handles={"negative_slope"})
def lower_leaky_relu_op(node: Node) -> Lowered:
    slope = float(node.config.get("negative_slope", 0.2))
    return Lowered(Call(Sym("rt.leaky_relu"), (node.args[0],), {"negative_slope": slope}))


@register("Elu", "Celu", family="ops", kind="op", handles={"alpha"})
def lower_elu_op(node: Node) -> Lowered:
    alpha = float(node.config.get("alpha", 1.0))
    fn = "jax.nn.elu" if node.class_name == "Elu" else "jax.nn.celu"
    return Lowered(Call(Sym(fn), (node.args[0],), {} if alpha == 1.0 else {"alpha": alpha}))


@register("Softmax", "LogSoftmax", "Glu", family="ops", kind="op", handles={"axis"})
def lower_softmax_op(node: Node) -> Lowered:
    fn = {"Softmax": "jax.nn.softmax", "LogSoftmax": "jax.nn.log_softmax", "Glu": "jax.nn.glu"}
    axis = _axis(node.config.get("axis", -1))
    if axis is None:
        raise Unsupported("axis", None, "an int or a tuple of ints")
    kwargs = {} if axis == -1 else {"axis": axis}
    return Lowered(Call(Sym(fn[node.class_name]), (node.args[0],), kwargs))


# Reductions (Mean, Sum, Max, Min, Prod are above).
for _name, _fn in {
    "Std": "jnp.std",
    "Var": "jnp.var",
    "Any": "jnp.any",
    "All": "jnp.all",
    "Amax": "jnp.max",
    "Amin": "jnp.min",
    "Argmax": "jnp.argmax",
    "Argmin": "jnp.argmin",
    "Logsumexp": "jax.nn.logsumexp",
}.items():
    register(_name, family="ops", kind="op", handles={"axis", "keepdims"})(_reduction(_fn))


@register("Cumsum", "Cumprod", family="ops", kind="op", handles={"axis", "dtype"})
def lower_cumulative(node: Node) -> Lowered:
    fn = "jnp.cumsum" if node.class_name == "Cumsum" else "jnp.cumprod"
    kwargs = _dtype_kwargs(node)
    axis = _axis(node.config.get("axis"))
    if axis is not None:
        kwargs["axis"] = axis
    return Lowered(Call(Sym(fn), (node.args[0],), kwargs))


@register("CountNonzero", family="ops", kind="op", handles={"axis"})
def lower_count_nonzero(node: Node) -> Lowered:
    axis = _axis(node.config.get("axis"))
    return Lowered(
        Call(Sym("jnp.count_nonzero"), (node.args[0],), {} if axis is None else {"axis": axis})
    )


@register("Average", family="ops", kind="op", handles={"axis"})
def lower_average(node: Node) -> Lowered:
    args = bind_args(node, ("x", "weights"))
    kwargs = {}
    axis = _axis(node.config.get("axis"))
    if axis is not None:
        kwargs["axis"] = axis
    if args.get("weights") is not None:
        kwargs["weights"] = args["weights"]
    return Lowered(Call(Sym("jnp.average"), (args["x"],), kwargs))


@register("Clip", family="ops", kind="op", handles={"x_min", "x_max"})
def lower_clip(node: Node) -> Lowered:
    c = node.config
    return Lowered(Call(Sym("jnp.clip"), (node.args[0], c.get("x_min"), c.get("x_max"))))


@register("Where", family="ops", kind="op")
def lower_where(node: Node) -> Lowered:
    args = bind_args(node, ("condition", "x1", "x2"))
    if args.get("x1") is None or args.get("x2") is None:
        raise Unsupported("x1/x2", None, "both given (where(condition) has a data-dependent shape)")
    return Lowered(Call(Sym("jnp.where"), (args["condition"], args["x1"], args["x2"])))


@register("Cast", family="ops", kind="op", handles={"dtype"})
def lower_cast(node: Node) -> Lowered:
    """A float-to-int cast truncates toward zero, as TF's does."""
    return Lowered(
        Call(Sym("jnp.asarray"), (node.args[0],), {"dtype": dtype_sym(node.config.get("dtype"))})
    )


@register(
    "ConvertToTensor",
    family="ops",
    kind="op",
    handles={"dtype"},
    requires={"sparse": None, "ragged": None},
)
def lower_convert_to_tensor(node: Node) -> Lowered:
    return Lowered(Call(Sym("jnp.asarray"), (node.args[0],), _dtype_kwargs(node)))


@register("Einsum", family="ops", kind="op", handles={"subscripts"})
def lower_einsum(node: Node) -> Lowered:
    return Lowered(Call(Sym("jnp.einsum"), (str(node.config["subscripts"]), *node.args)))


@register("Tensordot", family="ops", kind="op", handles={"axes"})
def lower_tensordot(node: Node) -> Lowered:
    a, b = node.args[:2]
    axes = node.config.get("axes", 2)
    axes = _nested_ints(axes)
    return Lowered(Call(Sym("jnp.tensordot"), (a, b), {"axes": axes}))


# Shapes: unlike the layers, ops include the batch dim in every axis and shape.
@register("Reshape", family="ops", kind="op", handles={"newshape"})
def lower_reshape_op(node: Node) -> Lowered:
    shape = node.config["newshape"]
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(-1 if d is None else size(d) for d in shape)
    if sum(1 for d in shape if isinstance(d, int) and d == -1) > 1:
        raise Unsupported("newshape", shape, "at most one unknown (-1 or None) dim")
    return Lowered(Call(Sym("jnp.reshape"), (node.args[0], shape)))


@register("Slice", family="ops", kind="op", handles={"shape"})
def lower_slice(node: Node) -> Lowered:
    """``ops.slice(x, start_indices, shape)``: sizes may be run-time :class:`Dim`s.
    Keras 3.15 keeps ``shape`` in the op's config, earlier releases pass it."""
    bound = bind_args(node, ("inputs", "start_indices", "shape"))
    x, start = bound["inputs"], bound["start_indices"]
    shape = tuple(size(d) for d in bound.get("shape", node.config.get("shape")))
    start = tuple(start) if isinstance(start, list) else start
    return Lowered(Call(Sym("lax.dynamic_slice"), (x, start, shape)))


@register("Arange", family="ops", kind="op", handles={"dtype"})
def lower_arange(node: Node) -> Lowered:
    """``ops.arange(start, stop, step)``; sizes may be run-time :class:`Dim`s."""
    bound = bind_args(node, ("start", "stop", "step"))
    args = [bound["start"], bound.get("stop"), bound.get("step")]
    while args and args[-1] is None:
        args.pop()
    dtype = node.config.get("dtype") or bound.get("dtype")
    if dtype is None:  # as Keras resolves it: float if any bound is
        dtype = "float32" if any(isinstance(a, float) for a in args) else "int32"
    return Lowered(Call(Sym("jnp.arange"), tuple(args), {"dtype": dtype_sym(dtype)}))


def _shape_arg(shape):
    """A shape argument (an int or a sequence), its sizes possibly run-time Dims."""
    return tuple(size(d) for d in shape) if isinstance(shape, (list, tuple)) else size(shape)


@register("Ones", "Zeros", family="ops", kind="op", handles={"dtype"})
def lower_ones_zeros(node: Node) -> Lowered:
    shape = _shape_arg(bind_args(node, ("shape",))["shape"])
    fn = "jnp.ones" if node.class_name == "Ones" else "jnp.zeros"
    return Lowered(Call(Sym(fn), (shape,), {"dtype": dtype_sym(node.config.get("dtype"))}))


@register("Full", family="ops", kind="op", handles={"dtype"})
def lower_full(node: Node) -> Lowered:
    bound = bind_args(node, ("shape", "fill_value"))
    return Lowered(
        Call(
            Sym("jnp.full"),
            (_shape_arg(bound["shape"]), bound["fill_value"]),
            {"dtype": dtype_sym(node.config.get("dtype"))},
        )
    )


@register("Eye", "Tri", family="ops", kind="op", handles={"dtype"})
def lower_eye_tri(node: Node) -> Lowered:
    bound = bind_args(node, ("N", "M", "k"))
    fn = "jnp.eye" if node.class_name == "Eye" else "jnp.tri"
    args = (size(bound["N"]), None if bound.get("M") is None else size(bound["M"]))
    return Lowered(
        Call(
            Sym(fn),
            args,
            {"k": bound.get("k", 0), "dtype": dtype_sym(node.config.get("dtype"))},
        )
    )


@register("BroadcastTo", family="ops", kind="op", handles={"shape"})
def lower_broadcast_to(node: Node) -> Lowered:
    bound = bind_args(node, ("x", "shape"))
    shape = tuple(size(d) for d in bound.get("shape", node.config.get("shape")))
    return Lowered(Call(Sym("jnp.broadcast_to"), (bound["x"], shape)))


@register("Transpose", family="ops", kind="op", handles={"axes"})
def lower_transpose_op(node: Node) -> Lowered:
    axes = _axis(node.config.get("axes"))
    return Lowered(Call(Sym("jnp.transpose"), (node.args[0],) + (() if axes is None else (axes,))))


@register("ExpandDims", family="ops", kind="op", handles={"axis"})
def lower_expand_dims(node: Node) -> Lowered:
    return Lowered(Call(Sym("jnp.expand_dims"), (node.args[0], _axis(node.config["axis"]))))


@register("Squeeze", family="ops", kind="op", handles={"axis"})
def lower_squeeze(node: Node) -> Lowered:
    axis = _axis(node.config.get("axis"))
    kwargs = {} if axis is None else {"axis": axis}
    return Lowered(Call(Sym("jnp.squeeze"), (node.args[0],), kwargs))


@register("Concatenate", "Stack", family="ops", kind="op", handles={"axis"})
def lower_concatenate_op(node: Node) -> Lowered:
    """``keras.ops.concatenate`` defaults to axis 0 (the batch), unlike the layer."""
    fn = "jnp.concatenate" if node.class_name == "Concatenate" else "jnp.stack"
    axis = _axis(node.config.get("axis", 0))
    return Lowered(Call(Sym(fn), (list(node.args[0]),), {"axis": axis}))


@register("Split", family="ops", kind="op", handles={"indices_or_sections", "axis"})
def lower_split(node: Node) -> Lowered:
    """Several outputs: one per piece."""
    c = node.config
    sections = c["indices_or_sections"]
    sections = int(sections) if isinstance(sections, int) else list(_nested_ints(sections))
    axis = int(c.get("axis", 0))
    return Lowered(Call(Sym("jnp.split"), (node.args[0], sections), {"axis": axis}))


@register("TopK", family="ops", kind="op", handles={"k"}, requires={"sorted": True})
def lower_top_k(node: Node) -> Lowered:
    """Two outputs: values and indices, along the last axis."""
    return Lowered(Call(Sym("lax.top_k"), (node.args[0], int(node.config["k"]))))


@register("Sort", "Argsort", family="ops", kind="op", handles={"axis"})
def lower_sort(node: Node) -> Lowered:
    fn = "jnp.sort" if node.class_name == "Sort" else "jnp.argsort"
    axis = _axis(node.config.get("axis", -1))
    return Lowered(Call(Sym(fn), (node.args[0],), {"axis": axis}))


@register("Flip", family="ops", kind="op", handles={"axis"})
def lower_flip(node: Node) -> Lowered:
    axis = _axis(node.config.get("axis"))
    return Lowered(Call(Sym("jnp.flip"), (node.args[0],), {} if axis is None else {"axis": axis}))


@register("Roll", family="ops", kind="op", handles={"shift", "axis"})
def lower_roll(node: Node) -> Lowered:
    c = node.config
    kwargs = {} if c.get("axis") is None else {"axis": _axis(c["axis"])}
    return Lowered(Call(Sym("jnp.roll"), (node.args[0], _nested_ints(c["shift"])), kwargs))


@register("Swapaxes", family="ops", kind="op", handles={"axis1", "axis2"})
def lower_swapaxes(node: Node) -> Lowered:
    c = node.config
    return Lowered(Call(Sym("jnp.swapaxes"), (node.args[0], int(c["axis1"]), int(c["axis2"]))))


@register("Moveaxis", family="ops", kind="op", handles={"source", "destination"})
def lower_moveaxis(node: Node) -> Lowered:
    c = node.config
    args = (node.args[0], _axis(c["source"]), _axis(c["destination"]))
    return Lowered(Call(Sym("jnp.moveaxis"), args))


@register("Tile", family="ops", kind="op", handles={"repeats"})
def lower_tile(node: Node) -> Lowered:
    return Lowered(Call(Sym("jnp.tile"), (node.args[0], _nested_ints(node.config["repeats"]))))


@register("Repeat", family="ops", kind="op", handles={"repeats", "axis"})
def lower_repeat(node: Node) -> Lowered:
    c = node.config
    repeats = _nested_ints(c["repeats"])
    axis = _axis(c.get("axis"))
    kwargs = {} if axis is None else {"axis": axis}
    return Lowered(Call(Sym("jnp.repeat"), (node.args[0], repeats), kwargs))


@register("Tril", "Triu", family="ops", kind="op", handles={"k"})
def lower_tri(node: Node) -> Lowered:
    k = int(node.config.get("k", 0))
    fn = "jnp.tril" if node.class_name == "Tril" else "jnp.triu"
    return Lowered(Call(Sym(fn), (node.args[0],), {"k": k} if k else {}))


@register("Pad", family="ops", kind="op", handles={"pad_width", "mode"})
def lower_pad(node: Node) -> Lowered:
    c = node.config
    mode = str(c.get("mode", "constant"))
    if mode not in ("constant", "reflect", "symmetric"):
        raise Unsupported("mode", mode, "'constant', 'reflect', 'symmetric'")
    args = bind_args(node, ("x", "constant_values"))
    kwargs = {} if mode == "constant" else {"mode": mode}
    if args.get("constant_values") not in (None, 0, 0.0):
        kwargs["constant_values"] = args["constant_values"]
    return Lowered(Call(Sym("jnp.pad"), (args["x"], _nested_ints(c["pad_width"])), kwargs))


@register("Take", family="ops", kind="op", handles={"axis"})
def lower_take(node: Node) -> Lowered:
    """Negative indices count from the end (Keras wraps them like JAX's default mode)."""
    args = bind_args(node, ("x", "indices"))
    indices = args["indices"]
    if isinstance(indices, (list, tuple)):
        indices = np.asarray(indices, dtype=np.int32)
    kwargs = {}
    axis = _axis(node.config.get("axis"))
    if axis is not None:
        kwargs["axis"] = axis
    return Lowered(Call(Sym("jnp.take"), (args["x"], indices), kwargs))


@register(
    "OneHot",
    family="ops",
    kind="op",
    handles={"num_classes", "axis", "dtype"},
    requires={"sparse": False},
)
def lower_one_hot(node: Node) -> Lowered:
    c = node.config
    kwargs = {}
    if int(c.get("axis", -1)) != -1:
        kwargs["axis"] = int(c["axis"])
    if c.get("dtype") not in (None, "float32"):
        kwargs["dtype"] = dtype_sym(c["dtype"])
    return Lowered(Call(Sym("jax.nn.one_hot"), (node.args[0], int(c["num_classes"])), kwargs))


@register(
    "Resize",
    family="ops",
    kind="op",
    handles={
        "size",
        "interpolation",
        "antialias",
        "crop_to_aspect_ratio",
        "pad_to_aspect_ratio",
        "fill_value",
        "data_format",
    },
    requires={"fill_mode": "constant"},
)
def lower_image_resize(node: Node) -> Lowered:
    """``keras.ops.image.resize`` of a batch of channels-last images, through ``rt.resize``
    (TF's half-pixel sampling, no antialiasing unless asked)."""
    from kgen.codegen.lowerings.resampling import resize_call

    c = node.config
    if c.get("data_format") not in (None, "channels_last"):
        raise Unsupported("data_format", c["data_format"], "'channels_last'")
    if len(node.input_shapes[0]) != 4:
        raise Unsupported("input rank", len(node.input_shapes[0]), "4 (a batch of images)")
    return Lowered(resize_call(node.args[0], tuple(int(s) for s in c["size"]), c))
