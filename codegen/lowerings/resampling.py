"""Resampling: UpSampling1D/2D/3D, Resizing, CenterCrop (channels-last).

Nearest up-sampling repeats each spatial dim, as Keras does.  Every other interpolation
goes through ``rt.resize``, which follows Keras's ``ops.image.resize`` on the
TensorFlow backend: half-pixel centres and no antialiasing unless the layer asks for
it (``jax.image.resize`` antialiases by default, Keras does not).
"""

from __future__ import annotations

from kgen.codegen.ir import Call, Index, Lowered, Node, Sym
from kgen.codegen.lowerings.common import channels_last, ntuple
from kgen.codegen.registry import Unsupported, register
from kgen.runtime.resampling import INTERPOLATIONS


def _interpolation(value) -> str:
    value = str(value).lower()
    if value not in INTERPOLATIONS:
        raise Unsupported("interpolation", value, ", ".join(repr(i) for i in INTERPOLATIONS))
    return value


@register("UpSampling1D", family="resampling", handles={"size"})
def lower_upsampling1d(node: Node) -> Lowered:
    size = int(node.config.get("size", 2))
    if size == 1:
        return Lowered(node.input)
    return Lowered(Call(Sym("jnp.repeat"), (node.input, size), {"axis": 1}))


@register("UpSampling2D", family="resampling", handles={"size", "data_format", "interpolation"})
def lower_upsampling2d(node: Node) -> Lowered:
    c = node.config
    channels_last(c)
    size = ntuple(c.get("size", 2), 2, "size")
    interpolation = _interpolation(c.get("interpolation", "nearest"))
    args = (node.input, size) if interpolation == "nearest" else (node.input, size, interpolation)
    return Lowered(Call(Sym("rt.upsample"), args))


@register("UpSampling3D", family="resampling", handles={"size", "data_format"})
def lower_upsampling3d(node: Node) -> Lowered:
    channels_last(node.config)
    size = ntuple(node.config.get("size", 2), 3, "size")
    return Lowered(Call(Sym("rt.upsample"), (node.input, size)))


@register(
    "Resizing",
    family="resampling",
    handles={
        "height",
        "width",
        "interpolation",
        "crop_to_aspect_ratio",
        "pad_to_aspect_ratio",
        "fill_value",
        "antialias",
        "data_format",
    },
    requires={"fill_mode": "constant", "bounding_box_format": None},
    notes="nearest, bilinear, bicubic (TF's), lanczos3/5; not area",
)
def lower_resizing(node: Node) -> Lowered:
    c = node.config
    channels_last(c)
    if node.rank != 4:
        raise Unsupported("input rank", node.rank, "4 (a batch of images)")
    return Lowered(resize_call(node.input, (int(c["height"]), int(c["width"])), c))


def resize_call(x, size: tuple, c: dict) -> Call:
    """``rt.resize`` with a Resizing layer's or ``ops.image.resize``'s options."""
    interpolation = _interpolation(c.get("interpolation", "bilinear"))
    kwargs = {}
    if c.get("antialias"):
        kwargs["antialias"] = True
    if c.get("crop_to_aspect_ratio"):
        kwargs["crop_to_aspect_ratio"] = True
    elif c.get("pad_to_aspect_ratio"):
        kwargs["pad_to_aspect_ratio"] = True
        fill = float(c.get("fill_value") or 0.0)
        if fill != 0.0:
            kwargs["fill_value"] = fill
    return Call(Sym("rt.resize"), (x, size, interpolation), kwargs)


@register(
    "CenterCrop",
    family="resampling",
    handles={"height", "width", "data_format"},
    requires={"bounding_box_format": None},
)
def lower_center_crop(node: Node) -> Lowered:
    """A slice when the input is known to be large enough; otherwise ``rt.center_crop``
    (Keras then crops to the target aspect ratio and resizes)."""
    c = node.config
    channels_last(c)
    if node.rank != 4:
        raise Unsupported("input rank", node.rank, "4 (a batch of images)")
    height, width = int(c["height"]), int(c["width"])
    h, w = node.input_shape[1:3]
    if h is not None and w is not None and h >= height and w >= width:
        top, left = (h - height) // 2, (w - width) // 2
        key = (slice(None), slice(top, top + height), slice(left, left + width))
        return Lowered(Index(node.input, key))
    return Lowered(Call(Sym("rt.center_crop"), (node.input, height, width)))
