"""Parity tests for kgen/codegen/lowerings/ops.py: Keras 3 Operation nodes created by
arithmetic, indexing and ``keras.ops`` calls on symbolic tensors."""

import keras
import numpy as np
import pytest
from helpers import assert_parity

UNARY = {
    "mul_const": lambda x: x * 0.5,
    "rmul_const": lambda x: 2.0 * x,
    "add_const": lambda x: x + 3.0,
    "rsub_const": lambda x: 0.5 - x,
    "sub_const": lambda x: x - 0.25,
    "div_const": lambda x: x / 2,
    "rdiv_const": lambda x: 1.0 / (x + 3.0),
    "neg": lambda x: -x,
    "square": lambda x: x**2,
    "pow_half": lambda x: (x + 2.0) ** 0.5,
    "hard_sigmoid_chain": lambda x: keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0),
    "slice": lambda x: x[:, 1:3, ..., ::2],
    "index": lambda x: x[:, 0],
    "index_negative": lambda x: x[:, -1, 1:, :2],
    "slice_step": lambda x: x[:, ::-1],
    "ops_negative": lambda x: keras.ops.negative(x),
    "ops_multiply": lambda x: keras.ops.multiply(x, 3.0),
    "mul_array": lambda x: x * np.linspace(-1.0, 2.0, 6, dtype=np.float32),
    "add_array": lambda x: keras.ops.add(
        np.linspace(-1.0, 2.0, 30, dtype=np.float32).reshape(5, 6), x
    ),
    "mean_axis_list": lambda x: keras.ops.mean(x, axis=[1, 3]),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_expression(name):
    inputs = keras.Input((4, 5, 6))
    model = keras.Model(inputs, UNARY[name](inputs))
    assert_parity(model)


BINARY = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": lambda x, y: x / (y + 3.0),
    "ops_add": lambda x, y: keras.ops.add(x, y),
    "ops_subtract": lambda x, y: keras.ops.subtract(x, y),
    "ops_multiply_broadcast": lambda x, y: keras.ops.multiply(x, y[:, :1, :1]),
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_expression(name):
    x, y = keras.Input((4, 5, 6)), keras.Input((4, 5, 6))
    model = keras.Model([x, y], BINARY[name](x, y))
    assert_parity(model)


@pytest.mark.parametrize("fn", ["mean", "sum", "max", "min", "prod"])
@pytest.mark.parametrize(
    "kwargs",
    [{"axis": 1}, {"axis": (1, 2), "keepdims": True}, {"axis": -1, "keepdims": True}, {}],
    ids=["axis1", "axes12-keepdims", "last-keepdims", "all"],
)
def test_reduction(fn, kwargs):
    inputs = keras.Input((3, 4, 5))
    x = inputs * 0.5 + 1.0 if fn == "prod" else inputs
    model = keras.Model(inputs, getattr(keras.ops, fn)(x, **kwargs))
    assert_parity(model)
