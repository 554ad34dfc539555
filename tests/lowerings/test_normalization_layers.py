"""One-layer parity tests for LayerNormalization and Normalization
(kgen/codegen/lowerings/normalization.py, after BatchNormalization)."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, assert_parity, rand

from kgen.verify import check_model


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({}, (10,)),
        ({}, (5, 6, 7)),
        ({"epsilon": 1e-6}, (4, 4, 8)),  # ConvNeXt
        ({"axis": 1}, (5, 6, 7)),
        ({"axis": [1, 2]}, (5, 6, 7)),
        ({"axis": [-1, -3]}, (5, 6, 7)),
        ({"center": False}, (5, 8)),
        ({"scale": False}, (5, 8)),
        ({"center": False, "scale": False, "epsilon": 0.1}, (5, 8)),
        ({"rms_scaling": True}, (5, 8)),
        ({"rms_scaling": True, "axis": [1, 2], "scale": False}, (5, 6, 4)),
    ],
)
@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
def test_layer_normalization(kwargs, shape):
    # Inputs with a large mean and a small spread: the Keras formula
    # x * inv + (beta - mean * inv) must be matched, not just the maths.
    x = rand(2, *shape, seed=3, low=20.0, high=21.0)
    layer = keras.layers.LayerNormalization(**kwargs)
    assert_layer_parity(layer, shape, inputs=[x])
    weights = {w.name for w in layer.weights}
    expected = set()
    if layer.scale or layer.rms_scaling:
        expected.add("gamma")
    if layer.center and not layer.rms_scaling:
        expected.add("beta")
    assert weights == expected


def test_layer_normalization_weights_randomised():
    """The gamma/beta mapping is checked against non-trivial values (shape (6, 7))."""
    layer = keras.layers.LayerNormalization(axis=[1, 2])
    conversion, _ = assert_layer_parity(layer, (6, 7))
    params = conversion.variables["params"][next(iter(conversion.variables["params"]))]
    assert params["scale"].shape == (6, 7) and params["bias"].shape == (6, 7)
    assert not np.allclose(params["scale"], 1.0) and not np.allclose(params["bias"], 0.0)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({}, (6, 6, 3)),  # EfficientNet: adapt-style, weights mean/variance/count
        ({"axis": 1}, (5, 4)),
        ({"axis": (1, -1)}, (5, 6, 4)),
        ({"axis": None}, (5, 4)),
        ({"invert": True}, (6, 6, 3)),
        ({"axis": 2, "invert": True}, (5, 4, 3)),
    ],
)
def test_normalization_weights(kwargs, shape):
    layer = keras.layers.Normalization(**kwargs)
    assert_layer_parity(layer, shape)
    assert {w.name for w in layer.weights} == {"mean", "variance", "count"}


def test_normalization_adapted():
    """Statistics set by adapt() (not randomised: adapt gives non-trivial values)."""
    data = rand(64, 5, 3, seed=7, low=-3.0, high=10.0)
    layer = keras.layers.Normalization(axis=-1)
    layer.adapt(data)
    model = keras.Sequential([keras.Input((5, 3)), layer])
    conversion, report = check_model(model, randomize_weights=False, inputs=[data[:4]])
    assert report.ok, report.lines()
    stats = conversion.variables["batch_stats"][next(iter(conversion.variables["batch_stats"]))]
    np.testing.assert_allclose(stats["mean"], data.mean(axis=(0, 1)), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        # ConvNeXt (ImageNet mean/variance in pixel units)
        (
            {"mean": [123.675, 116.28, 103.53], "variance": [3409.976, 3262.694, 3291.890]},
            (6, 6, 3),
        ),
        # EfficientNetV2-B*
        (
            {"axis": 3, "mean": [0.485, 0.456, 0.406], "variance": [0.052441, 0.050176, 0.050625]},
            (6, 6, 3),
        ),
        ({"axis": None, "mean": 2.5, "variance": 4.0}, (5, 4)),
        ({"mean": 0.5, "variance": 0.0}, (5, 4)),  # sqrt(0) floored at 1e-7
        (
            {
                "axis": (1, 2),
                "mean": np.arange(12.0).reshape(3, 4),
                "variance": np.full((3, 4), 2.0),
            },
            (3, 4),
        ),
        ({"axis": (1, 2), "mean": [1.0, 2.0, 3.0, 4.0], "variance": [1.0, 2.0, 3.0, 4.0]}, (3, 4)),
        (
            {"axis": 1, "mean": [1.0, -2.0, 3.0], "variance": [0.5, 2.0, 3.0], "invert": True},
            (3, 4),
        ),
    ],
)
def test_normalization_config(kwargs, shape):
    layer = keras.layers.Normalization(**kwargs)
    x = rand(2, *shape, seed=5, low=-5.0, high=200.0)
    assert_layer_parity(layer, shape, inputs=[x])
    assert layer.weights == []


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (5, 5, 8)),  # tf.keras's fused kernel (trailing axes)
        ({"epsilon": 1e-6, "center": False}, (5, 8)),
        ({"axis": [1, 2]}, (5, 6, 4)),
        ({"axis": 1}, (5, 6, 4)),  # non-fused tf.nn.batch_normalization path
    ],
)
def test_layer_normalization_tf_keras(kwargs, shape):
    import tf_keras

    inputs = tf_keras.Input(shape)
    model = tf_keras.Model(inputs, tf_keras.layers.LayerNormalization(**kwargs)(inputs))
    assert_parity(model, inputs=[rand(2, *shape, seed=3, low=20.0, high=21.0)])


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (5, 5, 3)),  # adapt-style: weights mean/variance/count
        ({"axis": (1, 2), "invert": True}, (4, 3)),
        ({"mean": [1.0, 2.0, 3.0], "variance": [1.0, 4.0, 9.0]}, (5, 5, 3)),  # ResNetRS
        ({"axis": None, "mean": 2.0, "variance": 3.0}, (4, 3)),
    ],
)
def test_normalization_tf_keras(kwargs, shape):
    import tf_keras

    inputs = tf_keras.Input(shape)
    model = tf_keras.Model(inputs, tf_keras.layers.Normalization(**kwargs)(inputs))
    assert_parity(model, inputs=[rand(2, *shape, seed=5, low=-5.0, high=10.0)])
