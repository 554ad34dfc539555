"""Whole-model parity for the Keras 3 application families with Normalization,
LayerNormalization, SE blocks, op nodes and application-defined layers: EfficientNet,
EfficientNetV2, MobileNetV3, ConvNeXt, NASNet and InceptionResNetV2.

Every variable is randomised; the logits (``classifier_activation=None``) and a few
intermediate layer outputs are compared with Keras in the same test.  Each family's
smallest model runs in the default suite at a reduced input size; the bigger models
and most option variants are ``catalog`` tests
(``pytest -m catalog tests/test_applications_keras3.py``).
"""

import keras
import pytest
from helpers import assert_parity, rand

# Families whose models normalise raw pixels themselves (Rescaling/Normalization inside):
# feed them images in [0, 255]; the others expect inputs in [-1, 1].
PIXELS = ("EfficientNet", "MobileNetV3", "ConvNeXt")


def check(name, *, taps=8, **options):
    """Build ``keras.applications.<name>`` (no weights, logits), compare, return the report.

    Besides the logits, ``taps`` evenly spaced layer outputs are compared (a multi-output
    model over the same layers).  With random weights the input's signal fades through a
    deep model: EfficientNetB0's logits for two different images differ by ~2e-6
    relative, so a wrong input Normalization passes on logits alone (checked) but not
    on the tapped outputs.
    """
    model = getattr(keras.applications, name)(weights=None, classifier_activation=None, **options)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    step = max(len(layers) // (taps + 1), 1)
    tapped = [layer.output for layer in layers[step::step][:taps]]
    if tapped:
        model = keras.Model(model.inputs, [model.output, *tapped])
    _, h, w, c = model.inputs[0].shape  # MobileNetV3 leaves h, w None unless given
    h, w = h or 224, w or 224
    pixels = name.startswith(PIXELS) and options.get("include_preprocessing", True)
    low, high = (0.0, 255.0) if pixels else (-1.0, 1.0)
    _, report = assert_parity(model, inputs=[rand(2, h, w, c, seed=1, low=low, high=high)])
    print(f"{name} {options}: max rel {report.max_rel:.2e}")
    return report


# The smallest model of each family, at a reduced input size (default suite).
SMALLEST = {
    "EfficientNetB0": (96, 96, 3),
    "EfficientNetV2B0": (96, 96, 3),
    "MobileNetV3Small": (96, 96, 3),
    "ConvNeXtTiny": (96, 96, 3),
    "NASNetMobile": (96, 96, 3),
    "InceptionResNetV2": (75, 75, 3),  # its minimum; odd sizes exercise 'valid' edges
}


@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_smallest(name):
    check(name, input_shape=SMALLEST[name])


# Option variants: the cheap ones in the default suite, the rest in the catalog.
OPTIONS = [
    ("EfficientNetB0", {"input_shape": (64, 64, 3), "include_top": False, "pooling": "avg"}),
    (
        "ConvNeXtTiny",
        {
            "input_shape": (64, 64, 3),
            "include_top": False,
            "pooling": None,
            "include_preprocessing": False,
        },
    ),
    ("MobileNetV3Small", {"input_shape": (64, 64, 3), "alpha": 0.75, "minimalistic": True}),
    (
        "MobileNetV3Small",
        {
            "input_shape": (64, 64, 3),
            "include_top": False,
            "pooling": "max",
            "include_preprocessing": False,
        },
    ),
]
CATALOG_OPTIONS = [
    ("MobileNetV3Small", {"input_shape": (96, 96, 3), "include_top": False, "pooling": None}),
    ("MobileNetV3Small", {"input_shape": (96, 96, 3), "classes": 10, "alpha": 0.75}),
    (
        "MobileNetV3Small",
        {"input_shape": (96, 96, 3), "minimalistic": True, "pooling": "avg", "include_top": False},
    ),
    ("MobileNetV3Large", {"input_shape": (96, 96, 3), "minimalistic": True, "alpha": 0.75}),
    ("EfficientNetB0", {"input_shape": (96, 96, 3), "include_top": False, "pooling": "max"}),
    ("EfficientNetB0", {"input_shape": (160, 160, 3), "classes": 10}),
    (
        "EfficientNetV2B0",
        {
            "input_shape": (96, 96, 3),
            "include_top": False,
            "pooling": "max",
            "include_preprocessing": False,
        },
    ),
    ("EfficientNetV2B0", {"input_shape": (160, 160, 3), "classes": 10}),
    ("EfficientNetV2S", {"input_shape": (96, 96, 3), "include_top": False, "pooling": None}),
    (
        "ConvNeXtTiny",
        {
            "input_shape": (96, 96, 3),
            "include_top": False,
            "pooling": "avg",
            "include_preprocessing": False,
        },
    ),
    ("ConvNeXtTiny", {"input_shape": (160, 160, 3), "include_top": False, "pooling": None}),
    ("ConvNeXtTiny", {"input_shape": (96, 96, 3), "classes": 10}),
    ("NASNetMobile", {"input_shape": (96, 96, 3), "include_top": False, "pooling": "max"}),
    ("NASNetMobile", {"input_shape": (96, 96, 3), "classes": 10}),
    ("InceptionResNetV2", {"input_shape": (96, 96, 3), "include_top": False, "pooling": "avg"}),
    ("InceptionResNetV2", {"input_shape": (96, 96, 3), "classes": 10}),
]


def _id(case):
    name, options = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in options.items() if k != "input_shape")


@pytest.mark.parametrize("case", OPTIONS, ids=_id)
def test_options(case):
    name, options = case
    check(name, **options)


@pytest.mark.catalog
@pytest.mark.parametrize("case", CATALOG_OPTIONS, ids=_id)
def test_options_catalog(case):
    name, options = case
    check(name, **options)


# The bigger models of each family at their default input sizes (slow: catalog only).
BIGGER = [
    *(f"EfficientNetB{i}" for i in range(1, 8)),
    "EfficientNetV2B1",
    "EfficientNetV2B2",
    "EfficientNetV2B3",
    "EfficientNetV2S",
    "EfficientNetV2M",
    "EfficientNetV2L",
    "MobileNetV3Large",
    "ConvNeXtSmall",
    "ConvNeXtBase",
    "ConvNeXtLarge",
    "ConvNeXtXLarge",
    "NASNetLarge",
]


@pytest.mark.catalog
@pytest.mark.parametrize("name", BIGGER)
def test_bigger(name):
    check(name)


@pytest.mark.catalog
@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_smallest_default_size(name):
    check(name)
