"""Normalization layers: BatchNormalization (Keras formula, any axis, center/scale off),
LayerNormalization and the Normalization preprocessing layer."""

from __future__ import annotations

import numpy as np

from kgen.codegen.ir import NOT_TRAIN, SELF, Call, Lowered, Module, Node, Sym
from kgen.codegen.lowerings.common import drop_defaults
from kgen.codegen.registry import Unsupported, register


def _axes(value) -> tuple:
    return tuple(int(a) for a in value) if isinstance(value, (list, tuple)) else (int(value),)


@register(
    "BatchNormalization",
    family="normalization",
    handles={
        "axis",
        "momentum",
        "epsilon",
        "center",
        "scale",
        "renorm",
        "renorm_clipping",
        "renorm_momentum",
        "synchronized",
        "fused",
        "virtual_batch_size",
        "adjustment",
    },
    requires={"virtual_batch_size": None, "adjustment": None},
)
def lower_batch_norm(node: Node) -> Lowered:
    c = node.config
    center, scale = bool(c.get("center", True)), bool(c.get("scale", True))
    axis = _axes(c.get("axis", -1))
    rank = node.rank
    # Keras stores the axis as written; normalise to negative (and sorted, the order of
    # the weights' dims) so the module reads cleanly.
    axis = tuple(sorted(a - rank if a >= 0 else a for a in axis))
    # tf.keras keeps a multi-axis layer's weights in broadcast shape, e.g. (1, H, 1, C).
    feature_shape = tuple(int(node.input_shape[a]) for a in axis)
    kwargs = drop_defaults(
        {
            "axis": axis,
            "epsilon": float(c.get("epsilon", 1e-3)),
            "momentum": float(c.get("momentum", 0.99)),
            "center": center,
            "scale": scale,
            # tf.keras's fused kernel (rank-4/5 input, channel axis first or last, no
            # renorm; the tracer records the layer's own ``fused``) updates the moving
            # variance with the unbiased batch variance.
            "unbiased_update": node.source == "tf_keras"
            and bool(c.get("fused", rank in (4, 5) and not c.get("renorm"))),
        },
        {"axis": (-1,), "momentum": 0.99, "center": True, "scale": True, "unbiased_update": False},
    )

    def weight(name):
        return node.weight(name).reshape(feature_shape)

    params = {}
    if scale:
        params["scale"] = weight("gamma")
    if center:
        params["bias"] = weight("beta")
    stats = {"mean": weight("moving_mean"), "var": weight("moving_variance")}
    # A frozen layer (trainable=False) uses the moving statistics even while the model
    # trains, in both Kerases.  A ``training=`` argument stored on the call wins over the
    # model's mode in tf.keras only: Keras 3's Functional overrides it with the training
    # flag the model is called with, which the generated ``train`` always is.
    training = node.kwargs.get("training") if node.source == "tf_keras" else None
    if c.get("trainable") is False or training is False:
        use_running = True
    elif training is True:
        use_running = False
    else:
        use_running = NOT_TRAIN
    return Lowered(
        Call(SELF, (node.input,), {"use_running_average": use_running}),
        module=Module(Sym("rt.BatchNorm"), (), kwargs),
        variables={"params": params, "batch_stats": stats},
    )


@register(
    "LayerNormalization",
    family="normalization",
    handles={"axis", "epsilon", "center", "scale", "rms_scaling"},
    notes="any axes; Keras's formula; `rms_scaling`",
)
def lower_layer_norm(node: Node) -> Lowered:
    c = node.config
    rank = node.rank
    axis = tuple(sorted(a - rank if a >= 0 else a for a in _axes(c.get("axis", -1))))
    center, scale = bool(c.get("center", True)), bool(c.get("scale", True))
    rms = bool(c.get("rms_scaling", False))
    # epsilon=None means keras.backend.epsilon() in ops.layer_normalization.
    epsilon = 1e-7 if c.get("epsilon", 1e-3) is None else float(c.get("epsilon", 1e-3))
    kwargs = drop_defaults(
        {"axis": axis, "epsilon": epsilon, "center": center, "scale": scale, "rms_scaling": rms},
        {"axis": (-1,), "epsilon": 1e-3, "center": True, "scale": True, "rms_scaling": False},
    )
    params = {}
    if scale or rms:  # Keras creates gamma for rms_scaling even with scale=False
        params["scale"] = node.weight("gamma")
    if center and not rms:
        params["bias"] = node.weight("beta")
    return Lowered(
        Call(SELF, (node.input,)),
        module=Module(Sym("rt.LayerNorm"), (), kwargs),
        variables={"params": params},
    )


@register(
    "Normalization",
    family="normalization",
    handles={"axis", "mean", "variance", "invert"},
    notes="statistics from the config (constants) or adapted (weights); `invert`",
)
def lower_normalization(node: Node) -> Lowered:
    """``(x - mean) / max(sqrt(variance), 1e-7)`` (or its inverse).

    Built with ``mean=``/``variance=`` (ConvNeXt, EfficientNetV2) the statistics are config
    constants and become literals; otherwise (adapted, EfficientNet v1) they are the
    weights ``mean``/``variance`` and live in the submodule's ``batch_stats``.
    """
    c = node.config
    rank = node.rank
    axis = c.get("axis", (-1,))
    keep = tuple(sorted(a % rank for a in (() if axis is None else _axes(axis))))
    invert = bool(c.get("invert", False))
    if c.get("mean") is None:
        kwargs = drop_defaults(
            {"axis": tuple(a - rank for a in keep), "invert": invert},
            {"axis": (-1,), "invert": False},
        )
        stats = {"mean": node.weight("mean"), "variance": node.weight("variance")}
        return Lowered(
            Call(SELF, (node.input,)),
            module=Module(Sym("rt.Normalization"), (), kwargs),
            variables={"batch_stats": stats},
        )
    shape = [int(node.input_shape[d]) if d in keep else 1 for d in range(rank)]
    mean = _normalization_constant(c["mean"], keep, shape, "mean")
    variance = _normalization_constant(c["variance"], keep, shape, "variance")
    kwargs = {"mean": mean, "variance": variance}
    if invert:
        kwargs["invert"] = True
    return Lowered(Call(Sym("rt.normalize"), (node.input,), kwargs))


def _normalization_constant(value, keep: tuple, shape: list, field: str):
    """A config mean/variance broadcast as Keras does (trailing dims onto the kept axes),
    without the leading 1s; a float when it is one value for every element."""
    value = np.asarray(value, dtype=np.float32)
    if value.ndim:
        expanded = [1] * len(shape)
        for i in range(1, value.ndim + 1):
            expanded[keep[-i]] = value.shape[-i]
        value = value.reshape(expanded)
    try:
        value = np.broadcast_to(value, shape)
    except ValueError:
        raise Unsupported(
            field, f"array of shape {value.shape}", f"one broadcastable to {shape}"
        ) from None
    while value.ndim and value.shape[0] == 1:
        value = value[0]
    if value.ndim == 0:
        return float(value)
    if value.size > 4096:
        raise Unsupported(field, f"array of shape {value.shape}", "at most 4096 values")
    return np.ascontiguousarray(value)


@register(
    "GroupNormalization",
    family="normalization",
    handles={"groups", "axis", "epsilon", "center", "scale"},
)
def lower_group_norm(node: Node) -> Lowered:
    """Contiguous groups of channels, Keras's formula (``rt.GroupNorm``); ``groups=-1``
    (instance normalisation) is one group per channel."""
    c = node.config
    rank = node.rank
    axis = int(c.get("axis", -1))
    axis = axis - rank if axis >= 0 else axis
    channels = int(node.input_shapes[0][axis])
    groups = int(c.get("groups", 32))
    groups = channels if groups == -1 else groups
    kwargs = drop_defaults(
        {
            "axis": axis,
            "epsilon": float(c.get("epsilon", 1e-3)),
            "center": bool(c.get("center", True)),
            "scale": bool(c.get("scale", True)),
        },
        {"axis": -1, "epsilon": 1e-3, "center": True, "scale": True},
    )
    params = {}
    if kwargs.get("scale", True):
        params["scale"] = node.weight("gamma")
    if kwargs.get("center", True):
        params["bias"] = node.weight("beta")
    return Lowered(
        Call(SELF, (node.input,)),
        module=Module(Sym("rt.GroupNorm"), (groups,), kwargs),
        variables={"params": params},
    )


@register("UnitNormalization", family="normalization", handles={"axis"})
def lower_unit_norm(node: Node) -> Lowered:
    """``x * min(rsqrt(sum(x^2)), 1e12)`` over ``axis``."""
    rank = node.rank
    axes = tuple(sorted(a - rank if a >= 0 else a for a in _axes(node.config.get("axis", -1))))
    kwargs = {} if axes == (-1,) else {"axis": axes[0] if len(axes) == 1 else axes}
    return Lowered(Call(Sym("rt.l2_normalize"), (node.input,), kwargs))


@register(
    "RMSNormalization",
    family="normalization",
    handles={"axis", "epsilon"},
    sources=("keras3",),  # new in Keras 3
    notes="trailing axes only (Keras broadcasts scale against the trailing dims)",
)
def lower_rms_norm(node: Node) -> Lowered:
    """``x * rsqrt(mean(x^2) + eps) * scale``: Flax's ``RMSNorm`` with the Keras axes and
    epsilon (its default is 1e-6 too, but always passed)."""
    c = node.config
    rank = node.rank
    axes = tuple(sorted(a - rank if a >= 0 else a for a in _axes(c.get("axis", -1))))
    if axes != tuple(range(-len(axes), 0)):
        # Keras multiplies by `scale` broadcast against the trailing dims.
        raise Unsupported("axis", c.get("axis"), "the trailing axes of the input")
    kwargs = {"epsilon": float(c.get("epsilon", 1e-6))}
    if axes != (-1,):
        kwargs.update(reduction_axes=axes, feature_axes=axes)
    return Lowered(
        Call(SELF, (node.input,)),
        module=Module(Sym("nn.RMSNorm"), (), kwargs),
        variables={"params": {"scale": node.weight("scale")}},
    )
