"""One-layer parity tests for kgen/codegen/lowerings/sequence.py (Embedding, RepeatVector,
TimeDistributed, Masking) and for Keras masks reaching the layers after them."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, assert_parity, rand

import kgen
from kgen.errors import UnsupportedError


def _tokens(*shape, high=10, seed=1):
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(np.int32)


@pytest.mark.parametrize("shape", [(6,), (3, 4)])
@pytest.mark.parametrize("mask_zero", [False, True])
def test_embedding(shape, mask_zero):
    inputs = keras.Input(shape, dtype="int32")
    model = keras.Model(inputs, keras.layers.Embedding(12, 5, mask_zero=mask_zero)(inputs))
    conversion, _ = assert_parity(model, inputs=[_tokens(2, *shape, high=12)])
    assert conversion.variables["params"]["embedding"]["embedding"].shape == (12, 5)


def test_embedding_of_float_inputs_truncates_like_keras():
    # A float Input (Keras's default dtype) is cast to int32 by the layer.
    x = np.array([[0.0, 1.9, 7.2, 3.999, 11.5, 2.0]], np.float32)
    assert_layer_parity(keras.layers.Embedding(12, 4), (6,), inputs=[x])


def test_embedding_mask_reaches_global_average_pooling():
    """A masked mean: Keras averages over the non-zero tokens only."""
    inputs = keras.Input((7,), dtype="int32")
    x = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    x = keras.layers.Dense(3)(x)  # passes the mask through
    outputs = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, outputs)
    tokens = _tokens(3, 7)
    tokens[:, 0] = 4  # at least one unmasked step per row
    tokens[0, 3:] = 0
    conversion, _ = assert_parity(model, inputs=[tokens])
    assert "where=" in conversion.source


def test_mask_reaching_a_layer_without_mask_support_is_an_error():
    inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    outputs = keras.layers.BatchNormalization()(x)  # its call takes the mask
    model = keras.Model(inputs, outputs)
    with pytest.raises(UnsupportedError, match="mask"):
        kgen.convert(model)


def test_softmax_with_a_mask():
    """Keras 3 Softmax: masked steps get -1e9 before and 0 after the softmax."""
    scores = keras.Input((3, 5))
    mask = keras.Input((1, 5), dtype="bool")
    outputs = keras.layers.Softmax()(scores, mask=mask)
    keep = np.array([[[1, 1, 0, 0, 1]], [[0, 0, 0, 0, 0]]], dtype=bool)  # row 2 all masked
    assert_parity(keras.Model([scores, mask], outputs), inputs=[rand(2, 3, 5), keep])


@pytest.mark.parametrize("n", [1, 3])
def test_repeat_vector(n):
    assert_layer_parity(keras.layers.RepeatVector(n), (4,))


@pytest.mark.parametrize(
    "inner, shape",
    [
        (lambda: keras.layers.Dense(3, activation="relu"), (5, 4)),
        (lambda: keras.layers.Dense(3), (5, 2, 4)),
        (lambda: keras.layers.Conv2D(4, 3, padding="same"), (3, 6, 5, 2)),
        (lambda: keras.layers.Conv2D(4, 2, strides=2, use_bias=False), (3, 6, 5, 2)),
        (lambda: keras.layers.Flatten(), (3, 2, 4)),
        (lambda: keras.layers.MaxPooling2D(2), (3, 6, 4, 2)),
    ],
    ids=["dense", "dense-rank4", "conv2d-same", "conv2d-strided", "flatten", "maxpool"],
)
def test_time_distributed(inner, shape):
    layer = keras.layers.TimeDistributed(inner())
    conversion, _ = assert_layer_parity(layer, shape)
    # The wrapped layer's weights live under the TimeDistributed layer's name.
    params = conversion.variables.get("params", {})
    assert set(params) <= {layer.name}


def test_time_distributed_batch_norm_inference():
    layer = keras.layers.TimeDistributed(keras.layers.BatchNormalization())
    assert_layer_parity(layer, (3, 4, 2))


def test_time_distributed_of_unsupported_layer_names_it():
    inputs = keras.Input((3, 4))
    inner = keras.layers.Lambda(lambda t: t * 2.0)
    model = keras.Model(inputs, keras.layers.TimeDistributed(inner)(inputs))
    with pytest.raises(UnsupportedError, match="Lambda"):
        kgen.convert(model)


@pytest.mark.parametrize("mask_value", [0.0, 0.5])
def test_masking_output(mask_value):
    x = rand(2, 5, 3, seed=3)
    x[0, 1] = mask_value  # a fully masked step
    x[1, 3] = mask_value
    x[1, 4, 0] = mask_value  # partly equal: not masked
    conversion, _ = assert_layer_parity(keras.layers.Masking(mask_value), (5, 3), inputs=[x])
    y = np.asarray(conversion.module.apply(conversion.variables, x))
    assert np.all(y[0, 1] == 0) and np.all(y[1, 3] == 0) and y[1, 4, 0] == mask_value


def test_masking_followed_by_layers_that_ignore_masks():
    inputs = keras.Input((5, 3))
    x = keras.layers.Masking(0.25)(inputs)
    x = keras.layers.Dense(4)(x)
    outputs = keras.layers.Flatten()(x)
    model = keras.Model(inputs, outputs)
    x = rand(2, 5, 3, seed=2)
    x[0, 2] = 0.25
    assert_parity(model, inputs=[x])


def test_masking_mask_reaches_global_average_pooling():
    inputs = keras.Input((6, 3))
    x = keras.layers.Masking(0.5)(inputs)
    outputs = keras.layers.GlobalAveragePooling1D()(x)
    x = rand(2, 6, 3, seed=2)
    x[0, 1:4] = 0.5  # masked steps: left out of the mean
    conversion, _ = assert_parity(keras.Model(inputs, outputs), inputs=[x])
    assert "where=" in conversion.source


def test_masking_followed_by_a_mask_consumer_is_an_error():
    inputs = keras.Input((5, 3))
    x = keras.layers.Masking()(inputs)
    outputs = keras.layers.BatchNormalization()(x)
    with pytest.raises(UnsupportedError):
        kgen.convert(keras.Model(inputs, outputs))


def tf_keras_layer_parity(make_layer, *shapes, dtype="float32", inputs=None):
    """The same one-layer check with legacy tf.keras (``tf_keras``) building the model."""
    tfk = pytest.importorskip("tf_keras")
    ins = [tfk.Input(s, dtype=dtype) for s in shapes]
    x = ins if len(ins) > 1 else ins[0]
    return assert_parity(tfk.Model(x, make_layer(tfk.layers)(x)), inputs=inputs)


def test_embedding_and_time_distributed_tf_keras():
    tf_keras_layer_parity(lambda L: L.Embedding(12, 4), (6,), dtype="int32", inputs=[_tokens(2, 6)])
    tf_keras_layer_parity(lambda L: L.TimeDistributed(L.Conv2D(3, 2)), (3, 5, 4, 2))


def test_embedding_mask_zero_for_tf_keras():
    """The mask itself is not an output; masks reaching other layers are tested in
    test_tf_keras_layers.py."""
    tf_keras_layer_parity(lambda L: L.Embedding(12, 4, mask_zero=True), (6,), dtype="int32")
