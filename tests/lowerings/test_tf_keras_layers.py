"""The recurrent, attention, EinsumDense and augmentation layers of users' tf.keras 2
models, and the tf.keras-only ``ThresholdedReLU``, ``RandomHeight``, ``RandomWidth``.

Each test builds the model with tf.keras itself (``tf_keras``), randomises every variable,
converts it and compares with tf.keras in the same test.  tf.keras differs from Keras 3
in how a recurrent layer is called with Keras-tensor initial states: it calls the layer
on ``[inputs, *states]`` (``base_rnn.py``, ``bidirectional.py``), which the tracer turns
back into ``initial_state=``, and in how masks travel (see the masks section below).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_parity, tf_keras_layer_parity

tfk = pytest.importorskip("tf_keras")
L = tfk.layers

SEQ = (6, 3)


def _model(fn, *shapes):
    inputs = [tfk.Input(s) for s in shapes]
    return tfk.Model(inputs if len(inputs) > 1 else inputs[0], fn(*inputs))


RECURRENT = {
    "lstm": lambda L: L.LSTM(5),
    "lstm_sequences_states": lambda L: L.LSTM(5, return_sequences=True, return_state=True),
    "lstm_backwards": lambda L: L.LSTM(5, go_backwards=True, unit_forget_bias=False),
    "lstm_activations": lambda L: L.LSTM(4, activation="relu", recurrent_activation="tanh"),
    "gru": lambda L: L.GRU(5, return_sequences=True),
    "gru_reset_before": lambda L: L.GRU(5, reset_after=False),
    "gru_no_bias": lambda L: L.GRU(4, use_bias=False, return_state=True),
    "simple_rnn": lambda L: L.SimpleRNN(5, activation="relu"),
    "bidirectional_concat": lambda L: L.Bidirectional(L.LSTM(4, return_sequences=True)),
    "bidirectional_sum": lambda L: L.Bidirectional(L.GRU(4), merge_mode="sum"),
    "bidirectional_states": lambda L: L.Bidirectional(L.SimpleRNN(3, return_state=True)),
    "bidirectional_backward_layer": lambda L: L.Bidirectional(
        L.LSTM(4, return_sequences=True),
        backward_layer=L.GRU(3, return_sequences=True, go_backwards=True),
    ),
}


@pytest.mark.parametrize("case", sorted(RECURRENT))
def test_recurrent(case):
    tf_keras_layer_parity(RECURRENT[case], SEQ)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "SimpleRNN"])
def test_initial_state_from_keras_tensors(cls):
    """tf.keras calls the layer on [inputs, *states]; converted as Keras 3's
    initial_state=, each state from its own input."""
    n = 2 if cls == "LSTM" else 1
    layer = getattr(L, cls)(5, return_sequences=True)
    model = _model(lambda x, *s: layer(x, initial_state=list(s)), SEQ, *[(5,)] * n)
    (node,) = [v for v in model.layers if isinstance(v, getattr(L, cls))]
    assert len(node.inbound_nodes[0].call_args[0]) == 1 + n  # the packed form
    assert_parity(model)


def test_state_of_one_rnn_starts_another():
    def fn(x):
        _, h, c = L.LSTM(5, return_state=True)(x)
        return L.LSTM(5)(x, initial_state=[h, c])

    assert_parity(_model(fn, SEQ))


def test_bidirectional_initial_state():
    """Forward states first, then backward ones (tf.keras splits the list in half)."""
    layer = L.Bidirectional(L.GRU(4, return_sequences=True))
    assert_parity(_model(lambda x, a, b: layer(x, initial_state=[a, b]), SEQ, (4,), (4,)))


def test_time_distributed_after_lstm():
    tf_keras_layer_parity(
        lambda L: lambda x: L.TimeDistributed(L.Dense(3))(L.LSTM(4, return_sequences=True)(x)),
        SEQ,
    )


ATTENTION = {
    "mha_self": (lambda q: L.MultiHeadAttention(2, 4)(q, q), [(5, 6)]),
    "mha_cross": (
        lambda q, v: L.MultiHeadAttention(2, 4, value_dim=3, output_shape=7)(q, v),
        [(5, 6), (4, 6)],
    ),
    "mha_key": (lambda q, v, k: L.MultiHeadAttention(3, 2)(q, v, k), [(5, 6), (4, 6), (4, 5)]),
    "mha_no_bias": (lambda q: L.MultiHeadAttention(2, 4, use_bias=False)(q, q), [(5, 6)]),
    "mha_attention_axes": (
        lambda q: L.MultiHeadAttention(2, 3, attention_axes=(1,))(q, q),
        [(3, 4, 6)],
    ),
    "mha_scores": (
        lambda q: L.MultiHeadAttention(2, 4)(q, q, return_attention_scores=True),
        [(5, 6)],
    ),
    "mha_causal": (lambda q: L.MultiHeadAttention(2, 4)(q, q, use_causal_mask=True), [(5, 6)]),
    "attention": (lambda q, v: L.Attention()([q, v]), [(5, 6), (4, 6)]),
    "attention_scale": (lambda q, v: L.Attention(use_scale=True)([q, v, v]), [(5, 6), (4, 6)]),
    "attention_concat": (lambda q, v: L.Attention(score_mode="concat")([q, v]), [(5, 6), (4, 6)]),
    "attention_causal_scores": (
        lambda q, v: L.Attention()([q, v], use_causal_mask=True, return_attention_scores=True),
        [(5, 6), (5, 6)],
    ),
    "additive_attention": (lambda q, v: L.AdditiveAttention()([q, v]), [(5, 6), (4, 6)]),
    "additive_attention_unscaled": (
        lambda q, v: L.AdditiveAttention(use_scale=False)([q, v]),
        [(5, 6), (4, 6)],
    ),
}


@pytest.mark.parametrize("case", sorted(ATTENTION))
def test_attention(case):
    fn, shapes = ATTENTION[case]
    assert_parity(_model(fn, *shapes))


def test_attention_with_explicit_masks():
    """Masks passed as call arguments are part of the traced graph in tf.keras too."""

    def fn(q, v, qm, vm):
        return L.Attention()([q, v], mask=[qm > 0, vm > 0])

    model = _model(fn, (5, 6), (4, 6), (5,), (4,))
    rng = np.random.default_rng(1)
    inputs = [
        rng.normal(size=(2, 5, 6)).astype("float32"),
        rng.normal(size=(2, 4, 6)).astype("float32"),
        rng.integers(0, 2, size=(2, 5)).astype("float32"),
        np.array([[1, 1, 0, 1], [1, 0, 0, 0]], "float32"),
    ]
    assert_parity(model, inputs=inputs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"equation": "abc,cd->abd", "output_shape": (None, 7), "bias_axes": "d"},
        {"equation": "ab,bcd->acd", "output_shape": (3, 4), "activation": "relu"},
    ],
)
def test_einsum_dense(kwargs):
    from tf_keras.layers.experimental import EinsumDense

    rank = len(kwargs["equation"].split(",")[0])
    shape = (5, 6) if rank == 3 else (6,)
    tf_keras_layer_parity(lambda L: EinsumDense(**kwargs), shape)


@pytest.mark.parametrize("theta", [0.0, 0.3, 1.0])
def test_thresholded_relu(theta):
    tf_keras_layer_parity(lambda L: L.ThresholdedReLU(theta), (8, 3))


AUGMENTATION = {
    "flip": lambda L: L.RandomFlip(),
    "rotation": lambda L: L.RandomRotation(0.2, fill_mode="nearest"),
    "zoom": lambda L: L.RandomZoom(0.1),
    "translation": lambda L: L.RandomTranslation(0.1, 0.2),
    "contrast": lambda L: L.RandomContrast(0.3),
    "brightness": lambda L: L.RandomBrightness(0.1),
    "height": lambda L: L.RandomHeight(0.2),
    "width": lambda L: L.RandomWidth(0.2),
    "crop_to_own_size": lambda L: L.RandomCrop(8, 8),
}


@pytest.mark.parametrize("case", sorted(AUGMENTATION))
def test_augmentation_is_identity_at_inference(case):
    conversion, _ = tf_keras_layer_parity(AUGMENTATION[case], (8, 8, 3))
    assert "identity at inference" in conversion.source


def test_random_crop_that_resizes_is_refused():
    """tf.keras's RandomCrop resizes (smart_resize) at inference; not an identity."""
    from kgen import convert
    from kgen.errors import UnsupportedError

    model = _model(lambda x: L.RandomCrop(6, 6)(x), (8, 8, 3))
    with pytest.raises(UnsupportedError, match=r"tf\.keras resizes"):
        convert(model)


# --- masks -------------------------------------------------------------------------------
# tf.keras hands masks from layer to layer outside the layer graph (``_keras_mask``); the
# tracer rebuilds each mask that reaches a layer as TF-op nodes.  Inputs hold padding
# (token 0, or steps equal to the mask value) so that a dropped mask changes the result.


def _tokens(seed=0):
    x = np.random.default_rng(seed).integers(1, 10, size=(2, 7)).astype("float32")
    x[0, 4:], x[1, 2:], x[1, 0] = 0, 0, 0
    return x


def _steps(value=0.0):
    x = np.random.default_rng(1).normal(size=(2, 6, 3)).astype("float32")
    x[0, 3:], x[1, :2], x[1, 4] = value, value, value
    return x


def _embed(a, dim=3, **kwargs):
    return L.Embedding(10, dim, mask_zero=True, **kwargs)(a)


MASKED = {
    "embedding_lstm": (lambda a: L.LSTM(4)(_embed(a)), (7,)),
    "through_dense_dropout_gru": (
        lambda a: L.GRU(4, return_sequences=True)(L.Dropout(0.2)(L.Dense(5)(_embed(a)))),
        (7,),
    ),
    "stacked_lstms": (
        lambda a: L.LSTM(4)(L.LSTM(5, return_sequences=True)(_embed(a))),
        (7,),
    ),
    "bidirectional_then_pooling": (
        lambda a: L.GlobalAveragePooling1D()(
            L.Bidirectional(L.LSTM(4, return_sequences=True))(_embed(a))
        ),
        (7,),
    ),
    "attention": (lambda a: (lambda e: L.Attention()([e, e]))(_embed(a, 4)), (7,)),
    "multi_head_attention": (
        lambda a: (lambda e: L.MultiHeadAttention(2, 3)(e, e))(_embed(a, 4)),
        (7,),
    ),
    "attention_passes_query_mask_on": (
        lambda a: (lambda e: L.LSTM(3)(L.Attention()([e, e])))(_embed(a, 4)),
        (7,),
    ),
    "multi_head_attention_passes_query_mask_on": (
        lambda a: (lambda e: L.LSTM(3)(L.MultiHeadAttention(2, 3)(e, e)))(_embed(a, 4)),
        (7,),
    ),
    "pooling": (lambda a: L.GlobalAveragePooling1D()(_embed(a)), (7,)),
    "time_distributed": (lambda a: L.LSTM(3)(L.TimeDistributed(L.Dense(4))(_embed(a))), (7,)),
    "concatenate_with_unmasked": (
        lambda a: L.LSTM(3)(L.Concatenate()([_embed(a), L.Embedding(10, 2)(a)])),
        (7,),
    ),
    "flatten_drops_it": (lambda a: L.Dense(2)(L.Flatten()(_embed(a))), (7,)),
}


@pytest.mark.parametrize("case", sorted(MASKED))
def test_embedding_mask_zero(case):
    fn, shape = MASKED[case]
    conversion, _ = assert_parity(_model(fn, shape), inputs=[_tokens()])
    if case != "flatten_drops_it":
        assert "_mask = " in conversion.source


def test_mask_of_two_inputs_is_anded_by_add():
    a, b = tfk.Input((7,)), tfk.Input((7,))
    model = tfk.Model([a, b], L.LSTM(3)(L.Add()([_embed(a, 4), _embed(b, 4)])))
    assert_parity(model, inputs=[_tokens(), _tokens(seed=3)])


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_masking(value):
    model = _model(lambda x: L.SimpleRNN(4, return_sequences=True)(L.Masking(value)(x)), SEQ)
    conversion, _ = assert_parity(model, inputs=[_steps(value)])
    assert "_mask = " in conversion.source


def test_mask_from_an_untraced_producer_is_refused():
    """A mask whose computation kgen does not know is an error, not a dropped mask."""
    from kgen import convert
    from kgen.errors import KgenError

    inner_in = tfk.Input((7, 3))
    inner = tfk.Model(inner_in, L.LSTM(3, return_sequences=True)(inner_in), name="inner")
    a = tfk.Input((7,))
    with pytest.raises(KgenError, match="nested model 'inner'") as info:
        convert(tfk.Model(a, inner(_embed(a))))
    assert "\n" not in str(info.value)

    x = tfk.Input(SEQ)
    steps = L.TimeDistributed(L.Masking())(x)  # TimeDistributed asks Masking for its mask
    with pytest.raises(KgenError, match="TimeDistributed"):
        convert(tfk.Model(x, L.LSTM(3)(steps)))
