"""Normalization layers: BatchNormalization (Keras formula, any axis, center/scale off)."""

from __future__ import annotations

from kgen.codegen.ir import NOT_TRAIN, SELF, Call, Lowered, Module, Node, Sym
from kgen.codegen.lowerings.common import drop_defaults
from kgen.codegen.registry import register


def _axes(value) -> tuple:
    return tuple(int(a) for a in value) if isinstance(value, (list, tuple)) else (int(value),)


@register(
    "BatchNormalization",
    family="normalization",
    handles={"axis", "momentum", "epsilon", "center", "scale", "renorm", "renorm_clipping",
             "renorm_momentum", "synchronized", "fused", "virtual_batch_size", "adjustment"},
    requires={"virtual_batch_size": None, "adjustment": None},
)
def lower_batch_norm(node: Node) -> Lowered:
    c = node.config
    center, scale = bool(c.get("center", True)), bool(c.get("scale", True))
    axis = _axes(c.get("axis", -1))
    rank = node.rank
    # Keras stores the axis as written; normalise to negative so the module reads cleanly.
    axis = tuple(a - rank if a >= 0 else a for a in axis)
    kwargs = drop_defaults(
        {
            "axis": axis,
            "epsilon": float(c.get("epsilon", 1e-3)),
            "momentum": float(c.get("momentum", 0.99)),
            "center": center,
            "scale": scale,
            # tf.keras's fused kernel (rank-4/5 input, no renorm) updates the moving
            # variance with the unbiased batch variance.
            "unbiased_update": node.source == "tf_keras" and rank in (4, 5) and not c.get("renorm"),
        },
        {"axis": (-1,), "momentum": 0.99, "center": True, "scale": True, "unbiased_update": False},
    )
    params = {}
    if scale:
        params["scale"] = node.weight("gamma")
    if center:
        params["bias"] = node.weight("beta")
    stats = {"mean": node.weight("moving_mean"), "var": node.weight("moving_variance")}
    # A frozen layer (trainable=False) or an explicit training=False call uses the
    # moving statistics even while the model trains, as Keras does.
    frozen = c.get("trainable") is False or node.kwargs.get("training") is False
    use_running = True if frozen else NOT_TRAIN
    return Lowered(
        Call(SELF, (node.input,), {"use_running_average": use_running}),
        module=Module(Sym("rt.BatchNorm"), (), kwargs),
        variables={"params": params, "batch_stats": stats},
    )
