"""Core layers: Dense, EinsumDense, Dropout and inference-time identities, Rescaling, Identity."""

from __future__ import annotations

import numpy as np

from kgen.codegen.ir import NOT_TRAIN, SELF, BinOp, Call, Lowered, Module, Node, Sym
from kgen.codegen.lowerings.activations import apply_activation
from kgen.codegen.lowerings.common import channels_last
from kgen.codegen.registry import Unsupported, register


@register(
    "Dense",
    family="core",
    handles={"units", "activation", "use_bias"},
    requires={"lora_rank": None, "lora_alpha": None, "quantization_config": None},
)
def lower_dense(node: Node) -> Lowered:
    c = node.config
    use_bias = bool(c.get("use_bias", True))
    params = {"kernel": node.weight("kernel")}
    if use_bias:
        params["bias"] = node.weight("bias")
    module = Module(Sym("nn.Dense"), (int(c["units"]),), {} if use_bias else {"use_bias": False})
    expr = apply_activation(Call(SELF, (node.input,)), c.get("activation"), node.source)
    return Lowered(expr, module=module, variables={"params": params})


@register("Dropout", family="core", handles={"rate", "noise_shape", "seed"})
def lower_dropout(node: Node) -> Lowered:
    c = node.config
    rate = float(c["rate"])
    kwargs = {}
    noise_shape = c.get("noise_shape")
    if noise_shape is not None:
        dims = tuple(i for i, d in enumerate(noise_shape) if d == 1)
        if dims:
            kwargs["broadcast_dims"] = dims
    return Lowered(
        Call(SELF, (node.input,), {"deterministic": NOT_TRAIN}),
        module=Module(Sym("nn.Dropout"), (rate,), kwargs),
    )


@register("Identity", family="core")
def lower_identity(node: Node) -> Lowered:
    return Lowered(node.input)


@register("Rescaling", family="core", handles={"scale", "offset"})
def lower_rescaling(node: Node) -> Lowered:
    c = node.config
    scale, offset = (
        _constant(c.get("scale", 1.0), "scale"),
        _constant(c.get("offset", 0.0), "offset"),
    )
    expr = node.input
    if not (isinstance(scale, float) and scale == 1.0):
        expr = BinOp("*", expr, scale)
    if not (isinstance(offset, float) and offset == 0.0):
        expr = BinOp("+", expr, offset)
    return Lowered(expr)


def _constant(value, field):
    if isinstance(value, (int, float)):
        return float(value)
    arr = np.asarray(value, dtype=np.float32)
    if arr.size > 4096:
        raise Unsupported(field, f"array of shape {arr.shape}", "at most 4096 values")
    return float(arr) if arr.ndim == 0 else arr


# Inference-time identities.  In training the noise layers run their Keras formula
# (rt.GaussianNoise, ...) with the "dropout" rng stream, as nn.Dropout does.  (A traced
# training=False is not a reliable opt-out: Keras records the call signature's default,
# and model(x, training=True) overrides it.)
def _noise(node: Node, amount: float, module: Module) -> Lowered:
    if amount == 0:
        return Lowered(node.input)
    return Lowered(Call(SELF, (node.input,), {"deterministic": NOT_TRAIN}), module=module)


@register("GaussianNoise", family="core", handles={"stddev", "seed"})
def lower_gaussian_noise(node: Node) -> Lowered:
    stddev = float(node.config["stddev"])
    return _noise(node, stddev, Module(Sym("rt.GaussianNoise"), (stddev,)))


@register("GaussianDropout", family="core", handles={"rate", "seed"})
def lower_gaussian_dropout(node: Node) -> Lowered:
    rate = float(node.config["rate"])
    return _noise(node, rate, Module(Sym("rt.GaussianDropout"), (rate,)))


@register("AlphaDropout", family="core", handles={"rate", "noise_shape", "seed"})
def lower_alpha_dropout(node: Node) -> Lowered:
    rate = float(node.config["rate"])
    noise_shape = node.config.get("noise_shape")
    kwargs = {} if noise_shape is None else {"noise_shape": tuple(noise_shape)}
    return _noise(node, rate, Module(Sym("rt.AlphaDropout"), (rate,), kwargs))


@register(
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    family="core",
    handles={"rate", "seed", "data_format"},
)
def lower_spatial_dropout(node: Node) -> Lowered:
    """Whole feature maps: ``nn.Dropout`` broadcast over the spatial dims."""
    channels_last(node.config)
    rate = float(node.config["rate"])
    spatial = tuple(range(1, node.rank - 1))
    return _noise(node, rate, Module(Sym("nn.Dropout"), (rate,), {"broadcast_dims": spatial}))


@register("ActivityRegularization", family="core", handles={"l1", "l2"})
def lower_activity_regularization(node: Node) -> Lowered:
    """Only adds a loss term in Keras; an identity on values."""
    return Lowered(node.input)


@register(
    "EinsumDense",
    family="core",
    handles={"equation", "output_shape", "bias_axes", "activation"},
    requires={"lora_rank": None, "lora_alpha": None, "quantization_config": None},
)
def lower_einsum_dense(node: Node) -> Lowered:
    """``einsum(equation, x, kernel) + bias`` with Keras's kernel and bias shapes."""
    c = node.config
    kernel = node.weight("kernel")
    params = {"kernel": kernel}
    kwargs = {}
    if "bias" in node.weights:
        params["bias"] = node.weight("bias")
        kwargs["bias_shape"] = tuple(params["bias"].shape)
    module = Module(Sym("rt.EinsumDense"), (str(c["equation"]), tuple(kernel.shape)), kwargs)
    expr = apply_activation(Call(SELF, (node.input,)), c.get("activation"), node.source)
    return Lowered(expr, module=module, variables={"params": params})
