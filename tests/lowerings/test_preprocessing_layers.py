"""One-layer parity tests for kgen/codegen/lowerings/preprocessing.py:
CategoryEncoding and Discretization."""

import keras
import numpy as np
import pytest
from helpers import assert_parity, one_layer_model, rand

from kgen.api import convert
from kgen.errors import UnsupportedError

L = keras.layers


def _ints(*shape, high, seed=0):
    return np.random.default_rng(seed).integers(0, high, size=shape).astype("int32")


@pytest.mark.parametrize("output_mode", ["one_hot", "multi_hot", "count"])
@pytest.mark.parametrize(
    "shape, num_tokens, high",
    [
        ((1,), 6, 6),
        ((5,), 8, 8),
        ((7,), 5, 9),  # tokens >= num_tokens count as nothing, as in Keras
    ],
)
def test_category_encoding(output_mode, shape, num_tokens, high):
    model = one_layer_model(
        L.CategoryEncoding(num_tokens, output_mode=output_mode), shape, dtype="int32"
    )
    assert_parity(model, inputs=[_ints(3, *shape, high=high)])


def test_category_encoding_one_hot_of_a_sequence():
    model = one_layer_model(L.CategoryEncoding(6, output_mode="one_hot"), (4, 3), dtype="int32")
    assert_parity(model, inputs=[_ints(2, 4, 3, high=6)])


def test_category_encoding_count_weights_unsupported():
    x = keras.Input((4,), dtype="int32")
    w = keras.Input((4,))
    model = keras.Model([x, w], L.CategoryEncoding(5, output_mode="count")(x, count_weights=w))
    with pytest.raises(UnsupportedError, match="count_weights"):
        convert(model)


@pytest.mark.parametrize("output_mode", ["int", "one_hot", "multi_hot", "count"])
@pytest.mark.parametrize("shape", [(1,), (6,)])
def test_discretization(output_mode, shape):
    if output_mode == "one_hot" and shape != (1,):
        shape = (3, 2)  # one_hot of a rank-2 sample
    boundaries = [-0.5, 0.0, 0.25, 0.7]
    x = rand(3, *shape, seed=4, low=-1.5, high=1.5)
    x.flat[:4] = boundaries  # values on a boundary go to the bucket above it
    model = one_layer_model(
        L.Discretization(bin_boundaries=boundaries, output_mode=output_mode), shape
    )
    assert_parity(model, inputs=[x])


def test_discretization_adapted():
    layer = L.Discretization(num_bins=4, epsilon=0.01)
    layer.adapt(rand(200, 1, seed=7, low=-2, high=2))
    assert_parity(one_layer_model(layer, (5,)), inputs=[rand(2, 5, seed=8, low=-2, high=2)])
