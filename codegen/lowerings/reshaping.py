"""Shape layers: Flatten, Reshape, Permute, ZeroPadding1D/2D/3D, Cropping1D/2D/3D."""

from __future__ import annotations

from kgen.codegen.ir import Call, Index, Lowered, Node, Sym
from kgen.codegen.lowerings.common import channels_last
from kgen.codegen.registry import Unsupported, register

_LETTERS = "bhwdefgijklmnopq"


@register("Flatten", family="reshaping", handles={"data_format"})
def lower_flatten(node: Node) -> Lowered:
    channels_last(node.config)
    rank = node.rank
    if rank <= 2:
        return Lowered(node.input)
    dims = " ".join(_LETTERS[1:rank])
    pattern = f"b {dims} -> b ({dims})"
    return Lowered(Call(Sym("einops.rearrange"), (node.input, pattern)))


@register("Reshape", family="reshaping", handles={"target_shape"})
def lower_reshape(node: Node) -> Lowered:
    out = node.output_shape[1:]
    if all(d is not None for d in out):
        return Lowered(Call(Sym("jnp.reshape"), (node.input, (-1, *out))))
    target = tuple(int(d) for d in node.config["target_shape"])
    return Lowered(Call(Sym("rt.batch_reshape"), (node.input, target)))


@register("Permute", family="reshaping", handles={"dims"})
def lower_permute(node: Node) -> Lowered:
    dims = tuple(int(d) for d in node.config["dims"])
    return Lowered(Call(Sym("jnp.transpose"), (node.input, (0, *dims))))


def _pairs(value, n: int, field: str) -> tuple:
    """Keras padding/cropping config as ((lo, hi),) * n."""
    if isinstance(value, int):
        return ((value, value),) * n
    value = tuple(value)
    if n == 1 and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (tuple(value),)
    if len(value) != n:
        raise Unsupported(field, value, f"an int, {n} ints or {n} pairs")
    return tuple((v, v) if isinstance(v, int) else (int(v[0]), int(v[1])) for v in value)


_RANK = {"1D": 1, "2D": 2, "3D": 3}


@register(
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    family="reshaping",
    handles={"padding", "data_format"},
)
def lower_zero_padding(node: Node) -> Lowered:
    channels_last(node.config)
    n = _RANK[node.class_name[-2:]]
    pads = _pairs(node.config["padding"], n, "padding")
    return Lowered(Call(Sym("jnp.pad"), (node.input, ((0, 0), *pads, (0, 0)))))


@register(
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    family="reshaping",
    handles={"cropping", "data_format"},
)
def lower_cropping(node: Node) -> Lowered:
    channels_last(node.config)
    n = _RANK[node.class_name[-2:]]
    crops = _pairs(node.config["cropping"], n, "cropping")
    key = (slice(None),) + tuple(slice(lo or None, -hi if hi else None) for lo, hi in crops)
    return Lowered(Index(node.input, key))
