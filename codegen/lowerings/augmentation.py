"""Image augmentation layers users keep inside their models.

Keras applies them only in training: with ``training=False`` every one of these returns
its input unchanged (``transform_images`` is guarded by ``if training``; read in
``keras/src/layers/preprocessing/image_preprocessing/``, and for tf.keras, which also
has ``RandomHeight`` and ``RandomWidth``, in ``tf_keras/src/layers/preprocessing/
image_preprocessing.py``).  kgen lowers them to the identity in both modes: a generated
module never augments, so ``train=True`` does not reproduce Keras's training-time
behaviour.

``AutoContrast`` is not random and transforms at inference too; it runs Keras's formula
(``rt.auto_contrast``).  ``Equalization`` and ``CLAHE`` transform at inference and are
not supported.
"""

from __future__ import annotations

from kgen.codegen.ir import Call, Lowered, Node, Sym
from kgen.codegen.lowerings.common import channels_last
from kgen.codegen.registry import Unsupported, register

_NOTE = "identity at inference; train=True also identity (augmentation is not reproduced)"
_COMMENT = "{}: identity at inference; Keras augments in training, this module does not"

# Every config field of these layers only shapes the random augmentation.
_FIELDS = {
    "data_format",
    "seed",
    "factor",
    "mode",
    "fill_mode",
    "fill_value",
    "interpolation",
    "height_factor",
    "width_factor",
    "x_factor",
    "y_factor",
    "value_range",
    "scale",
    "sigma",
    "kernel_size",
    "brightness_factor",
    "contrast_factor",
    "saturation_factor",
    "hue_factor",
    "addition_factor",
    "threshold_factor",
    "alpha",
    "num_ops",
    "num_chains",
    "chain_depth",
    "all_ops",
    "bounding_box_format",
    "rng_type",  # tf.keras: which random generator
}


def _identity(node: Node) -> Lowered:
    return Lowered(node.input, comment=_COMMENT.format(node.class_name))


_IN_BOTH = (
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
)
_KERAS3_ONLY = (
    "RandomHue",
    "RandomSaturation",
    "RandomGrayscale",
    "RandomSharpness",
    "RandomColorJitter",
    "RandomColorDegeneration",
    "RandomErasing",
    "RandomGaussianBlur",
    "RandomInvert",
    "RandomPosterization",
    "RandomShear",
    "RandomElasticTransform",
    "RandomPerspective",
    "Solarization",
    "AugMix",
    "RandAugment",
    "CutMix",
    "MixUp",
)
_TF_KERAS_ONLY = ("RandomHeight", "RandomWidth")


@register(*_IN_BOTH, family="augmentation", handles=_FIELDS, notes=_NOTE)
@register(*_KERAS3_ONLY, family="augmentation", handles=_FIELDS, sources=("keras3",), notes=_NOTE)
@register(
    *_TF_KERAS_ONLY, family="augmentation", handles=_FIELDS, sources=("tf_keras",), notes=_NOTE
)
def lower_random_augmentation(node: Node) -> Lowered:
    return _identity(node)


@register(
    "RandomCrop",
    family="augmentation",
    handles={"height", "width", "data_format", "seed", "rng_type"},
    notes=_NOTE + "; only when the input already has the target height and width",
)
def lower_random_crop(node: Node) -> Lowered:
    """Keras 3 returns the *uncropped* input at inference while declaring the cropped
    shape, and tf.keras resizes it (``smart_resize``), so only a crop to the input's own
    size is an honest identity."""
    c = node.config
    shape = node.input_shape
    hw = shape[-3:-1] if c.get("data_format", "channels_last") == "channels_last" else shape[-2:]
    target = (int(c["height"]), int(c["width"]))
    if tuple(hw) != target:
        raise Unsupported(
            "height, width",
            target,
            f"the input's own {tuple(hw)} (at inference "
            + (
                "tf.keras resizes the input to it"
                if node.source == "tf_keras"
                else "Keras 3 returns the uncropped input"
            )
            + ")",
        )
    return _identity(node)


@register(
    "AutoContrast",
    family="augmentation",
    handles={"value_range", "data_format"},
    sources=("keras3",),
    notes="Keras's per-image, per-channel stretch to value_range (rt.auto_contrast)",
)
def lower_auto_contrast(node: Node) -> Lowered:
    c = node.config
    channels_last(c)
    if node.rank != 4:
        raise Unsupported("input rank", node.rank, "4 (a batch of images)")
    value_range = tuple(float(v) for v in c.get("value_range", (0, 255)))
    return Lowered(Call(Sym("rt.auto_contrast"), (node.input,), {"value_range": value_range}))
