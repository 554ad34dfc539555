"""Convolutions: Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D,
Conv1D/2D/3DTranspose, and tf.keras's LocallyConnected1D/2D.

Keras kernels are (*k, in/groups, out), Flax's HWIO layout.  Padding 'same' is TF SAME
in both; Flax's own default is SAME, so padding is always passed.
"""

from __future__ import annotations

import numpy as np

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
        {
            "strides": (1,) * n,
            "kernel_dilation": (1,) * n,
            "feature_group_count": 1,
            "use_bias": True,
        },
    )
    params = {"kernel": node.weight("kernel")}
    if c.get("use_bias", True):
        params["bias"] = node.weight("bias")
    conv = "rt.Conv"  # nn.Conv, with a fast path for 1x1 kernels on CPU
    if groups > 1 and groups == int(node.input_shape[-1]):
        # One input channel per group (ConvNeXt's 7x7): a depthwise conv, same kernel
        # layout (*k, 1, filters), run by rt.DepthwiseConv's fast path.
        conv = "rt.DepthwiseConv"
        kwargs.pop("feature_group_count", None)
    module = Module(Sym(conv), (int(c["filters"]), ntuple(c["kernel_size"], n)), kwargs)
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
    requires={"groups": 1},  # tf.keras serialises its Conv base's groups=1
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
    kwargs.pop("feature_group_count", None)
    module = Module(Sym("rt.DepthwiseConv"), (channels * mult, ntuple(c["kernel_size"], n)), kwargs)
    expr = apply_activation(Call(SELF, (node.input,)), c.get("activation"), node.source)
    return Lowered(expr, module=module, variables={"params": params})


@register(
    "SeparableConv1D",
    "SeparableConv2D",
    family="convolutional",
    handles=_CONV_FIELDS - {"groups"} | {"depth_multiplier"},
    requires={"groups": 1},  # tf.keras serialises its Conv base's groups=1
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
    module = Module(
        Sym("rt.SeparableConv"), (int(c["filters"]), ntuple(c["kernel_size"], n)), kwargs
    )
    expr = apply_activation(Call(SELF, (node.input,)), c.get("activation"), node.source)
    return Lowered(expr, module=module, variables={"params": params})


def conv_transpose_pads(kernel, stride, dilation, padding: str, output_padding) -> tuple:
    """(lo, hi) pads of ``lax.conv_transpose`` for one spatial dim, as Keras computes them
    (``keras/src/backend/common/backend_utils.py``,
    ``_convert_conv_transpose_padding_args_from_keras_to_jax``)."""
    k = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(k, stride) - k if output_padding is None else output_padding
        return (k - 1, k - 1 + extra)
    if output_padding is None:
        total = stride + k - 2
    else:
        total = k + k % 2 - 2 + output_padding
    lo = min(total // 2 + total % 2, k - 1)
    return (lo, total - lo)


@register(
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    family="convolutional",
    handles=_CONV_FIELDS - {"groups"} | {"output_padding"},
    requires={"groups": 1},  # tf.keras configs carry Conv's groups
    notes="dilation checked against Keras's JAX backend (TF's CPU kernels lack it)",
)
def lower_conv_transpose(node: Node) -> Lowered:
    """Keras kernels are (*k, filters, in): ``nn.ConvTranspose(transpose_kernel=True)``
    with Keras's explicit pads, which ``lax.conv_transpose`` reads exactly as the Keras
    JAX backend does (the string paddings differ once ``output_padding`` is set)."""
    n = node.rank - 2
    c = node.config
    channels_last(c)
    kernel = ntuple(c["kernel_size"], n, "kernel_size")
    strides = ntuple(c.get("strides", 1), n, "strides")
    dilation = ntuple(c.get("dilation_rate", 1), n, "dilation_rate")
    padding = flax_padding(c.get("padding", "valid")).lower()
    out_pad = c.get("output_padding")
    out_pad = (None,) * n if out_pad is None else ntuple(out_pad, n, "output_padding")
    pads = tuple(
        conv_transpose_pads(k, s, d, padding, p)
        for k, s, d, p in zip(kernel, strides, dilation, out_pad)
    )
    use_bias = bool(c.get("use_bias", True))
    kwargs = drop_defaults(
        {"strides": strides, "padding": pads, "kernel_dilation": dilation, "use_bias": use_bias},
        {"strides": (1,) * n, "kernel_dilation": (1,) * n, "use_bias": True},
    )
    kwargs["transpose_kernel"] = True
    params = {"kernel": node.weight("kernel")}
    if use_bias:
        params["bias"] = node.weight("bias")
    module = Module(Sym("nn.ConvTranspose"), (int(c["filters"]), kernel), kwargs)
    expr = apply_activation(Call(SELF, (node.input,)), c.get("activation"), node.source)
    return Lowered(expr, module=module, variables={"params": params})


def _local_kernel(kernel, implementation: int, in_spatial, kernel_size, strides, cin, filters):
    """Any tf.keras implementation's kernel as ``(positions, prod(k) * cin, filters)``,
    the layout of implementation 1 (``backend.local_conv``), for ``padding="valid"``.

    Implementation 2 stores a dense ``(*in, cin, *out, filters)`` kernel masked to each
    receptive field; implementation 3 the values of a sparse ``(out, in)`` matrix, in the
    sorted order of ``conv_utils.conv_kernel_idxs`` (channels last).
    """
    kernel = np.asarray(kernel)
    if implementation == 1:
        return kernel
    n = len(in_spatial)
    out = tuple((d - k) // s + 1 for d, k, s in zip(in_spatial, kernel_size, strides))
    positions = np.indices(out).reshape(n, -1).T  # (P, n), row-major
    offsets = np.indices(kernel_size).reshape(n, -1).T  # (K, n)
    inputs = positions[:, None, :] * np.asarray(strides) + offsets[None, :, :]  # (P, K, n)
    if implementation == 2:
        index = tuple(inputs[..., d] for d in range(n))
        index += (slice(None),) + tuple(positions[:, None, d] for d in range(n))
        gathered = kernel[index]  # (P, K, cin, filters): the advanced axes come first
        return gathered.reshape(len(positions), -1, filters)
    # implementation 3: rank every (output, input) pair the layer connects, as TF sorts them
    out_flat = np.ravel_multi_index(positions.T, out)[:, None, None, None]
    in_flat = np.ravel_multi_index(np.moveaxis(inputs, -1, 0), in_spatial)[:, :, None, None]
    c = np.arange(cin)[None, None, :, None]
    f = np.arange(filters)[None, None, None, :]
    out_idx = np.broadcast_to(out_flat * filters + f, inputs.shape[:2] + (cin, filters))
    in_idx = np.broadcast_to(in_flat * cin + c, out_idx.shape)
    order = np.lexsort((in_idx.ravel(), out_idx.ravel()))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return kernel[rank].reshape(len(positions), -1, filters)


@register(
    "LocallyConnected1D",
    "LocallyConnected2D",
    family="convolutional",
    handles={
        "filters",
        "kernel_size",
        "strides",
        "padding",
        "data_format",
        "activation",
        "use_bias",
        "implementation",
    },
    sources=("tf_keras",),  # removed in Keras 3
    notes="padding='valid'; implementations 1, 2 and 3",
)
def lower_locally_connected(node: Node) -> Lowered:
    """An unshared convolution (``rt.LocallyConnected``); every implementation's kernel
    is converted to implementation 1's per-position layout."""
    n = _rank(node)
    c = node.config
    channels_last(c)
    if str(c.get("padding", "valid")).lower() != "valid":
        raise Unsupported("padding", c.get("padding"), "'valid'")
    implementation = int(c.get("implementation", 1))
    if implementation not in (1, 2, 3):
        raise Unsupported("implementation", implementation, "1, 2, 3")
    kernel_size, strides = ntuple(c["kernel_size"], n), ntuple(c.get("strides", 1), n, "strides")
    filters = int(c["filters"])
    shape = node.input_shape
    in_spatial, cin = tuple(shape[1:-1]), shape[-1]
    if None in in_spatial or cin is None:
        raise Unsupported("input shape", shape, "fully known spatial and channel sizes")
    kernel = _local_kernel(
        node.weight("kernel"), implementation, in_spatial, kernel_size, strides, cin, filters
    )
    params = {"kernel": kernel.astype(np.float32, copy=False)}
    use_bias = bool(c.get("use_bias", True))
    if use_bias:
        params["bias"] = node.weight("bias")
    kwargs = {} if use_bias else {"use_bias": False}
    module = Module(Sym("rt.LocallyConnected"), (filters, kernel_size, strides), kwargs)
    expr = apply_activation(Call(SELF, (node.input,)), c.get("activation"), node.source)
    return Lowered(expr, module=module, variables={"params": params})
