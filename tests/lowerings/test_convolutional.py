"""One-layer parity tests for kgen/codegen/lowerings/convolutional.py."""

import keras
import pytest
from helpers import assert_layer_parity


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=4, kernel_size=3),
        dict(filters=4, kernel_size=3, padding="same"),
        dict(filters=4, kernel_size=(3, 2), strides=2, padding="same"),
        dict(filters=4, kernel_size=3, strides=(2, 1), padding="valid"),
        dict(filters=4, kernel_size=3, dilation_rate=2, padding="same"),
        dict(filters=6, kernel_size=3, groups=3, padding="same", use_bias=False),
        dict(filters=4, kernel_size=1, activation="relu"),
    ],
)
def test_conv2d(kwargs):
    assert_layer_parity(keras.layers.Conv2D(**kwargs), (9, 9, 6))
