"""One-layer parity tests for kgen/codegen/lowerings/merging.py."""

import keras
import pytest
from helpers import assert_layer_parity

MERGES = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"]


@pytest.mark.parametrize("cls", MERGES)
def test_merge_two_inputs(cls):
    assert_layer_parity(getattr(keras.layers, cls)(), (4, 5), (4, 5))


@pytest.mark.parametrize("cls", [c for c in MERGES if c != "Subtract"])
def test_merge_three_inputs(cls):
    assert_layer_parity(getattr(keras.layers, cls)(), (3, 5), (3, 5), (3, 5))


@pytest.mark.parametrize("cls", MERGES)
def test_merge_broadcasts(cls):
    # The squeeze-and-excitation pattern: (N, 1, 1, C) against (N, H, W, C).
    assert_layer_parity(getattr(keras.layers, cls)(), (1, 1, 4), (3, 5, 4))


def test_multiply_broadcasts_three_inputs():
    assert_layer_parity(keras.layers.Multiply(), (3, 5, 4), (1, 1, 4), (3, 5, 1))


@pytest.mark.parametrize(
    "axis, shapes",
    [
        (-1, [(3, 4, 2), (3, 4, 5)]),
        (1, [(2, 4, 3), (5, 4, 3)]),
        (2, [(3, 1, 2), (3, 4, 2), (3, 2, 2)]),
        (-2, [(3, 2), (4, 2)]),
    ],
)
def test_concatenate(axis, shapes):
    assert_layer_parity(keras.layers.Concatenate(axis=axis), *shapes)
