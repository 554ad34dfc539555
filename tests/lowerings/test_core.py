"""One-layer parity tests for kgen/codegen/lowerings/core.py."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, assert_parity, rand


@pytest.mark.parametrize("shape", [(6,), (4, 6), (3, 4, 6)], ids=["rank2", "rank3", "rank4"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"units": 5},
        {"units": 3, "use_bias": False},
        {"units": 4, "activation": "relu"},
        {"units": 4, "use_bias": False, "activation": "sigmoid"},
    ],
)
def test_dense(shape, kwargs):
    assert_layer_parity(
        keras.layers.Dense(**kwargs), shape, inputs=[rand(2, *shape, low=-3, high=3)]
    )


@pytest.mark.parametrize("noise_shape", [None, (None, 1, 1, 5), (None, 4, 1, 1)])
def test_dropout_is_identity_at_inference(noise_shape):
    conversion, _ = assert_layer_parity(
        keras.layers.Dropout(0.5, noise_shape=noise_shape), (4, 3, 5)
    )
    # The generated module is an identity too (not merely close) in inference mode.
    x = rand(2, 4, 3, 5, seed=3)
    y = conversion.module.apply(conversion.variables, x)
    np.testing.assert_array_equal(np.asarray(y), x)


def test_dropout_in_training_mode_drops_along_noise_shape():
    import jax

    layer = keras.layers.Dropout(0.5, noise_shape=(None, 1, 1, 5))
    conversion, _ = assert_layer_parity(layer, (4, 3, 5))
    x = rand(2, 4, 3, 5, seed=3) + 2.0  # no zeros in the input
    module = conversion.module
    apply = jax.jit(lambda v, x, key: module.apply(v, x, train=True, rngs={"dropout": key}))
    # rbg keys: threefry alone takes ~2 s to compile on CPU.
    y = np.asarray(apply(conversion.variables, x, jax.random.key(0, impl="rbg")))
    kept = y != 0
    # One keep/drop decision per (batch, channel), shared over the spatial dims.
    assert np.all(kept == kept[:, :1, :1, :])
    np.testing.assert_allclose(y[kept], (x / 0.5)[kept], rtol=1e-6)


@pytest.mark.parametrize(
    "scale, offset",
    [
        (1 / 255.0, 0.0),
        (1 / 127.5, -1.0),
        (2.0, 0.5),
        ([0.5, 2.0, -1.5], 0.0),
        ([0.5, 2.0, -1.5], [0.1, -0.2, 0.3]),
        (0.25, [0.1, -0.2, 0.3]),
        (np.array([0.5, 2.0, -1.5], np.float32), np.array([1.0, 0.0, -1.0], np.float32)),
    ],
)
def test_rescaling(scale, offset):
    layer = keras.layers.Rescaling(scale, offset)
    assert_layer_parity(layer, (4, 5, 3), inputs=[rand(2, 4, 5, 3, low=0, high=255)])


def test_identity():
    assert_layer_parity(keras.layers.Identity(), (4, 3))


def test_dense_shared_between_two_inputs():
    dense = keras.layers.Dense(3)
    a, b = keras.Input((4,)), keras.Input((2, 4))
    model = keras.Model([a, b], [dense(a), dense(b)])
    assert_parity(model)
