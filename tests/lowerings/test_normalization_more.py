"""One-layer parity tests for GroupNormalization, UnitNormalization and RMSNormalization
(kgen/codegen/lowerings/normalization.py)."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, rand, tf_keras_layer_parity


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(groups=2), (5, 6, 4)),
        (dict(groups=4, epsilon=1e-5), (3, 5, 8)),
        (dict(groups=-1), (5, 6, 4)),  # instance normalisation
        (dict(groups=1, center=False), (5, 6, 4)),
        (dict(groups=3, scale=False), (7, 6)),
        (dict(groups=2, center=False, scale=False, epsilon=0.1), (7, 6)),
        (dict(groups=2, axis=1), (4, 5, 3)),  # channels-first style
        (dict(groups=3, axis=-2), (4, 6, 3)),
        (dict(groups=2), (3, 4, 2, 6)),
    ],
)
def test_group_normalization(kwargs, shape):
    # A large mean and a small spread: Keras's x * inv + (beta - mean * inv) must be
    # matched, not only the maths.
    x = rand(2, *shape, seed=3, low=20.0, high=21.0)
    layer = keras.layers.GroupNormalization(**kwargs)
    assert_layer_parity(layer, shape, inputs=[x])
    expected = {"gamma"} if layer.scale else set()
    expected |= {"beta"} if layer.center else set()
    assert {w.name for w in layer.weights} == expected


def test_group_normalization_groups_are_contiguous():
    """Channels [0, C/G) form the first group: a per-group constant is normalised away."""
    import kgen

    shape = (3, 3, 6)
    inputs = keras.Input(shape)
    layer = keras.layers.GroupNormalization(groups=2, center=False, scale=False)
    conversion = kgen.convert(keras.Model(inputs, layer(inputs)))
    x = rand(1, *shape, seed=4)
    shifted = x + np.array([5.0] * 3 + [-7.0] * 3, np.float32)
    y0 = np.asarray(conversion.module.apply(conversion.variables, x))
    y1 = np.asarray(conversion.module.apply(conversion.variables, shifted))
    np.testing.assert_allclose(y1, y0, atol=1e-3)


@pytest.mark.parametrize(
    "axis, shape",
    [(-1, (6,)), (-1, (4, 5)), (1, (4, 5)), ([1, 2], (3, 4, 5)), ([-1, -3], (3, 4, 5))],
)
def test_unit_normalization(axis, shape):
    assert_layer_parity(keras.layers.UnitNormalization(axis=axis), shape)


def test_unit_normalization_of_zeros_is_zero():
    x = np.zeros((2, 4, 5), np.float32)
    x[1] = rand(4, 5, seed=2)
    assert_layer_parity(keras.layers.UnitNormalization(), (4, 5), inputs=[x])


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(), (6,)),
        (dict(), (4, 6)),
        (dict(epsilon=1e-3), (3, 4, 6)),
        (dict(axis=3), (3, 4, 6)),
        (dict(axis=[2, 3]), (3, 4, 6)),
        (dict(axis=[-1, -2], epsilon=0.5), (3, 4, 6)),
    ],
)
def test_rms_normalization(kwargs, shape):
    layer = keras.layers.RMSNormalization(**kwargs)
    conversion, _ = assert_layer_parity(layer, shape, inputs=[rand(2, *shape, seed=3, low=-0.2)])
    scale = next(iter(conversion.variables["params"].values()))["scale"]
    assert scale.shape == tuple(layer.scale.shape) and not np.allclose(scale, 1.0)


def test_rms_normalization_over_leading_axes_is_unsupported():
    """Keras multiplies by ``scale`` broadcast against the trailing dims whatever ``axis``
    is (and fails unless the shapes happen to line up): not an RMSNorm over ``axis``."""
    import kgen
    from kgen.errors import UnsupportedError

    inputs = keras.Input((4, 4))
    model = keras.Model(inputs, keras.layers.RMSNormalization(axis=1)(inputs))
    with pytest.raises(UnsupportedError, match="axis"):
        kgen.convert(model)


@pytest.mark.parametrize(
    "make",
    [
        lambda L: L.GroupNormalization(2),
        lambda L: L.GroupNormalization(-1),
        lambda L: L.UnitNormalization(),
    ],
    ids=["group", "instance", "unit"],
)
def test_normalization_tf_keras(make):
    tf_keras_layer_parity(make, (5, 6, 4), inputs=[rand(2, 5, 6, 4, seed=3, low=20.0, high=21.0)])
