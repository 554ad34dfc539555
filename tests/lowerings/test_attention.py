"""One-layer parity tests for kgen/codegen/lowerings/attention.py (MultiHeadAttention,
Attention, AdditiveAttention): every weight randomised, Keras as the reference."""

import keras
import numpy as np
import pytest
from helpers import assert_parity

Q, V = (5, 6), (7, 3)  # (steps, features) of query and value


def _tokens(batch=3, steps=6, seed=1):
    tokens = np.random.default_rng(seed).integers(1, 10, size=(batch, steps)).astype(np.int32)
    tokens[0, 4:] = 0
    tokens[1, :1] = 0
    tokens[2, 2] = 0
    return tokens


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_heads": 2, "key_dim": 3},
        {"num_heads": 3, "key_dim": 4, "value_dim": 2, "use_bias": False},
        {"num_heads": 2, "key_dim": 3, "output_shape": 5, "dropout": 0.3},
        {"num_heads": 1, "key_dim": 8, "output_shape": (2, 3)},
        {"num_heads": 2, "key_dim": 3, "use_gate": True},
        {"num_heads": 2, "key_dim": 3, "sliding_window": 2},
    ],
    ids=[
        "default",
        "value-dim-nobias",
        "output-shape-dropout",
        "output-shape-2d",
        "gate",
        "sliding-window",
    ],
)
def test_self_attention(kwargs):
    x = keras.Input(Q)
    layer = keras.layers.MultiHeadAttention(**kwargs)
    conversion, _ = assert_parity(keras.Model(x, layer(x, x)))
    (params,) = conversion.variables["params"].values()
    assert params["query"]["kernel"].shape == (6, kwargs["num_heads"], kwargs["key_dim"])
    assert ("gate" in params) == kwargs.get("use_gate", False)


@pytest.mark.parametrize("with_key", [False, True])
def test_cross_attention(with_key):
    q, v, k = keras.Input(Q), keras.Input(V), keras.Input((7, 4))
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=5)
    if with_key:
        model = keras.Model([q, v, k], layer(query=q, value=v, key=k))
    else:
        model = keras.Model([q, v], layer(q, v))
    assert_parity(model)


@pytest.mark.parametrize("cross", [False, True])
def test_causal_mask_and_scores(cross):
    q = keras.Input(Q)
    v = keras.Input((5, 4)) if cross else q
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)
    out, scores = layer(q, v, use_causal_mask=True, return_attention_scores=True)
    model = keras.Model([q, v] if cross else q, [out, scores])
    conversion, report = assert_parity(model)
    assert "use_causal_mask=True" in conversion.source
    assert len(report.outputs) == 2


def test_causal_mask_only():
    x = keras.Input(Q)
    out = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)(x, x, use_causal_mask=True)
    assert_parity(keras.Model(x, out))


def test_explicit_attention_mask():
    x, m = keras.Input(Q), keras.Input((5, 5), dtype="bool")
    out = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)(x, x, attention_mask=m)
    mask = np.random.default_rng(0).uniform(size=(2, 5, 5)) > 0.3
    mask[..., 0] = True
    x_val = np.random.default_rng(1).uniform(-1, 1, size=(2, *Q)).astype(np.float32)
    assert_parity(keras.Model([x, m], out), inputs=[x_val, mask])


@pytest.mark.parametrize("axes", [(2,), (1, 2)])
def test_attention_axes_on_rank4(axes):
    x = keras.Input((3, 4, 5))
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, attention_axes=axes)
    conversion, _ = assert_parity(keras.Model(x, layer(x, x)))
    # (1, 2) is the default for rank-4 inputs: every axis but batch, heads and channels.
    assert ("attention_axes" in conversion.source) == (axes == (2,))


def test_embedding_mask_reaches_multi_head_attention():
    """Keras applies the query/value masks at run time without recording them on the
    node; the tracer fills them in, as ``Layer.__call__`` does."""
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(10, 8, mask_zero=True)(tokens)
    y = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    conversion, _ = assert_parity(keras.Model(tokens, y), inputs=[_tokens()])
    assert "query_mask=" in conversion.source and "value_mask=" in conversion.source


def test_embedding_mask_with_causal_mask():
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(10, 8, mask_zero=True)(tokens)
    y = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x, use_causal_mask=True)
    assert_parity(keras.Model(tokens, y), inputs=[_tokens()])


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"use_scale": True},
        {"score_mode": "concat"},
        {"score_mode": "concat", "use_scale": True, "dropout": 0.2},
    ],
    ids=["dot", "dot-scale", "concat", "concat-scale-dropout"],
)
@pytest.mark.parametrize("with_key", [False, True])
def test_attention(kwargs, with_key):
    q, v, k = keras.Input((5, 4)), keras.Input((7, 4)), keras.Input((7, 4))
    layer = keras.layers.Attention(**kwargs)
    inputs = [q, v, k] if with_key else [q, v]
    assert_parity(keras.Model(inputs, layer(inputs)))


@pytest.mark.parametrize("cls", [keras.layers.Attention, keras.layers.AdditiveAttention])
def test_dense_attention_causal_and_scores(cls):
    q, v = keras.Input((5, 4)), keras.Input((5, 4))
    out, scores = cls()([q, v], use_causal_mask=True, return_attention_scores=True)
    _, report = assert_parity(keras.Model([q, v], [out, scores]))
    assert len(report.outputs) == 2


@pytest.mark.parametrize("use_scale", [True, False])
def test_additive_attention(use_scale):
    q, v = keras.Input((5, 4)), keras.Input((7, 4))
    layer = keras.layers.AdditiveAttention(use_scale=use_scale)
    conversion, _ = assert_parity(keras.Model([q, v], layer([q, v])))
    assert ("params" in conversion.variables) == use_scale


@pytest.mark.parametrize("cls", [keras.layers.Attention, keras.layers.AdditiveAttention])
def test_embedding_masks_reach_dense_attention(cls):
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    y = cls()([x, x])
    conversion, _ = assert_parity(keras.Model(tokens, y), inputs=[_tokens()])
    assert "value_mask=" in conversion.source


def test_attention_passes_the_query_mask_on_to_an_lstm():
    """``Attention.compute_mask`` returns the query mask (an ops ``ConvertToTensor``)."""
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    y = keras.layers.Attention()([x, x])
    z = keras.layers.LSTM(3)(y)
    conversion, _ = assert_parity(keras.Model(tokens, z), inputs=[_tokens()])
    assert "mask=" in conversion.source.split("rt.LSTM(")[1]
