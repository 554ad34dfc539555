"""One-layer parity tests for kgen/codegen/lowerings/reshaping.py."""

import keras
import pytest
from helpers import assert_layer_parity


@pytest.mark.parametrize("padding", [1, (2, 1), ((1, 2), (0, 3)), ((0, 0), (2, 0))])
def test_zero_padding_2d(padding):
    assert_layer_parity(keras.layers.ZeroPadding2D(padding), (4, 5, 3))


@pytest.mark.parametrize("padding", [2, (1, 3)])
def test_zero_padding_1d(padding):
    assert_layer_parity(keras.layers.ZeroPadding1D(padding), (5, 3))


@pytest.mark.parametrize(
    "cropping", [1, (2, 1), ((1, 2), (0, 3)), ((0, 0), (2, 0)), ((0, 1), (0, 0)), 0]
)
def test_cropping_2d(cropping):
    assert_layer_parity(keras.layers.Cropping2D(cropping), (6, 7, 3))


@pytest.mark.parametrize("cropping", [(1, 2), (0, 3), (2, 0)])
def test_cropping_1d(cropping):
    assert_layer_parity(keras.layers.Cropping1D(cropping), (7, 3))


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4), (5,)])
def test_flatten(shape):
    assert_layer_parity(keras.layers.Flatten(), shape)


@pytest.mark.parametrize(
    "shape, target",
    [
        ((4, 6), (24,)),
        ((4, 6), (3, -1)),
        ((2, 3, 4), (-1, 4, 2)),
        ((12,), (1, 1, 12)),
        ((2, 3, 4), (6, 4)),
    ],
)
def test_reshape(shape, target):
    assert_layer_parity(keras.layers.Reshape(target), shape)


@pytest.mark.parametrize(
    "shape, dims", [((3, 4), (2, 1)), ((2, 3, 4), (3, 1, 2)), ((2, 3, 4), (1, 3, 2))]
)
def test_permute(shape, dims):
    assert_layer_parity(keras.layers.Permute(dims), shape)
