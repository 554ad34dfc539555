"""One-layer parity tests for EinsumDense (kgen/codegen/lowerings/core.py)."""

import keras
import pytest
from helpers import assert_layer_parity, rand


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"equation": "ab,bc->ac", "output_shape": 5, "bias_axes": "c"}, (6,)),
        ({"equation": "ab,bc->ac", "output_shape": 4}, (6,)),
        ({"equation": "abc,cd->abd", "output_shape": (None, 5), "bias_axes": "d"}, (3, 6)),
        ({"equation": "abc,cde->abde", "output_shape": (None, 2, 3), "bias_axes": "de"}, (3, 6)),
        ({"equation": "abc,cde->abde", "output_shape": (None, 2, 3), "bias_axes": "e"}, (3, 6)),
        (
            {"equation": "abc,bcd->ad", "output_shape": 7, "bias_axes": "d", "activation": "relu"},
            (3, 4),
        ),
        ({"equation": "abcd,cde->abe", "output_shape": (3, 5), "bias_axes": "b"}, (3, 4, 2)),
        (
            {
                "equation": "...b,bc->...c",
                "output_shape": 4,
                "bias_axes": "c",
                "activation": "tanh",
            },
            (2, 3, 5),
        ),
    ],
)
def test_einsum_dense(kwargs, shape):
    assert_layer_parity(
        keras.layers.EinsumDense(**kwargs), shape, inputs=[rand(2, *shape, low=-2, high=2)]
    )
