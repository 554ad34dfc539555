"""Activation functions (the ``activation=`` strings) and the activation layers."""

from __future__ import annotations

from kgen.codegen.ir import SELF, BinOp, Call, Lowered, Module, Node, Sym
from kgen.codegen.registry import Unsupported, register

# Keras 3 activation name -> (function, extra keyword arguments).  Every entry has a
# one-layer parity test in tests/lowerings/test_activations.py.
_KERAS3 = {
    "relu": ("jax.nn.relu", {}),
    "relu6": ("jax.nn.relu6", {}),
    "leaky_relu": ("rt.leaky_relu", {"negative_slope": 0.2}),
    "elu": ("jax.nn.elu", {}),
    "selu": ("jax.nn.selu", {}),
    "celu": ("jax.nn.celu", {}),
    "softplus": ("jax.nn.softplus", {}),
    "softsign": ("jax.nn.soft_sign", {}),
    "soft_shrink": ("rt.soft_shrink", {}),
    "hard_shrink": ("rt.hard_shrink", {}),
    "tanh_shrink": ("rt.tanh_shrink", {}),
    "sparse_plus": ("jax.nn.sparse_plus", {}),
    "silu": ("jax.nn.silu", {}),
    "swish": ("jax.nn.silu", {}),
    "gelu": ("jax.nn.gelu", {"approximate": False}),
    "glu": ("jax.nn.glu", {}),
    "tanh": ("jnp.tanh", {}),
    "sigmoid": ("jax.nn.sigmoid", {}),
    "sparse_sigmoid": ("jax.nn.sparse_sigmoid", {}),
    "exponential": ("jnp.exp", {}),
    "hard_sigmoid": ("jax.nn.hard_sigmoid", {}),
    "hard_silu": ("jax.nn.hard_silu", {}),
    "hard_swish": ("jax.nn.hard_silu", {}),
    "hard_tanh": ("jax.nn.hard_tanh", {}),
    "mish": ("jax.nn.mish", {}),
    "log_softmax": ("rt.log_softmax", {}),
    "log_sigmoid": ("jax.nn.log_sigmoid", {}),
    "softmax": ("rt.softmax", {}),
    "squareplus": ("jax.nn.squareplus", {"b": 4.0}),
    "sparsemax": ("rt.sparsemax", {}),
}
# tf.keras 2 differs: hard_sigmoid is clip(0.2x + 0.5), leaky_relu slope 0.2 (same),
# gelu is exact; no hard_swish/hard_silu strings.
_TF_KERAS = dict(_KERAS3)
_TF_KERAS.update({"hard_sigmoid": ("rt.hard_sigmoid_tf_keras", {})})
for _name in (
    "hard_silu",
    "hard_swish",
    "soft_shrink",
    "hard_shrink",
    "tanh_shrink",
    "sparse_plus",
    "sparse_sigmoid",
    "celu",
    "glu",
    "squareplus",
    "sparsemax",
    "hard_tanh",
    "log_sigmoid",
    "relu6",
    "silu",
):
    _TF_KERAS.pop(_name, None)
_TF_KERAS["relu6"] = ("jax.nn.relu6", {})
_TF_KERAS["silu"] = ("jax.nn.silu", {})

SUPPORTED = sorted(_KERAS3)


def activation_name(value) -> str:
    """The activation string from a config value (a string or a serialised function)."""
    if value is None:
        return "linear"
    if isinstance(value, dict):
        value = value.get("config", value.get("class_name"))
    if not isinstance(value, str):
        raise Unsupported("activation", value, "string activations")
    return value


def apply_activation(expr, value, source: str = "keras3"):
    """Wrap ``expr`` in the activation named by a config value (identity for linear)."""
    name = activation_name(value)
    if name == "linear":
        return expr
    table = _TF_KERAS if source == "tf_keras" else _KERAS3
    if name not in table:
        raise Unsupported("activation", name, ", ".join(sorted(table)))
    fn, kwargs = table[name]
    return Call(Sym(fn), (expr,), dict(kwargs))


@register("Activation", family="activations", handles={"activation"})
def lower_activation(node: Node) -> Lowered:
    return Lowered(apply_activation(node.input, node.config["activation"], node.source))


@register("ReLU", family="activations", handles={"max_value", "negative_slope", "threshold"})
def lower_relu(node: Node) -> Lowered:
    c = node.config
    slope = float(c.get("negative_slope") or 0.0)
    max_value = c.get("max_value")
    threshold = float(c.get("threshold") or 0.0)
    if slope == 0.0 and threshold == 0.0 and max_value is None:
        return Lowered(Call(Sym("jax.nn.relu"), (node.input,)))
    if slope == 0.0 and threshold == 0.0 and float(max_value) == 6.0:
        return Lowered(Call(Sym("jax.nn.relu6"), (node.input,)))
    kwargs = {}
    if slope:
        kwargs["negative_slope"] = slope
    if max_value is not None:
        kwargs["max_value"] = float(max_value)
    if threshold:
        kwargs["threshold"] = threshold
    return Lowered(Call(Sym("rt.relu"), (node.input,), kwargs))


@register("LeakyReLU", family="activations", handles={"negative_slope", "alpha"})
def lower_leaky_relu(node: Node) -> Lowered:
    c = node.config
    slope = c["negative_slope"] if "negative_slope" in c else c.get("alpha", 0.3)
    return Lowered(Call(Sym("rt.leaky_relu"), (node.input,), {"negative_slope": float(slope)}))


@register("ELU", family="activations", handles={"alpha"})
def lower_elu(node: Node) -> Lowered:
    alpha = float(node.config.get("alpha", 1.0))
    kwargs = {} if alpha == 1.0 else {"alpha": alpha}
    return Lowered(Call(Sym("jax.nn.elu"), (node.input,), kwargs))


@register(
    "ThresholdedReLU",
    family="activations",
    handles={"theta"},
    sources=("tf_keras",),  # removed in Keras 3
)
def lower_thresholded_relu(node: Node) -> Lowered:
    """tf.keras: ``x * cast(x > theta)``."""
    theta = float(node.config.get("theta", 1.0))
    kept = BinOp(">", node.input, theta)
    return Lowered(Call(Sym("jnp.where"), (kept, node.input, 0.0)))


@register("Softmax", family="activations", handles={"axis", "mask"})
def lower_softmax(node: Node) -> Lowered:
    axis = node.config.get("axis", -1)
    axis = tuple(axis) if isinstance(axis, (list, tuple)) else int(axis)
    kwargs = {} if axis == -1 else {"axis": axis}
    mask = node.kwargs.get("mask")
    if mask is not None:
        if node.source != "keras3":
            raise Unsupported("mask", "a tensor", "a mask in Keras 3 models")
        return Lowered(Call(Sym("rt.masked_softmax"), (node.input, mask), kwargs))
    fn = "rt.softmax" if isinstance(axis, int) else "jax.nn.softmax"
    return Lowered(Call(Sym(fn), (node.input,), kwargs))


@register("PReLU", family="activations", handles={"shared_axes"})
def lower_prelu(node: Node) -> Lowered:
    alpha = node.weight("alpha")
    return Lowered(
        Call(SELF, (node.input,)),
        module=Module(Sym("rt.PReLU"), (tuple(alpha.shape),)),
        variables={"params": {"alpha": alpha}},
    )
