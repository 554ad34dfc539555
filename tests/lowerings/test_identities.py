"""Parity tests for the layers that are identities at inference (kgen/codegen/lowerings/
core.py): GaussianNoise, GaussianDropout, AlphaDropout, SpatialDropout1D/2D/3D,
ActivityRegularization; and their training-mode behaviour in the generated module."""

import jax
import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, rand, tf_keras_layer_parity

LAYERS = [
    (lambda: keras.layers.GaussianNoise(0.3), (4, 3)),
    (lambda: keras.layers.GaussianDropout(0.4), (4, 3)),
    (lambda: keras.layers.AlphaDropout(0.2), (4, 3)),
    (lambda: keras.layers.AlphaDropout(0.2, noise_shape=(None, 1, 3)), (4, 3)),
    (lambda: keras.layers.SpatialDropout1D(0.5), (4, 3)),
    (lambda: keras.layers.SpatialDropout2D(0.5), (4, 5, 3)),
    (lambda: keras.layers.SpatialDropout3D(0.5), (2, 4, 5, 3)),
    (lambda: keras.layers.ActivityRegularization(l1=0.1, l2=0.01), (4, 3)),
]
IDS = [
    "gaussian-noise",
    "gaussian-dropout",
    "alpha",
    "alpha-noise-shape",
    "spatial1d",
    "spatial2d",
    "spatial3d",
    "activity-reg",
]


@pytest.mark.parametrize("make, shape", LAYERS, ids=IDS)
def test_identity_at_inference(make, shape):
    conversion, _ = assert_layer_parity(make(), shape)
    x = rand(2, *shape, seed=4)
    y = conversion.module.apply(conversion.variables, x)
    np.testing.assert_array_equal(np.asarray(y), x)  # exactly, not merely close


def _train(layer, shape, x):
    conversion, _ = assert_layer_parity(layer, shape)
    y = conversion.module.apply(
        conversion.variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}
    )
    return np.asarray(y)


def test_spatial_dropout2d_drops_whole_feature_maps_in_training():
    x = rand(8, 4, 5, 16, seed=3, low=1.0, high=2.0)  # no zeros in the input
    y = _train(keras.layers.SpatialDropout2D(0.5), (4, 5, 16), x)
    kept = y != 0
    assert np.all(kept == kept[:, :1, :1, :])  # one decision per (sample, channel)
    assert 0.2 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], (x / 0.5)[kept], rtol=1e-6)


def test_spatial_dropout1d_drops_whole_channels_in_training():
    x = rand(8, 6, 16, seed=3, low=1.0, high=2.0)
    y = _train(keras.layers.SpatialDropout1D(0.25), (6, 16), x)
    kept = y != 0
    assert np.all(kept == kept[:, :1, :])
    np.testing.assert_allclose(y[kept], (x / 0.75)[kept], rtol=1e-6)


def test_gaussian_noise_in_training_adds_noise_of_stddev():
    x = rand(64, 32, seed=3)
    y = _train(keras.layers.GaussianNoise(0.3), (32,), x)
    noise = y - x
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 0.3) < 0.02


def test_gaussian_dropout_in_training_multiplies_by_noise():
    x = rand(64, 32, seed=3, low=1.0, high=2.0)
    y = _train(keras.layers.GaussianDropout(0.2), (32,), x)
    factor = y / x
    assert abs(factor.mean() - 1.0) < 0.02 and abs(factor.std() - 0.5) < 0.03


def test_alpha_dropout_in_training_keeps_standard_normal_statistics():
    x = np.random.default_rng(3).normal(size=(128, 64)).astype(np.float32)
    y = _train(keras.layers.AlphaDropout(0.2), (64,), x)
    assert abs(y.mean()) < 0.05 and abs(y.std() - 1.0) < 0.05
    alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = ((1 - 0.2) * (1 + 0.2 * alpha_p**2)) ** -0.5
    b = -a * alpha_p * 0.2
    dropped = np.isclose(y, a * alpha_p + b)
    assert 0.15 < dropped.mean() < 0.25
    np.testing.assert_allclose(y[~dropped], (a * x + b)[~dropped], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda L: L.GaussianNoise(0.3),
        lambda L: L.GaussianDropout(0.3),
        lambda L: L.AlphaDropout(0.2),
        lambda L: L.SpatialDropout1D(0.3),
        lambda L: L.ActivityRegularization(0.1),
    ],
    ids=["gaussian-noise", "gaussian-dropout", "alpha", "spatial1d", "activity-reg"],
)
def test_identity_at_inference_tf_keras(make):
    tf_keras_layer_parity(make, (4, 3))
