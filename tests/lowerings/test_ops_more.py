"""Parity tests for the second half of kgen/codegen/lowerings/ops.py: ``keras.ops``
functions on symbolic tensors (element-wise maths, activations, reductions, shapes,
multi-output ops, casts, image resize)."""

import keras
import numpy as np
import pytest
from helpers import assert_parity, rand
from keras import ops

SHAPE = (4, 6)


def _check(fn, *, shapes=(SHAPE,), inputs=None, dtypes=None):
    dtypes = dtypes or ["float32"] * len(shapes)
    xs = [keras.Input(s, dtype=d) for s, d in zip(shapes, dtypes)]
    out = fn(*xs)
    model = keras.Model(xs if len(xs) > 1 else xs[0], out)
    return assert_parity(model, inputs=inputs)


ELEMENTWISE = {
    "abs": ops.abs,
    "sqrt": lambda x: ops.sqrt(ops.abs(x) + 0.1),
    "exp": ops.exp,
    "log": lambda x: ops.log(ops.abs(x) + 0.1),
    "log1p": lambda x: ops.log1p(ops.abs(x)),
    "expm1": ops.expm1,
    "square": ops.square,
    "power": lambda x: ops.power(x, 3),
    "reciprocal": lambda x: ops.reciprocal(x + 3.0),
    "rsqrt": lambda x: ops.rsqrt(x + 2.0),
    "erf": ops.erf,
    "sign": ops.sign,
    "floor": lambda x: ops.floor(x * 4.0),
    "ceil": lambda x: ops.ceil(x * 4.0),
    "round": lambda x: ops.round(x * 10.0),
    "round_decimals": lambda x: ops.round(x, decimals=1),
    "sin_cos_tanh": lambda x: ops.sin(x) + ops.cos(x) * ops.tanh(x),
    "arctan": ops.arctan,
    "more_maths": lambda x: (
        ops.log2(ops.abs(x) + 0.5)
        + ops.log10(ops.abs(x) + 0.5)
        + ops.exp2(x)
        + ops.cbrt(x)
        + ops.trunc(x * 3.0)
        + ops.tan(x * 0.5)
        + ops.sinh(x)
        + ops.cosh(x)
        + ops.arcsin(x * 0.4)
        + ops.arccos(x * 0.4)
        + ops.arcsinh(x)
        + ops.arctanh(x * 0.4)
    ),
    "is_checks": lambda x: (
        ops.cast(ops.isnan(x), "float32")
        + ops.cast(ops.isinf(x), "float32")
        + ops.cast(ops.isfinite(x), "float32")
    ),
    "ravel": lambda x: ops.ravel(x),
    "logical_xor": lambda x: ops.cast(ops.logical_xor(x > 0.0, x > 0.5), "float32"),
    "logaddexp_hypot": lambda x: ops.logaddexp(x, x * 0.5) + ops.hypot(x, 1.0 - x),
    "like_dtype": lambda x: (
        ops.zeros_like(x, dtype="int32") + ops.cumsum(x, axis=1, dtype="float32")
    ),
    "maximum": lambda x: ops.maximum(x, 0.25),
    "minimum": lambda x: ops.minimum(x, x * x),
    "clip": lambda x: ops.clip(x, -0.5, 0.3),
    "where": lambda x: ops.where(x > 0, x, x * 0.1),
    "comparisons": lambda x: ops.cast(ops.logical_and(x > -0.5, x <= 0.5), "float32"),
    "logical_or_not": lambda x: ops.cast(
        ops.logical_not(ops.logical_or(x > 0.7, x < -0.7)), "float32"
    ),
    "cast_int_truncates": lambda x: ops.cast(x * 5.0, "int32"),
    "stop_gradient": ops.stop_gradient,
    "convert_to_tensor": lambda x: ops.convert_to_tensor(x, dtype="float32") * 2.0,
    "zeros_like_plus": lambda x: ops.ones_like(x) + ops.zeros_like(x) + x,
}

ACTIVATIONS = {
    "relu": ops.relu,
    "relu6": lambda x: ops.relu6(x * 8.0),
    "gelu_default_is_approximate": ops.gelu,
    "gelu_exact": lambda x: ops.gelu(x, approximate=False),
    "sigmoid": ops.sigmoid,
    "silu": ops.silu,
    "swish": ops.swish,
    "hard_sigmoid": lambda x: ops.hard_sigmoid(x * 4.0),
    "hard_silu": lambda x: ops.hard_silu(x * 4.0),
    "softplus": ops.softplus,
    "softsign": ops.softsign,
    "selu": ops.selu,
    "elu": lambda x: ops.elu(x, alpha=0.7),
    "celu": lambda x: ops.celu(x, alpha=1.5),
    "leaky_relu": lambda x: ops.leaky_relu(x, negative_slope=0.1),
    "log_sigmoid": ops.log_sigmoid,
    "softmax_axis1": lambda x: ops.softmax(x, axis=1),
    "softmax_default": ops.softmax,
    "log_softmax": ops.log_softmax,
    "glu": ops.glu,
    "tanh_shrink": ops.tanh_shrink,
    "hard_tanh": ops.hard_tanh,
    "sparse_plus": ops.sparse_plus,
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise(name):
    _check(ELEMENTWISE[name], inputs=[rand(2, *SHAPE, seed=3, low=-2.0, high=2.0)])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_function(name):
    _check(ACTIVATIONS[name], inputs=[rand(2, *SHAPE, seed=3, low=-3.0, high=3.0)])


def test_gelu_op_default_differs_from_the_exact_layer():
    """Guard on the trap itself: ``ops.gelu`` approximates, ``Activation("gelu")`` does not."""
    conversion, _ = _check(ops.gelu)
    assert "approximate=False" not in conversion.source
    conversion, _ = _check(lambda x: ops.gelu(x, approximate=False))
    assert "approximate=False" in conversion.source


REDUCTIONS = {
    "std": lambda x: ops.std(x, axis=1),
    "var_keepdims": lambda x: ops.var(x, axis=-1, keepdims=True),
    "any": lambda x: ops.cast(ops.any(x > 0.8, axis=1), "float32"),
    "all": lambda x: ops.cast(ops.all(x > -0.9, axis=-1), "float32"),
    "argmax": lambda x: ops.argmax(x, axis=-1),
    "argmin_keepdims": lambda x: ops.argmin(x, axis=1, keepdims=True),
    "logsumexp": lambda x: ops.logsumexp(x, axis=-1),
    "amax": lambda x: ops.amax(x, axis=1),
    "amin": lambda x: ops.amin(x, axis=-1, keepdims=True),
    "cumsum": lambda x: ops.cumsum(x, axis=1),
    "cumprod": lambda x: ops.cumprod(x * 0.5 + 1.0, axis=-1),
    "count_nonzero": lambda x: ops.count_nonzero(ops.relu(x), axis=1),
    "average": lambda x: ops.average(x, axis=1),
    "mean_all": ops.mean,
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction(name):
    _check(REDUCTIONS[name])


SHAPES = {
    "reshape_minus1": lambda x: ops.reshape(x, (-1, 24)),
    "reshape_3d": lambda x: ops.reshape(x, (-1, 2, 12)),
    "transpose": lambda x: ops.transpose(x, (0, 2, 1)),
    "expand_squeeze": lambda x: (
        ops.squeeze(ops.expand_dims(x, 1), axis=1) + ops.expand_dims(x, -1)[..., 0]
    ),
    "expand_many": lambda x: ops.expand_dims(x, (1, 3)),
    "swapaxes": lambda x: ops.swapaxes(x, 1, 2),
    "moveaxis": lambda x: ops.moveaxis(ops.expand_dims(x, -1), 1, 3),
    "flip": lambda x: ops.flip(x, axis=1),
    "roll": lambda x: ops.roll(x, 2, axis=-1),
    "tile": lambda x: ops.tile(x, (1, 2, 1)),
    "repeat": lambda x: ops.repeat(x, 3, axis=-1),
    "pad": lambda x: ops.pad(x, [[0, 0], [1, 2], [0, 1]]),
    "pad_reflect": lambda x: ops.pad(x, [[0, 0], [2, 1], [1, 1]], mode="reflect"),
    "pad_value": lambda x: ops.pad(x, [[0, 0], [1, 0], [0, 0]], constant_values=0.5),
    "take": lambda x: ops.take(x, [0, 3, -1], axis=2),
    "tril": lambda x: ops.tril(x, -1) + ops.triu(x, 1),
    "sort": lambda x: ops.sort(x, axis=-1),
    "argsort": lambda x: ops.argsort(x, axis=1),
    "einsum": lambda x: ops.einsum("bij,bkj->bik", x, x),
    "matmul": lambda x: ops.matmul(x, ops.transpose(x, (0, 2, 1))),
    "tensordot": lambda x: ops.tensordot(
        x, np.linspace(-1, 1, 12, dtype="float32").reshape(6, 2), axes=1
    ),
    "concatenate": lambda x: ops.concatenate([x, x * 2.0], axis=-1),
    "stack": lambda x: ops.stack([x, -x, x * 0.5], axis=1),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_op(name):
    _check(SHAPES[name])


def test_binary_ops_on_two_inputs():
    _check(
        lambda x, y: [
            ops.maximum(x, y),
            ops.minimum(x, y),
            ops.where(x > y, x, y),
            ops.matmul(x, ops.transpose(y, (0, 2, 1))),
            ops.arctan2(x, y),
        ],
        shapes=(SHAPE, SHAPE),
    )


def test_split_has_several_outputs():
    conversion, report = _check(lambda x: ops.split(x, 3, axis=-1))
    assert len(report.outputs) == 3
    assert "jnp.split(" in conversion.source
    _, report = _check(lambda x: ops.split(x, [1, 4], axis=-1))
    assert len(report.outputs) == 3


def test_top_k_values_and_indices():
    _, report = _check(lambda x: list(ops.top_k(x, 3)))
    assert len(report.outputs) == 2


def test_one_hot_of_int_input():
    tokens = np.array([[0, 3, 5, 1], [2, 2, 4, 0]], np.int32)
    _check(lambda t: ops.one_hot(t, 6), shapes=((4,),), dtypes=["int32"], inputs=[tokens])
    _check(lambda t: ops.one_hot(t, 6, axis=1), shapes=((4,),), dtypes=["int32"], inputs=[tokens])


def test_take_with_tensor_indices():
    x = rand(2, 5, 3, seed=2)
    idx = np.array([[0, 4], [2, 1]], np.int32)
    _check(
        lambda a, i: ops.take(a, i[0], axis=1),
        shapes=((5, 3), (2,)),
        dtypes=["float32", "int32"],
        inputs=[x, idx],
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interpolation": "bilinear"},
        {"interpolation": "nearest"},
        {"interpolation": "bicubic"},
        {"interpolation": "bilinear", "antialias": True},
        {"interpolation": "bilinear", "crop_to_aspect_ratio": True},
    ],
    ids=["bilinear", "nearest", "bicubic", "antialias", "crop"],
)
@pytest.mark.parametrize("size", [(9, 7), (3, 4)], ids=["up", "down"])
def test_image_resize(kwargs, size):
    _check(lambda x: ops.image.resize(x, size, **kwargs), shapes=((6, 5, 2),))


def test_ops_in_a_small_model():
    """A hand-written attention block built from ops, as users write them."""
    inputs = keras.Input((5, 8))
    q = keras.layers.Dense(8)(inputs)
    k = keras.layers.Dense(8)(inputs)
    v = keras.layers.Dense(8)(inputs)
    scores = ops.einsum("bqd,bkd->bqk", q, k) / ops.sqrt(ops.cast(8, "float32"))
    weights = ops.softmax(scores, axis=-1)
    out = ops.matmul(weights, v)
    out = ops.reshape(out, (-1, 40))
    out = ops.gelu(out) + ops.mean(out, axis=-1, keepdims=True)
    assert_parity(keras.Model(inputs, out))
