"""Pooling: Max/AveragePooling1D/2D/3D, the global and the adaptive poolings.

Keras ``strides=None`` means strides = pool_size (Flax: 1), and 'same' average pooling
divides by the count of real cells (Flax: ``count_include_pad=False``).  Max and average
pooling call ``rt.max_pool`` / ``rt.avg_pool`` (kgen/runtime/pooling.py): Flax's
arguments, Keras's 'same' average, and a fast path on CPU.
"""

from __future__ import annotations

from kgen.codegen.ir import Call, Index, Lowered, Node, Sym
from kgen.codegen.lowerings.common import channels_last, flax_padding, ntuple
from kgen.codegen.registry import register

_RANK = {"1D": 1, "2D": 2, "3D": 3}
_POOL_FIELDS = {"pool_size", "strides", "padding", "data_format"}


def _pool(node: Node, fn: str) -> Lowered:
    c = node.config
    channels_last(c)
    n = _RANK[node.class_name[-2:]]
    window = ntuple(c["pool_size"], n, "pool_size")
    strides = window if c.get("strides") is None else ntuple(c["strides"], n, "strides")
    padding = flax_padding(c.get("padding", "valid"))
    kwargs = {"strides": strides, "padding": padding}
    return Lowered(Call(Sym(fn), (node.input, window), kwargs))


@register("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", family="pooling", handles=_POOL_FIELDS)
def lower_max_pooling(node: Node) -> Lowered:
    return _pool(node, "rt.max_pool")


@register(
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    family="pooling",
    handles=_POOL_FIELDS,
)
def lower_average_pooling(node: Node) -> Lowered:
    return _pool(node, "rt.avg_pool")


def _global(node: Node, fn: str, **extra) -> Lowered:
    c = node.config
    channels_last(c)
    axes = tuple(range(1, node.rank - 1))
    kwargs = {"axis": axes}
    if c.get("keepdims"):
        kwargs["keepdims"] = True
    kwargs.update(extra)
    return Lowered(Call(Sym(fn), (node.input,), kwargs))


@register(
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    family="pooling",
    handles={"data_format", "keepdims"},
)
def lower_global_max_pooling(node: Node) -> Lowered:
    return _global(node, "jnp.max")


@register(
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    family="pooling",
    handles={"data_format", "keepdims", "mask"},
    notes="1D: Keras 3 masks (mean over unmasked steps)",
)
def lower_global_average_pooling(node: Node) -> Lowered:
    mask = node.kwargs.get("mask")  # (batch, steps), only GlobalAveragePooling1D takes one
    if mask is None:
        return _global(node, "jnp.mean")
    # Keras: the sum over the unmasked steps / their count (NaN when all are masked).
    return _global(node, "jnp.mean", where=Index(mask, (slice(None), slice(None), None)))


@register(
    "AdaptiveAveragePooling1D",
    "AdaptiveAveragePooling2D",
    "AdaptiveAveragePooling3D",
    "AdaptiveMaxPooling1D",
    "AdaptiveMaxPooling2D",
    "AdaptiveMaxPooling3D",
    family="pooling",
    handles={"output_size", "data_format"},
    sources=("keras3",),
    notes="bin i of n -> m covers [floor(i*n/m), ceil((i+1)*n/m)) (rt.adaptive_pool)",
)
def lower_adaptive_pooling(node: Node) -> Lowered:
    c = node.config
    channels_last(c)
    n = _RANK[node.class_name[-2:]]
    output_size = ntuple(c["output_size"], n, "output_size")
    reduce = "max" if node.class_name.startswith("AdaptiveMax") else "mean"
    kwargs = {"reduce": "max"} if reduce == "max" else {}
    return Lowered(Call(Sym("rt.adaptive_pool"), (node.input, output_size), kwargs))
