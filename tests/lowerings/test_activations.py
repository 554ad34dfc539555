"""One-layer parity tests for kgen/codegen/lowerings/activations.py.

Inputs span [-5, 5] so every threshold, clip and kink of the activations is crossed.
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, rand

from kgen import runtime as rt
from kgen.codegen.lowerings.activations import SUPPORTED

SHAPE = (5, 6)
# Elementwise functions agree to ~3e-7; the default 1e-4 would let tanh-approximated gelu
# (max rel 9.5e-5 on [-5, 5]) pass for the exact one.
TIGHT = 1e-5


def wide(*shape, seed=0):
    return rand(2, *shape, seed=seed, low=-5.0, high=5.0)


def test_every_keras3_activation_string_is_supported():
    from keras.src.activations import ALL_OBJECTS_DICT

    # 'threshold' needs two required arguments, so it cannot be used as a string.
    strings = set(ALL_OBJECTS_DICT) - {"threshold", "linear"}
    assert strings <= set(SUPPORTED), sorted(strings - set(SUPPORTED))


@pytest.mark.parametrize("name", SUPPORTED)
def test_activation_layer(name):
    layer = keras.layers.Activation(name)
    assert_layer_parity(layer, SHAPE, inputs=[wide(*SHAPE)], tolerance=TIGHT)


def test_activation_linear_is_identity():
    assert_layer_parity(keras.layers.Activation("linear"), SHAPE, inputs=[wide(*SHAPE)])


@pytest.mark.parametrize("name", ["gelu", "hard_sigmoid", "leaky_relu", "hard_silu"])
def test_activation_argument_of_dense(name):
    # The string as an ``activation=`` argument goes through the same table.
    assert_layer_parity(keras.layers.Dense(5, activation=name), (4,), inputs=[wide(4)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_value": 6.0},
        {"max_value": 1.5},
        {"negative_slope": 0.1},
        {"threshold": 1.0},
        {"negative_slope": 0.2, "max_value": 3.0},
        {"negative_slope": 0.2, "threshold": 0.5},
        {"max_value": 4.0, "threshold": 2.0},
        {"negative_slope": 0.3, "max_value": 2.5, "threshold": 1.0},
        {"max_value": 0.0},
    ],
)
def test_relu(kwargs):
    assert_layer_parity(keras.layers.ReLU(**kwargs), SHAPE, inputs=[wide(*SHAPE)], tolerance=TIGHT)


def test_relu_exactly_at_threshold():
    # Keras keeps x only where x > threshold: x == threshold maps to 0.
    x = np.tile(np.array([-1.0, 0.0, 1.0, 2.0, 3.0, 4.0], np.float32), (2, 5, 1))
    assert_layer_parity(
        keras.layers.ReLU(threshold=2.0, max_value=3.0), SHAPE, inputs=[x], tolerance=TIGHT
    )


@pytest.mark.parametrize("kwargs", [{}, {"negative_slope": 0.05}, {"negative_slope": 1.7}])
def test_leaky_relu(kwargs):
    assert_layer_parity(
        keras.layers.LeakyReLU(**kwargs), SHAPE, inputs=[wide(*SHAPE)], tolerance=TIGHT
    )


@pytest.mark.parametrize("kwargs", [{}, {"alpha": 0.5}, {"alpha": 2.5}])
def test_elu(kwargs):
    assert_layer_parity(keras.layers.ELU(**kwargs), SHAPE, inputs=[wide(*SHAPE)], tolerance=TIGHT)


@pytest.mark.parametrize("axis", [-1, 1, 2, [1, 2]])
def test_softmax(axis):
    assert_layer_parity(
        keras.layers.Softmax(axis=axis), (3, 4, 5), inputs=[wide(3, 4, 5)], tolerance=TIGHT
    )


@pytest.mark.parametrize("shared_axes", [None, [1, 2], 3, [1]])
def test_prelu(shared_axes):
    assert_layer_parity(
        keras.layers.PReLU(shared_axes=shared_axes),
        (3, 4, 5),
        inputs=[wide(3, 4, 5)],
        tolerance=TIGHT,
    )


@pytest.mark.parametrize(
    "fn, plain", [(rt.softmax, jax.nn.softmax), (rt.log_softmax, jax.nn.log_softmax)]
)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_cpu_softmax_path_is_jax_nn_softmax(fn, plain, axis):
    # The CPU path finds the maximum by argmax (XLA fuses a reduce_max with the dense
    # layers before it and reruns them: VGG16's head, 20x); the plain one is jax's.
    x = np.random.default_rng(3).normal(0, 20, (4, 7, 5)).astype(np.float32)
    x[0, 0] = -np.inf
    x[1, 2, 3] = np.nan
    expected = np.asarray(plain(x, axis=axis))
    for impl in ("argmax", "xla"):
        np.testing.assert_allclose(fn(x, axis=axis, impl=impl), expected, rtol=1e-6, atol=1e-7)
    g = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
    y = np.nan_to_num(x, nan=0.0, neginf=-30.0)
    ours = jax.grad(lambda v: jnp.sum(fn(v, axis=axis, impl="argmax") * g))(y)
    theirs = jax.grad(lambda v: jnp.sum(plain(v, axis=axis) * g))(y)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
