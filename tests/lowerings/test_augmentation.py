"""One-layer parity tests for kgen/codegen/lowerings/augmentation.py: Keras's
augmentation layers at inference (``model(x, training=False)``), and AutoContrast."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, one_layer_model, rand

from kgen.api import convert
from kgen.errors import UnsupportedError

L = keras.layers
SHAPE = (8, 10, 3)

_LAYERS = [
    ("RandomFlip", {"mode": "horizontal_and_vertical"}),
    ("RandomFlip", {"mode": "vertical", "seed": 3}),
    ("RandomRotation", {"factor": 0.2, "fill_mode": "constant", "fill_value": 0.5}),
    ("RandomRotation", {"factor": (-0.3, 0.1), "interpolation": "nearest"}),
    ("RandomZoom", {"height_factor": 0.2, "width_factor": 0.3, "fill_mode": "nearest"}),
    ("RandomTranslation", {"height_factor": 0.1, "width_factor": (-0.2, 0.2)}),
    ("RandomContrast", {"factor": 0.3}),
    ("RandomBrightness", {"factor": 0.2, "value_range": (0, 1)}),
    ("RandomCrop", {"height": 8, "width": 10}),
    ("RandomHue", {"factor": 0.2, "value_range": (0, 1)}),
    ("RandomSaturation", {"factor": 0.3, "value_range": (0, 1)}),
    ("RandomGrayscale", {"factor": 0.5}),
    ("RandomSharpness", {"factor": 0.2, "value_range": (0, 1)}),
    (
        "RandomColorJitter",
        {
            "value_range": (0, 1),
            "brightness_factor": 0.2,
            "contrast_factor": 0.2,
            "saturation_factor": 0.2,
            "hue_factor": 0.1,
        },
    ),
    ("RandomColorDegeneration", {"factor": 0.3}),
    ("RandomErasing", {"factor": 1.0, "fill_value": 0.0}),
    ("RandomGaussianBlur", {"factor": 1.0, "kernel_size": 3, "sigma": 1.0}),
    ("RandomInvert", {"factor": 0.5, "value_range": (0, 1)}),
    ("RandomPosterization", {"factor": 4, "value_range": (0, 1)}),
    ("RandomShear", {"x_factor": 0.2, "y_factor": 0.1}),
    ("RandomElasticTransform", {"factor": 1.0, "scale": 0.5}),
    ("RandomPerspective", {"factor": 1.0, "scale": 0.5}),
    ("Solarization", {"addition_factor": 0.5, "threshold_factor": 0.5, "value_range": (0, 1)}),
    ("AugMix", {"value_range": (0, 1)}),
    ("RandAugment", {"value_range": (0, 1), "num_ops": 3}),
    ("CutMix", {}),
    ("MixUp", {"alpha": 0.4}),
]


@pytest.mark.parametrize(
    "name, kwargs", _LAYERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(_LAYERS)]
)
def test_identity_at_inference(name, kwargs):
    conversion, _ = assert_layer_parity(
        getattr(L, name)(**kwargs), SHAPE, inputs=[rand(2, *SHAPE, low=0, high=1)]
    )
    # kgen's module is exactly the identity, in training too (it never augments).
    x = rand(2, *SHAPE, seed=5, low=0, high=1)
    for train in (False, True):
        y = conversion.module.apply(conversion.variables, x, train=train)
        np.testing.assert_array_equal(np.asarray(y), x)
    assert "augments in training, this module does not" in conversion.source


def test_random_crop_to_another_size_is_unsupported():
    # Keras 3 returns the uncropped 8x10 input at inference yet declares 4x6.
    model = one_layer_model(L.RandomCrop(4, 6), SHAPE)
    with pytest.raises(UnsupportedError, match="uncropped"):
        convert(model)


@pytest.mark.parametrize("value_range", [(0, 1), (0, 255), (-1, 1)])
def test_auto_contrast(value_range):
    lo, hi = value_range
    x = rand(2, *SHAPE, seed=2, low=lo + 0.2 * (hi - lo), high=hi - 0.3 * (hi - lo))
    x[1, :, :, 1] = lo + 0.5 * (hi - lo)  # a constant channel: Keras keeps the input there
    conversion, _ = assert_layer_parity(L.AutoContrast(value_range=value_range), SHAPE, inputs=[x])
    y = np.asarray(conversion.module.apply(conversion.variables, x))
    np.testing.assert_allclose(y[0].min(axis=(0, 1)), lo, atol=1e-4 * (hi - lo))
    np.testing.assert_array_equal(y[1, :, :, 1], x[1, :, :, 1])
