"""One-layer parity tests for the transposed convolutions and Conv3D
(kgen/codegen/lowerings/convolutional.py)."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, one_layer_model, rand, tf_keras_layer_parity

import kgen
from kgen.verify import randomize


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=4, kernel_size=3),
        dict(filters=4, kernel_size=3, padding="same"),
        dict(filters=4, kernel_size=(3, 2), strides=2, padding="same"),
        dict(filters=4, kernel_size=3, strides=(2, 3), padding="valid", use_bias=False),
        dict(filters=4, kernel_size=2, strides=3, padding="valid"),  # stride > kernel
        dict(filters=4, kernel_size=4, strides=2, padding="same", activation="relu"),
        dict(filters=4, kernel_size=3, strides=2, padding="same", output_padding=1),
        dict(filters=4, kernel_size=3, strides=3, padding="valid", output_padding=(2, 1)),
        dict(filters=4, kernel_size=4, strides=3, padding="same", output_padding=(1, 2)),
        dict(filters=4, kernel_size=3, strides=2, padding="valid", output_padding=(0, 1)),
    ],
)
def test_conv2d_transpose(kwargs):
    assert_layer_parity(keras.layers.Conv2DTranspose(**kwargs), (5, 6, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=4, kernel_size=3),
        dict(filters=4, kernel_size=3, strides=2, padding="same"),
        dict(filters=4, kernel_size=4, strides=2, padding="valid", output_padding=1),
        dict(filters=4, kernel_size=5, strides=3, padding="same", output_padding=2, use_bias=False),
        dict(filters=4, kernel_size=2, strides=2, padding="same", activation="tanh"),
    ],
)
def test_conv1d_transpose(kwargs):
    assert_layer_parity(keras.layers.Conv1DTranspose(**kwargs), (7, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=3, kernel_size=2),
        dict(filters=3, kernel_size=3, strides=2, padding="same"),
        dict(
            filters=3,
            kernel_size=(2, 3, 2),
            strides=(2, 1, 2),
            padding="valid",
            output_padding=(1, 0, 0),
        ),
    ],
)
def test_conv3d_transpose(kwargs):
    assert_layer_parity(keras.layers.Conv3DTranspose(**kwargs), (3, 4, 3, 2))


@pytest.mark.parametrize(
    "layer_class, kwargs, shape",
    [
        (
            keras.layers.Conv2DTranspose,
            dict(kernel_size=3, dilation_rate=2, padding="same"),
            (5, 6, 3),
        ),
        (keras.layers.Conv2DTranspose, dict(kernel_size=(2, 3), dilation_rate=(2, 1)), (5, 6, 3)),
        (
            keras.layers.Conv1DTranspose,
            dict(kernel_size=3, dilation_rate=3, padding="valid"),
            (7, 3),
        ),
        (
            keras.layers.Conv1DTranspose,
            dict(kernel_size=4, dilation_rate=2, padding="same"),
            (7, 3),
        ),
    ],
)
def test_dilated_conv_transpose_matches_keras_jax_backend(layer_class, kwargs, shape):
    """TensorFlow's CPU kernels cannot run a dilated transposed convolution, so the
    reference here is Keras's own JAX-backend ``conv_transpose`` on the layer's weights."""
    from keras.src.backend.jax import nn as keras_jax_nn

    layer = layer_class(filters=4, activation="relu", **kwargs)
    model = one_layer_model(layer, shape)
    x = rand(2, *shape, seed=5)
    randomize(model)
    conversion = kgen.convert(model)
    kernel, bias = (np.asarray(w) for w in layer.get_weights())
    reference = keras_jax_nn.conv_transpose(
        x,
        kernel,
        strides=layer.strides,
        padding=layer.padding,
        output_padding=layer.output_padding,
        dilation_rate=layer.dilation_rate,
    )
    reference = np.maximum(np.asarray(reference) + bias, 0.0)
    got = np.asarray(conversion.module.apply(conversion.variables, x))
    assert got.shape == reference.shape == (2, *layer.compute_output_shape((None, *shape))[1:])
    assert np.max(np.abs(got - reference)) / np.max(np.abs(reference)) <= 1e-5


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=3, kernel_size=2),
        dict(filters=3, kernel_size=3, strides=2, padding="same"),
        dict(filters=4, kernel_size=(2, 3, 1), dilation_rate=(1, 2, 1), padding="same", groups=2),
        dict(filters=3, kernel_size=2, strides=(1, 2, 2), use_bias=False, activation="relu"),
    ],
)
def test_conv3d(kwargs):
    assert_layer_parity(keras.layers.Conv3D(**kwargs), (5, 6, 4, 2))


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda L: L.Conv2DTranspose(4, 3, strides=2, padding="same", output_padding=1), (5, 6, 3)),
        (lambda L: L.Conv2DTranspose(4, 4, strides=3, padding="valid"), (5, 6, 3)),
        (lambda L: L.Conv1DTranspose(4, 3, strides=2, padding="same"), (7, 3)),
        (lambda L: L.Conv3DTranspose(3, 2, strides=(1, 2, 2), padding="same"), (3, 4, 3, 2)),
    ],
)
def test_conv_transpose_tf_keras(make, shape):
    tf_keras_layer_parity(make, shape)
