"""One-layer parity tests for kgen/codegen/lowerings/recurrent.py (SimpleRNN, LSTM, GRU,
Bidirectional): every weight randomised, Keras on the same batch as the reference."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, assert_parity, rand

import kgen
from kgen.errors import UnsupportedError

SHAPE = (6, 4)  # (steps, features)


def _tokens(*shape, high=10, seed=1):
    return np.random.default_rng(seed).integers(1, high, size=shape).astype(np.int32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"return_sequences": True},
        {"go_backwards": True, "return_sequences": True},
        {"return_state": True},
        {"return_sequences": True, "return_state": True, "go_backwards": True},
        {"activation": "relu", "recurrent_activation": "hard_sigmoid", "use_bias": False},
        {"dropout": 0.3, "recurrent_dropout": 0.2, "unit_forget_bias": False, "unroll": True},
    ],
    ids=[
        "last",
        "seq",
        "backwards",
        "state",
        "seq-state-backwards",
        "activations-nobias",
        "dropout-unroll",
    ],
)
def test_lstm(kwargs):
    conversion, _ = assert_layer_parity(keras.layers.LSTM(5, **kwargs), SHAPE)
    params = conversion.variables["params"]
    (layer,) = params.values()
    assert layer["kernel"].shape == (4, 20) and layer["recurrent_kernel"].shape == (5, 20)
    assert "rt.LSTM(" in conversion.source


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"reset_after": False},
        {"return_sequences": True, "go_backwards": True},
        {"return_state": True, "return_sequences": True},
        {"use_bias": False},
        {"use_bias": False, "reset_after": False, "activation": "sigmoid"},
        {"recurrent_activation": "tanh", "dropout": 0.5, "recurrent_dropout": 0.5},
    ],
    ids=[
        "default",
        "reset-before",
        "seq-backwards",
        "state",
        "nobias",
        "nobias-reset-before",
        "activations-dropout",
    ],
)
def test_gru(kwargs):
    conversion, _ = assert_layer_parity(keras.layers.GRU(5, **kwargs), SHAPE)
    (layer,) = conversion.variables["params"].values()
    bias = layer.get("bias")
    if kwargs.get("use_bias", True):
        assert bias.shape == ((2, 15) if kwargs.get("reset_after", True) else (15,))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"return_sequences": True, "activation": "relu"},
        {"return_state": True, "go_backwards": True},
        {"use_bias": False, "activation": None, "return_sequences": True},
    ],
    ids=["default", "seq-relu", "state-backwards", "linear-nobias"],
)
def test_simple_rnn(kwargs):
    assert_layer_parity(keras.layers.SimpleRNN(5, **kwargs), SHAPE)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_lstm(merge_mode, return_sequences):
    layer = keras.layers.Bidirectional(
        keras.layers.LSTM(4, return_sequences=return_sequences), merge_mode=merge_mode
    )
    conversion, _ = assert_layer_parity(layer, SHAPE)
    (params,) = conversion.variables["params"].values()
    assert set(params) == {"forward_layer", "backward_layer"}


@pytest.mark.parametrize("merge_mode", ["concat", None])
def test_bidirectional_return_state(merge_mode):
    layer = keras.layers.Bidirectional(
        keras.layers.GRU(3, return_sequences=True, return_state=True, reset_after=False),
        merge_mode=merge_mode,
    )
    assert_layer_parity(layer, SHAPE)


def test_bidirectional_with_a_different_backward_layer():
    layer = keras.layers.Bidirectional(
        keras.layers.LSTM(3, return_sequences=True),
        backward_layer=keras.layers.GRU(3, return_sequences=True, go_backwards=True),
    )
    conversion, _ = assert_layer_parity(layer, SHAPE)
    assert "backward_layer=rt.GRU" in conversion.source


def test_initial_state_as_call_argument():
    x = keras.Input(SHAPE)
    h, c = keras.Input((5,)), keras.Input((5,))
    y, h1, c1 = keras.layers.LSTM(5, return_state=True)(x, initial_state=[h, c])
    z = keras.layers.GRU(5, return_sequences=True)(x, initial_state=h1)
    model = keras.Model([x, h, c], [y, c1, z])
    assert_parity(model)


def test_bidirectional_initial_state():
    x = keras.Input(SHAPE)
    states = [keras.Input((3,)) for _ in range(4)]
    y = keras.layers.Bidirectional(keras.layers.LSTM(3))(x, initial_state=states)
    assert_parity(keras.Model([x, *states], y))


def _masked_tokens(batch=3, steps=7):
    tokens = _tokens(batch, steps)
    tokens[0, 4:] = 0  # right padding
    tokens[1, :2] = 0  # left padding
    tokens[2, 3] = 0  # a hole in the middle
    return tokens


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.LSTM(4),
        lambda: keras.layers.LSTM(4, return_sequences=True, go_backwards=True),
        lambda: keras.layers.GRU(4, return_sequences=True, return_state=True),
        lambda: keras.layers.SimpleRNN(4, zero_output_for_mask=True, return_sequences=True),
        lambda: keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True)),
        lambda: keras.layers.Bidirectional(keras.layers.GRU(4), merge_mode="sum"),
    ],
    ids=["lstm", "lstm-seq-backwards", "gru-state", "rnn-zero-output", "bi-lstm-seq", "bi-gru"],
)
def test_embedding_mask_reaches_the_recurrent_layer(make):
    tokens = keras.Input((7,), dtype="int32")
    x = keras.layers.Embedding(10, 5, mask_zero=True)(tokens)
    model = keras.Model(tokens, make()(x))
    conversion, _ = assert_parity(model, inputs=[_masked_tokens()])
    assert "mask=" in conversion.source


def test_masking_layer_then_stacked_recurrent_layers():
    inputs = keras.Input(SHAPE)
    x = keras.layers.Masking(0.0)(inputs)
    x = keras.layers.LSTM(4, return_sequences=True)(x)  # passes the mask on
    y = keras.layers.GRU(3)(x)
    model = keras.Model(inputs, y)
    data = rand(3, *SHAPE, seed=4)
    data[0, 3:] = 0.0
    data[2, 1] = 0.0
    conversion, _ = assert_parity(model, inputs=[data])
    assert conversion.source.count("mask=") == 2


def test_no_mask_with_initial_state_as_keras():
    # With two tensor arguments Keras fills in ``<arg>_mask`` arguments, not ``mask``:
    # an RNN called with ``initial_state`` runs unmasked, and so does the conversion.
    tokens = keras.Input((7,), dtype="int32")
    h = keras.Input((4,))
    x = keras.layers.Embedding(10, 5, mask_zero=True)(tokens)
    y = keras.layers.GRU(4)(x, initial_state=h)
    model = keras.Model([tokens, h], y)
    conversion, _ = assert_parity(model, inputs=[_masked_tokens(), rand(3, 4, seed=3)])
    assert "mask=" not in conversion.source


def test_stateful_is_refused():
    layer = keras.layers.LSTM(3, stateful=True)
    inputs = keras.Input(SHAPE, batch_size=2)
    model = keras.Model(inputs, layer(inputs))
    with pytest.raises(UnsupportedError, match="stateful"):
        kgen.convert(model)


def test_parametrised_activation_is_refused():
    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, keras.layers.SimpleRNN(3, activation="leaky_relu")(inputs))
    with pytest.raises(UnsupportedError, match="activation"):
        kgen.convert(model)
