"""One-layer parity tests for the 3-D poolings (kgen/codegen/lowerings/pooling.py; the
1-D/2-D ones are in test_pooling.py)."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity

_POOL_CONFIGS = [
    dict(pool_size=2),
    dict(pool_size=(2, 3, 1), strides=1),
    dict(pool_size=3, strides=2, padding="same"),
    dict(pool_size=(3, 2, 2), strides=(1, 2, 3), padding="same"),
    dict(pool_size=2, strides=(2, 1, 1), padding="valid"),
]


@pytest.mark.parametrize("kwargs", _POOL_CONFIGS)
def test_max_pooling3d(kwargs):
    assert_layer_parity(keras.layers.MaxPooling3D(**kwargs), (5, 6, 7, 2))


@pytest.mark.parametrize("kwargs", _POOL_CONFIGS)
def test_average_pooling3d(kwargs):
    # 'same' average pooling divides by the count of real cells at the borders.
    assert_layer_parity(keras.layers.AveragePooling3D(**kwargs), (5, 6, 7, 2))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize(
    "layer_class, shape",
    [
        (keras.layers.GlobalMaxPooling3D, (3, 4, 5, 2)),
        (keras.layers.GlobalAveragePooling3D, (3, 4, 5, 2)),
    ],
)
def test_global_pooling_3d(layer_class, shape, keepdims):
    conversion, _ = assert_layer_parity(layer_class(keepdims=keepdims), shape)
    out = conversion.module.apply(conversion.variables, np.zeros((2, *shape), np.float32))
    assert out.ndim == (len(shape) + 1 if keepdims else 2)
