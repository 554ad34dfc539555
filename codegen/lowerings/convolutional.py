"""Convolutions: Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D.

Keras kernels are (*k, in/groups, out), Flax's HWIO layout.  Padding 'same' is TF SAME
in both; Flax's own default is SAME, so padding is always passed.
"""

from __future__ import annotations

from kgen.codegen.ir import SELF, Call, Lowered, Module, Node, Sym
from kgen.codegen.lowerings.activations import apply_activation
from kgen.codegen.lowerings.common import channels_last, drop_defaults, flax_padding, ntuple
from kgen.codegen.registry import Unsupported, register

_CONV_FIELDS = {
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "data_format",
    "dilation_rate",
    "groups",
    "activation",
    "use_bias",
}
_RANK = {"1D": 1, "2D": 2, "3D": 3}


def _rank(node: Node) -> int:
    return _RANK[node.class_name[-2:]]


def _conv_common(node: Node, n: int):
    c = node.config
    channels_last(c)
    strides = ntuple(c.get("strides", 1), n, "strides")
    dilation = ntuple(c.get("dilation_rate", 1), n, "dilation_rate")
    allowed = ("valid", "same", "causal") if n == 1 else ("valid", "same")
    padding = flax_padding(c.get("padding", "valid"), allowed)
    if padding == "CAUSAL" and any(s != 1 for s in strides):
        raise Unsupported("strides", strides, "1 with padding='causal'")
    return strides, dilation, padding


@register(
    "Conv1D",
    "Conv2D",
    "Conv3D",
    family="convolutional",
    handles=_CONV_FIELDS,
    requires={"lora_rank": None, "lora_alpha": None},
)
def lower_conv(node: Node) -> Lowered:
    n = _rank(node)
    c = node.config
    strides, dilation, padding = _conv_common(node, n)
    groups = int(c.get("groups", 1) or 1)
    kwargs = drop_defaults(
        {
            "strides": strides,
            "padding": padding,
            "kernel_dilation": dilation,
            "feature_group_count": groups,
            "use_bias": bool(c.get("use_bias", True)),
        },
        {"strides": (1,) * n, "kernel_dilation": (1,) * n, "feature_group_count": 1, "use_bias": True},
    )
    params = {"kernel": node.weight("kernel")}
    if c.get("use_bias", True):
        params["bias"] = node.weight("bias")
    module = Module(Sym("nn.Conv"), (int(c["filters"]), ntuple(c["kernel_size"], n)), kwargs)
    expr = apply_activation(Call(SELF, (node.input,)), c.get("activation"), node.source)
    return Lowered(expr, module=module, variables={"params": params})


def _depthwise_kernel(node: Node):
    name = "depthwise_kernel" if "depthwise_kernel" in node.weights else "kernel"
    k = node.weight(name)  # (*k, C, M): output channel c*M + m
    return k.reshape(*k.shape[:-2], 1, k.shape[-2] * k.shape[-1])


@register(
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    family="convolutional",
    handles=_CONV_FIELDS - {"filters", "groups"} | {"depth_multiplier"},
)
def lower_depthwise_conv(node: Node) -> Lowered:
    n = _rank(node)
    c = node.config
    strides, dilation, padding = _conv_common(node, n)
    channels = int(node.input_shape[-1])
    mult = int(c.get("depth_multiplier", 1))
    kwargs = drop_defaults(
        {
            "strides": strides,
            "padding": padding,
            "kernel_dilation": dilation,
            "feature_group_count": channels,
            "use_bias": bool(c.get("use_bias", True)),
        },
        {"strides": (1,) * n, "kernel_dilation": (1,) * n, "use_bias": True},
    )
    params = {"kernel": _depthwise_kernel(node)}
    if c.get("use_bias", True):
        params["bias"] = node.weight("bias")
    module = Module(Sym("nn.Conv"), (channels * mult, ntuple(c["kernel_size"], n)), kwargs)
    expr = apply_activation(Call(SELF, (node.input,)), c.get("activation"), node.source)
    return Lowered(expr, module=module, variables={"params": params})


@register(
    "SeparableConv1D",
    "SeparableConv2D",
    family="convolutional",
    handles=_CONV_FIELDS - {"groups"} | {"depth_multiplier"},
)
def lower_separable_conv(node: Node) -> Lowered:
    n = _rank(node)
    c = node.config
    strides, dilation, padding = _conv_common(node, n)
    mult = int(c.get("depth_multiplier", 1))
    use_bias = bool(c.get("use_bias", True))
    kwargs = drop_defaults(
        {
            "depth_multiplier": mult,
            "strides": strides,
            "padding": padding,
            "kernel_dilation": dilation,
            "use_bias": use_bias,
        },
        {"depth_multiplier": 1, "strides": (1,) * n, "kernel_dilation": (1,) * n, "use_bias": True},
    )
    pointwise = {"kernel": node.weight("pointwise_kernel")}
    if use_bias:
        pointwise["bias"] = node.weight("bias")
    params = {"depthwise": {"kernel": _depthwise_kernel(node)}, "pointwise": pointwise}
    module = Module(Sym("rt.SeparableConv"), (int(c["filters"]), ntuple(c["kernel_size"], n)), kwargs)
    expr = apply_activation(Call(SELF, (node.input,)), c.get("activation"), node.source)
    return Lowered(expr, module=module, variables={"params": params})
