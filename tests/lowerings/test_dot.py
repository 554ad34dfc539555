"""One-layer parity tests for Dot (kgen/codegen/lowerings/merging.py)."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, assert_parity


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(
    "axes, shapes",
    [
        (1, [(5,), (5,)]),  # -> (batch, 1)
        (-1, [(4, 5), (3, 5)]),
        ((2, 1), [(4, 5), (5, 3)]),
        ((1, 2), [(5, 4), (3, 5)]),
        (1, [(5,), (5, 3)]),
        ((2, 1), [(4, 5), (5,)]),
        ((3, 2), [(2, 4, 5), (3, 5, 2)]),
    ],
)
def test_dot(axes, shapes, normalize):
    conversion, _ = assert_layer_parity(keras.layers.Dot(axes, normalize=normalize), *shapes)
    assert "einsum" in conversion.source


def test_dot_normalize_of_zeros_is_zero():
    x = np.zeros((2, 5), np.float32)
    x[1] = 1.0
    y = np.ones((2, 5), np.float32)
    assert_layer_parity(keras.layers.Dot(1, normalize=True), (5,), (5,), inputs=[x, y])


def tf_keras_layer_parity(make_layer, *shapes, dtype="float32", inputs=None):
    """The same one-layer check with legacy tf.keras (``tf_keras``) building the model."""
    tfk = pytest.importorskip("tf_keras")
    ins = [tfk.Input(s, dtype=dtype) for s in shapes]
    x = ins if len(ins) > 1 else ins[0]
    return assert_parity(tfk.Model(x, make_layer(tfk.layers)(x)), inputs=inputs)


def test_dot_tf_keras():
    tf_keras_layer_parity(lambda L: L.Dot((2, 1), normalize=True), (4, 5), (5, 3))
