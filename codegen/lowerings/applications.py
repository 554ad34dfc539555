"""Layers that ``keras.applications`` defines for one model family.

* ConvNeXt's ``LayerScale``: ``x * gamma``, gamma of shape ``(projection_dim,)``.
* InceptionResNetV2's ``CustomScaleLayer``: ``inputs[0] + inputs[1] * scale``.

They are matched by class name, so the config fields are checked (``handles``) and the
weights too: a user's own class with the same name but other fields is reported as
unsupported instead of being lowered by guesswork.
"""

from __future__ import annotations

from kgen.codegen.ir import SELF, BinOp, Call, Lowered, Module, Node, Sym
from kgen.codegen.registry import Unsupported, register


@register(
    "LayerScale",
    family="applications",
    handles={"init_values", "projection_dim"},
    sources=("keras3",),
    notes="ConvNeXt's `x * gamma` (keras.applications.convnext)",
)
def lower_layer_scale(node: Node) -> Lowered:
    dim = int(node.config["projection_dim"])
    if len(node.weights) != 1:
        raise Unsupported("weights", sorted(node.weights), "one weight, gamma")
    # Keras 3 leaves the weight unnamed ("variable"); tf.keras calls it "gamma".
    (name,) = node.weights
    gamma = node.weight(name)
    if gamma.shape != (dim,):
        raise Unsupported("gamma shape", gamma.shape, f"({dim},)")
    return Lowered(
        Call(SELF, (node.input,)),
        module=Module(Sym("rt.LayerScale"), (dim,)),
        variables={"params": {"gamma": gamma}},
    )


@register(
    "CustomScaleLayer",
    family="applications",
    handles={"scale"},
    sources=("keras3",),
    notes="InceptionResNetV2's `inputs[0] + inputs[1] * scale`",
)
def lower_custom_scale_layer(node: Node) -> Lowered:
    inputs = node.inputs
    if len(inputs) != 2:
        raise Unsupported("inputs", len(inputs), "2 (shortcut, residual)")
    shortcut, residual = inputs
    scale = node.config["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise Unsupported("scale", scale, "a number")
    return Lowered(BinOp("+", shortcut, BinOp("*", residual, float(scale))))
