"""One-layer parity tests for kgen/codegen/lowerings/pooling.py.

Pool sizes that do not divide the input exercise Keras's 'same' padding, where average
pooling divides by the number of real (non-pad) cells."""

import keras
import pytest
from helpers import assert_layer_parity

POOL_2D = [
    {"pool_size": 2},
    {"pool_size": 3, "padding": "same"},
    {"pool_size": 3, "strides": 1, "padding": "same"},
    {"pool_size": (3, 2), "strides": (2, 1), "padding": "valid"},
    {"pool_size": 2, "strides": None, "padding": "same"},
    {"pool_size": (2, 3), "strides": 3, "padding": "same"},
    {"pool_size": 4, "strides": 2, "padding": "valid"},
]


@pytest.mark.parametrize("cls", ["MaxPooling2D", "AveragePooling2D"])
@pytest.mark.parametrize("kwargs", POOL_2D)
def test_pooling_2d(cls, kwargs):
    assert_layer_parity(getattr(keras.layers, cls)(**kwargs), (7, 9, 3))


POOL_1D = [
    {"pool_size": 2},
    {"pool_size": 3, "padding": "same"},
    {"pool_size": 3, "strides": 1, "padding": "same"},
    {"pool_size": 4, "strides": 3, "padding": "valid"},
]


@pytest.mark.parametrize("cls", ["MaxPooling1D", "AveragePooling1D"])
@pytest.mark.parametrize("kwargs", POOL_1D)
def test_pooling_1d(cls, kwargs):
    assert_layer_parity(getattr(keras.layers, cls)(**kwargs), (11, 3))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize(
    "cls, shape",
    [
        ("GlobalAveragePooling1D", (7, 3)),
        ("GlobalMaxPooling1D", (7, 3)),
        ("GlobalAveragePooling2D", (5, 6, 3)),
        ("GlobalMaxPooling2D", (5, 6, 3)),
    ],
)
def test_global_pooling(cls, shape, keepdims):
    assert_layer_parity(getattr(keras.layers, cls)(keepdims=keepdims), shape)
