"""tf.keras TFOpLambda / SlicingOpLambda nodes (codegen/lowerings/tf_ops.py).

Each test builds a one-op tf.keras (Keras 2) functional model by calling a TF function
on Keras tensors, randomises every variable, converts it and compares with tf.keras
itself.  Positional and keyword forms of the same call must lower the same way.
"""

from __future__ import annotations

import inspect

import pytest
from helpers import assert_parity

tf = pytest.importorskip("tensorflow")
tfk = pytest.importorskip("tf_keras")


def _model(fn, *shapes):
    inputs = [tfk.Input(shape) for shape in shapes]
    outputs = fn(*inputs)
    return tfk.Model(inputs if len(inputs) > 1 else inputs[0], outputs)


def _symbols(conversion_model) -> set[str]:
    return {
        layer.symbol
        for layer in conversion_model.layers
        if type(layer).__name__ in ("TFOpLambda", "SlicingOpLambda")
    }


def check(fn, *shapes, symbol: str):
    """The op is really a TFOpLambda for ``symbol``, and converts with parity."""
    model = _model(fn, *shapes)
    assert symbol in _symbols(model), _symbols(model)
    _, report = assert_parity(model)
    return report


A = (4, 6)  # a rank-3 input (batch, 4, 6)

CASES = {
    "shape": (lambda a: a * tf.cast(tf.shape(a)[1], "float32"), (A,), "compat.v1.shape"),
    "shape_v1": (
        lambda a: a * tf.cast(tf.compat.v1.shape(a)[-1], "float32"),
        (A,),
        "compat.v1.shape",
    ),
    "split": (lambda a: tf.split(a, 2, axis=-1)[1], (A,), "split"),
    "split_sizes": (lambda a: tf.concat(tf.split(a, [2, -1], axis=-1)[::-1], -1), (A,), "split"),
    "image_resize": (lambda a: tf.image.resize(a, (6, 4)), ((4, 5, 3),), "image.resize"),
    "image_resize_nearest": (
        lambda a: tf.image.resize(a, (8, 10), method="nearest"),
        ((4, 5, 3),),
        "image.resize",
    ),
    # binary operators, tensor-tensor and tensor-constant, both orders
    "add": (lambda a, b: a + b, (A, A), "__operators__.add"),
    "add_const": (lambda a: 1.5 + a, (A,), "__operators__.add"),
    "multiply": (lambda a, b: a * b, (A, A), "math.multiply"),
    "multiply_const": (lambda a: a * 2.0, (A,), "math.multiply"),
    "multiply_const_left": (lambda a: 2.0 * a, (A,), "math.multiply"),
    "multiply_broadcast": (lambda a, b: a * b, (A, (1, 6)), "math.multiply"),
    "truediv": (lambda a: a / 3.0, (A,), "math.truediv"),
    "truediv_const_left": (lambda a: 1.0 / (a + 3.0), (A,), "math.truediv"),
    "subtract": (lambda a, b: a - b, (A, A), "math.subtract"),
    "subtract_const_left": (lambda a: 2.0 - a, (A,), "math.subtract"),
    "tf_multiply_keywords": (lambda a, b: tf.math.multiply(x=a, y=b), (A, A), "math.multiply"),
    "pow": (lambda a: a**2, (A,), "math.pow"),
    "floordiv": (lambda a: a // 0.3, (A,), "compat.v1.floor_div"),
    "floormod": (lambda a: a % 0.3, (A,), "math.floormod"),
    "negative": (lambda a: -a, (A,), "math.negative"),
    "maximum": (lambda a, b: tf.maximum(a, b), (A, A), "math.maximum"),
    "matmul": (lambda a, b: a @ b, (A, (6, 5)), "linalg.matmul"),
    # elementwise
    "silu": (lambda a: tf.nn.silu(a), (A,), "nn.silu"),
    "swish_beta": (lambda a: tf.nn.swish(a, beta=1.7), (A,), "nn.silu"),
    "relu": (lambda a: tf.nn.relu(a), (A,), "nn.relu"),
    "relu6": (lambda a: tf.nn.relu6(a * 8.0), (A,), "nn.relu6"),
    "leaky_relu": (lambda a: tf.nn.leaky_relu(a, alpha=0.1), (A,), "nn.leaky_relu"),
    "gelu_exact": (lambda a: tf.nn.gelu(a * 3.0), (A,), "nn.gelu"),
    "gelu_approximate": (lambda a: tf.nn.gelu(a * 3.0, True), (A,), "nn.gelu"),
    "sigmoid": (lambda a: tf.math.sigmoid(a * 4.0), (A,), "math.sigmoid"),
    "sigmoid_alias": (lambda a: tf.nn.sigmoid(a * 4.0), (A,), "math.sigmoid"),
    "tanh": (lambda a: tf.math.tanh(a * 4.0), (A,), "math.tanh"),
    "exp": (lambda a: tf.exp(a), (A,), "math.exp"),
    "sqrt": (lambda a: tf.sqrt(a + 1.5), (A,), "math.sqrt"),
    "clip_by_value": (lambda a: tf.clip_by_value(a, -0.5, 0.25), (A,), "clip_by_value"),
    "clip_by_value_keywords": (
        lambda a: tf.clip_by_value(a, clip_value_min=-0.5, clip_value_max=0.25),
        (A,),
        "clip_by_value",
    ),
    # reductions and softmax
    "reduce_mean_positional": (lambda a: tf.reduce_mean(a, [1, 2], True), (A,), "math.reduce_mean"),
    "reduce_mean_keywords": (
        lambda a: tf.reduce_mean(a, axis=[1, 2], keepdims=True),
        (A,),
        "math.reduce_mean",
    ),
    "reduce_mean_tuple_axis": (lambda a: tf.reduce_mean(a, axis=(1, 2)), (A,), "math.reduce_mean"),
    "reduce_max": (lambda a: tf.math.reduce_max(a, axis=-1), (A,), "math.reduce_max"),
    "reduce_max_keepdims": (lambda a: tf.reduce_max(a, 1, keepdims=True), (A,), "math.reduce_max"),
    "reduce_sum": (lambda a: tf.reduce_sum(a, axis=[1]), (A,), "math.reduce_sum"),
    "reduce_sum_all": (lambda a: tf.reduce_sum(a, [1, 2]), (A,), "math.reduce_sum"),
    "reduce_min": (lambda a: tf.reduce_min(a, -2), (A,), "math.reduce_min"),
    "softmax": (lambda a: tf.nn.softmax(a * 3.0), (A,), "nn.softmax"),
    "softmax_axis_positional": (lambda a: tf.nn.softmax(a * 3.0, 1), (A,), "nn.softmax"),
    "softmax_axis_keyword": (lambda a: tf.nn.softmax(a * 3.0, axis=1), (A,), "nn.softmax"),
    # shapes
    "reshape": (lambda a: tf.reshape(a, (-1, 24)), (A,), "reshape"),
    "reshape_keyword_list": (lambda a: tf.reshape(a, shape=[-1, 3, 8]), (A,), "reshape"),
    "concat_positional": (lambda a, b: tf.concat([a, b], -1), (A, A), "concat"),
    "concat_keyword": (lambda a, b: tf.concat([a, b], axis=1), (A, A), "concat"),
    "concat_all_keywords": (lambda a, b: tf.concat(values=[b, a], axis=-2), (A, A), "concat"),
    "transpose": (lambda a: tf.transpose(a, [0, 2, 1]), (A,), "compat.v1.transpose"),
    "transpose_keyword": (lambda a: tf.transpose(a, perm=[0, 2, 1]), (A,), "compat.v1.transpose"),
    "expand_dims": (lambda a: tf.expand_dims(a, 1), (A,), "expand_dims"),
    "expand_dims_keyword": (lambda a: tf.expand_dims(a, axis=-1), (A,), "expand_dims"),
    "squeeze": (lambda a: tf.squeeze(tf.expand_dims(a, 2), [2]), (A,), "compat.v1.squeeze"),
    "squeeze_keyword": (lambda a: tf.squeeze(a[:, :1], axis=1), (A,), "compat.v1.squeeze"),
    # slicing
    "getitem_slice": (lambda a: a[:, 1:3], (A,), "__operators__.getitem"),
    "getitem_step": (lambda a: a[:, ::2, 1::3], (A,), "__operators__.getitem"),
    "getitem_negative": (lambda a: a[:, -3:-1, :-2], (A,), "__operators__.getitem"),
    "getitem_int": (lambda a: a[:, 2], (A,), "__operators__.getitem"),
    "getitem_negative_int": (lambda a: a[:, -1, 1:], (A,), "__operators__.getitem"),
    "getitem_ellipsis": (lambda a: a[..., ::-2], (A,), "__operators__.getitem"),
    "getitem_ellipsis_int": (lambda a: a[..., 0], (A,), "__operators__.getitem"),
    "getitem_newaxis": (lambda a: a[:, None, 1:], (A,), "__operators__.getitem"),
    "getitem_batch": (lambda a: a[1:], (A,), "__operators__.getitem"),
    # more elementwise math users write
    "abs": (lambda a: tf.abs(a), (A,), "math.abs"),
    "tf_add": (lambda a, b: tf.add(a, b), (A, A), "math.add"),
    "minimum": (lambda a, b: tf.minimum(a, b), (A, A), "math.minimum"),
    "square": (lambda a: tf.square(a), (A,), "math.square"),
    "log": (lambda a: tf.math.log(a * a + 0.5), (A,), "math.log"),
    "rsqrt": (lambda a: tf.math.rsqrt(a * a + 0.5), (A,), "math.rsqrt"),
    "softplus": (lambda a: tf.nn.softplus(a * 3.0), (A,), "math.softplus"),
    "elu": (lambda a: tf.nn.elu(a * 3.0), (A,), "nn.elu"),
    "selu": (lambda a: tf.nn.selu(a * 3.0), (A,), "nn.selu"),
    "reduce_prod": (lambda a: tf.reduce_prod(a + 1.0, axis=1), (A,), "math.reduce_prod"),
    "squared_difference": (
        lambda a, b: tf.math.squared_difference(a, b),
        (A, A),
        "math.squared_difference",
    ),
    "reciprocal": (lambda a: tf.math.reciprocal(a * a + 0.5), (A,), "math.reciprocal"),
    "sin": (lambda a: tf.sin(a * 3.0), (A,), "math.sin"),
    "cos": (lambda a: tf.cos(a * 3.0), (A,), "math.cos"),
    "erf": (lambda a: tf.math.erf(a * 2.0), (A,), "math.erf"),
    "sign": (lambda a: tf.sign(a), (A,), "math.sign"),
    "floor": (lambda a: tf.floor(a * 4.0), (A,), "math.floor"),
    "ceil": (lambda a: tf.math.ceil(a * 4.0), (A,), "math.ceil"),
    "round_half_to_even": (lambda a: tf.round(tf.floor(a * 8.0) / 2.0), (A,), "math.round"),
    "softsign": (lambda a: tf.nn.softsign(a * 3.0), (A,), "nn.softsign"),
    "log_softmax": (lambda a: tf.nn.log_softmax(a * 3.0, axis=1), (A,), "nn.log_softmax"),
    "stop_gradient": (lambda a: tf.stop_gradient(a) * 2.0, (A,), "stop_gradient"),
    "identity": (lambda a: tf.identity(a) * 2.0, (A,), "identity"),
    "l2_normalize": (lambda a: tf.math.l2_normalize(a, axis=-1), (A,), "math.l2_normalize"),
    "l2_normalize_all": (lambda a: tf.math.l2_normalize(a), (A,), "math.l2_normalize"),
    "l2_normalize_epsilon": (
        lambda a: tf.math.l2_normalize(a * 1e-3, 1, 0.5),
        (A,),
        "math.l2_normalize",
    ),
    # comparisons, logic, casts
    "greater_cast": (lambda a, b: tf.cast(a > b, "float32"), (A, A), "math.greater"),
    "greater_equal": (lambda a: tf.cast(a >= 0.25, tf.float32), (A,), "math.greater_equal"),
    "less": (lambda a, b: tf.cast(tf.less(a, b), "float32"), (A, A), "math.less"),
    "less_equal": (lambda a: tf.cast(a <= 0.0, "float32"), (A,), "math.less_equal"),
    "equal": (lambda a: tf.cast(tf.equal(tf.sign(a), 1.0), "float32"), (A,), "math.equal"),
    "not_equal": (
        lambda a: tf.cast(tf.not_equal(tf.sign(a), 1.0), "int32"),
        (A,),
        "math.not_equal",
    ),
    "cast_to_int_truncates": (lambda a: tf.cast(a * 5.0, tf.int32), (A,), "cast"),
    "where": (lambda a, b: tf.where(a > b, a, b * 2.0), (A, A), "where"),
    "logical_and": (
        lambda a, b: tf.cast(tf.logical_and(a > 0, b > 0), "float32"),
        (A, A),
        "math.logical_and",
    ),
    "logical_or": (
        lambda a, b: tf.cast(tf.logical_or(a > 0, b > 0), "float32"),
        (A, A),
        "math.logical_or",
    ),
    "logical_not": (lambda a: tf.cast(tf.logical_not(a > 0), "float32"), (A,), "math.logical_not"),
    "reduce_any": (
        lambda a: tf.cast(tf.reduce_any(a > 0.5, axis=-1), "float32"),
        (A,),
        "math.reduce_any",
    ),
    "reduce_all": (
        lambda a: tf.cast(tf.reduce_all(a > -0.5, 1, keepdims=True), "float32"),
        (A,),
        "math.reduce_all",
    ),
    "zeros_like": (lambda a: tf.zeros_like(a) + a, (A,), "zeros_like"),
    "ones_like": (lambda a: tf.ones_like(a, dtype="int32"), (A,), "ones_like"),
    # shapes
    "stack": (lambda a, b: tf.stack([a, b], axis=1), (A, A), "stack"),
    "stack_default_axis": (lambda a, b: tf.stack([a, b]), (A, A), "stack"),
    "tile": (lambda a: tf.tile(a, [1, 2, 3]), (A,), "tile"),
    "einsum": (lambda a, b: tf.einsum("bij,bkj->bik", a, b), (A, A), "einsum"),
    "einsum_one_input": (lambda a: tf.einsum("bij->bj", a), (A,), "einsum"),
}

# Symbols tf.keras records only when a TF function is wrapped as a layer by hand
# (``TFOpLambda(tf.math.divide)``), or that other TF versions record for the same call:
# ``tf.math.divide`` calls ``x / y`` and records ``math.truediv`` when used directly.
_WRAPPED = {
    "math.divide": (tf.math.divide, lambda a, b: ((a, b * b + 0.5), {}), (A, A)),
    "math.floordiv": (tf.math.floordiv, lambda a: ((a, 0.3), {}), (A,)),
    "squeeze": (tf.compat.v2.squeeze, lambda a: ((a[:, :1],), {"axis": 1}), (A,)),
    "transpose": (tf.compat.v2.transpose, lambda a: ((a,), {"perm": [0, 2, 1]}), (A,)),
}


def _wrapped(function, make_args):
    def fn(*inputs):
        from tf_keras.src.layers.core.tf_op_layer import TFOpLambda

        args, kwargs = make_args(*inputs)
        return TFOpLambda(function)(*args, **kwargs)

    return fn


for _symbol, (_function, _make_args, _shapes) in _WRAPPED.items():
    CASES[f"wrapped_{_symbol}"] = (_wrapped(_function, _make_args), _shapes, _symbol)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tf_op(case):
    fn, shapes, symbol = CASES[case]
    check(fn, *shapes, symbol=symbol)


def test_tf_ops_chain():
    """Several ops feeding each other (the shape of an SE block in tf.keras)."""

    def fn(a):
        s = tf.reduce_mean(a, axis=[1], keepdims=True)
        s = tf.nn.relu(s * 0.5 + 0.1)
        g = tf.math.sigmoid(s)
        return tf.concat([a * g, a[:, ::-1]], axis=-1)

    check(fn, A, symbol="math.multiply")


def test_unsupported_symbols_in_one_error():
    from kgen import convert
    from kgen.errors import UnsupportedError

    a = tfk.Input(A)
    model = tfk.Model(a, [tf.math.cumsum(a, axis=1), tf.math.cumprod(a, axis=2), tf.nn.relu(a)])
    with pytest.raises(UnsupportedError) as info:
        convert(model)
    message = str(info.value)
    assert "\n" not in message
    assert "tf.math.cumsum" in message and "tf.math.cumprod" in message
    assert "relu" not in message


def test_unsupported_argument_is_reported():
    from kgen import convert
    from kgen.errors import UnsupportedError

    a, b = tfk.Input(A), tfk.Input((5, 6))
    model = tfk.Model([a, b], tf.linalg.matmul(a, b, transpose_b=True))
    with pytest.raises(UnsupportedError, match="transpose_b"):
        convert(model)


def test_signatures_match_tensorflow():
    """Every lowered symbol is TF's canonical name (what TFOpLambda records) and its
    parameter list is TF's, so positional arguments bind to the right names."""
    from tensorflow.python.util.tf_export import get_canonical_name_for_symbol

    from kgen.codegen.lowerings.tf_ops import SIGNATURES
    from kgen.codegen.registry import registered

    lowered = {s.class_name for s in registered() if s.kind == "tfop"}
    assert lowered == set(SIGNATURES)
    for symbol, params in SIGNATURES.items():
        fn = tf
        for part in symbol.split("."):
            fn = getattr(fn, part)
        assert tuple(inspect.signature(fn).parameters) == params, symbol
        assert get_canonical_name_for_symbol(fn, add_prefix_to_v1_names=True) == symbol


def test_every_lowered_symbol_has_a_parity_case():
    from kgen.codegen.registry import registered

    lowered = {s.class_name for s in registered() if s.kind == "tfop"}
    tested = {symbol for _, _, symbol in CASES.values()}
    assert lowered <= tested, sorted(lowered - tested)
