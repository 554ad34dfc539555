"""Tracing into layers kgen has no lowering for (kgen/tracer/custom.py): a custom layer's
own ``call()`` becomes an ``nn.Module`` class, checked against Keras itself.

The third-party packages' smallest models are here; the larger ones are under the
``catalog`` marker in tests/test_third_party.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_parity, import_file, rand, run_cli

import kgen
from kgen.errors import TraceError, UnsupportedError
from kgen.runtime import load_variables
from kgen.verify import compare, randomize

keras = pytest.importorskip("keras")
ops = keras.ops
layers = keras.layers

PACKAGE = "kgen_tracing_test"


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionalProjection(layers.Layer):
    """A weight read in call() (the table), a sub-layer, and ops.shape of a None dim."""

    def __init__(self, maxlen, dim, **kwargs):
        super().__init__(**kwargs)
        self.maxlen, self.dim = maxlen, dim
        self.proj = layers.Dense(dim)

    def build(self, shape):
        self.table = self.add_weight(shape=(self.maxlen, self.dim), name="table")
        self.proj.build(shape)

    def call(self, x):
        length = ops.shape(x)[1]
        table = ops.slice(ops.convert_to_tensor(self.table), (0, 0), (length, self.dim))
        return self.proj(x) + table

    def get_config(self):
        return {**super().get_config(), "maxlen": self.maxlen, "dim": self.dim}


def _positional_model(dims=(8,)):
    x = keras.Input((None, 8), name="x")
    h = x
    for i, dim in enumerate(dims):
        h = PositionalProjection(32, dim, name=f"pos{i}")(h)
    return keras.Model(x, h)


def _apply(conversion, *xs):
    return conversion.module.apply(conversion.variables, *xs)


def test_custom_layer_weights_are_params_and_lengths_are_read_at_run_time():
    model = _positional_model()
    randomize(model, seed=1)
    conversion = kgen.convert(model)
    for length in (11, 3):  # one module, every length Keras accepts
        x = rand(2, length, 8, seed=length)
        report = compare(np.asarray(model(x)), _apply(conversion, x))
        assert report.ok, report.lines()
    params = conversion.variables["params"]["pos0"]
    assert set(params) == {"table", "proj"}
    np.testing.assert_array_equal(params["table"], model.layers[1].table.numpy())
    assert 'self.param("table"' in conversion.source  # a param, never a frozen array
    assert "np.array" not in conversion.source
    assert "x.shape[1]" in conversion.source


def test_instances_that_trace_alike_share_one_class_with_fields():
    model = _positional_model(dims=(8, 8, 4))
    conversion, _ = assert_parity(model, inputs=[rand(2, 6, 8)])
    source = conversion.source
    assert source.count("class PositionalProjection(nn.Module):") == 1
    assert "dim: int" in source  # named after the layer's own attribute
    assert "dim=4, name='pos2')" in source.replace('"', "'")


def test_tracing_leaves_the_model_as_it_was():
    model = _positional_model(dims=(8, 8))
    randomize(model, seed=2)
    x = rand(2, 5, 8)
    before = np.asarray(model(x))
    counts = [len(layer._inbound_nodes) for layer in model._flatten_layers()]
    kgen.convert(model)
    assert [len(layer._inbound_nodes) for layer in model._flatten_layers()] == counts
    assert isinstance(model.layers[1].table, keras.Variable)
    np.testing.assert_array_equal(np.asarray(model(x)), before)


class RelativeBias(layers.Layer):
    """Swin-like: an index table computed in build(), a bias table gathered by it."""

    def build(self, shape):
        n = shape[1]
        self.index = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]).astype("int32")
        self.bias = self.add_weight(name="bias", shape=(n,))

    def call(self, x):
        return x + ops.take(self.bias, self.index)


def test_constant_computed_in_build_is_frozen_and_says_so():
    x = keras.Input((4, 4))
    conversion, _ = assert_parity(keras.Model(x, RelativeBias(name="rel")(x)))
    assert "# constant array: computed by RelativeBias from no input" in conversion.source
    assert set(conversion.variables["params"]["rel"]) == {"bias"}


class BranchOnValue(layers.Layer):
    """A Python ``if`` on a tensor's value: runs eagerly, but has no graph."""

    def call(self, x):
        return x * 2.0 if ops.max(x) > 0 else x

    def compute_output_shape(self, shape):
        return shape


def test_untraceable_layer_is_reported_with_the_reason_in_one_line():
    x = keras.Input((4,))
    h = PositionalProjection(8, 4, name="fine")(layers.Reshape((1, 4))(x))
    model = keras.Model(x, BranchOnValue(name="branchy")(h))
    with pytest.raises(UnsupportedError) as info:
        kgen.convert(model)
    message = str(info.value)
    assert "\n" not in message
    assert "BranchOnValue" in message and "('branchy')" in message
    assert "could not trace" in message and "boolean" in message
    assert "fine" not in message  # the traceable layer is not reported
    assert "--plugin" in message


# -- a subclassed model ------------------------------------------------------------------


class Block(layers.Layer):
    def __init__(self, units, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.up = layers.Dense(2 * units, activation="relu")
        self.down = layers.Dense(units)
        self.drop = layers.Dropout(rate)
        self.norm = layers.LayerNormalization()

    def call(self, x, training=None):
        return self.norm(x + self.drop(self.down(self.up(x)), training=training))


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem = layers.Dense(8)
        self.blocks = [Block(8) for _ in range(3)]
        self.head = layers.Dense(3)

    def call(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def test_subclassed_model_with_a_block_used_three_times():
    net = Net(name="net")
    net(np.zeros((1, 5), "float32"))
    randomize(net, seed=4)
    conversion = kgen.convert(net, input_shapes=(5,))
    x = rand(3, 5)
    report = compare(np.asarray(net(x)), _apply(conversion, x))
    assert report.ok, report.lines()
    assert conversion.source.count("class Block(nn.Module):") == 1
    assert set(conversion.variables["params"]) == {
        "stem",
        "blocks_0",
        "blocks_1",
        "blocks_2",
        "head",
    }
    assert set(conversion.variables["params"]["blocks_1"]) == {"up", "down", "norm"}
    assert "deterministic=not train" in conversion.source  # Dropout follows `train`


_USER_MODULE = """
import keras
from keras import layers


class Block(layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.up = layers.Dense(2 * units, activation="relu")
        self.down = layers.Dense(units)

    def call(self, x):
        return x + self.down(self.up(x))


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [Block(5) for _ in range(3)]

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def make():
    return Net(name="user_net")
"""


def test_subclassed_model_from_the_cli(tmp_path, monkeypatch):
    (tmp_path / "kgen_user_net.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run_cli("verify", "kgen_user_net:make", "--input-shape", "5", "--weights", "random")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout
    out = tmp_path / "out"
    result = run_cli("emit", "kgen_user_net:make", "--input-shape", "5", "-o", out)
    assert result.exit_code == 0, result.output
    source = (out / "user_net.py").read_text()
    assert source.count("class Block(nn.Module):") == 1
    assert "input_shapes = ((None, 5),)" in source
    missing = run_cli("emit", "kgen_user_net:make", "-o", out)
    assert missing.exit_code == 2 and "--input-shape" in missing.output
    assert run_cli("emit", "kgen_user_net:nothing", "-o", out).exit_code == 2


def test_subclassed_model_without_input_shapes_is_a_clear_error():
    net = Net()
    net(np.zeros((1, 5), "float32"))
    with pytest.raises(TraceError, match="input_shapes"):
        kgen.convert(net)


# -- user activation functions ---------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
def scaled_tanh(x):
    return ops.tanh(x) * 1.7


def test_user_activation_function_is_traced(tmp_path):
    x = keras.Input((6,))
    h = layers.Dense(5, activation=scaled_tanh, name="dense")(x)
    model = keras.Model(x, layers.Dense(2, name="head")(h))
    conversion, _ = assert_parity(model)
    assert "class DenseScaledTanh(nn.Module):" in conversion.source
    assert set(conversion.variables["params"]["dense"]) == {"kernel", "bias"}
    # From a .keras file too: the function is found in Keras's registry.
    randomize(model, seed=5)
    path = tmp_path / "act.keras"
    model.save(path)
    result = run_cli("verify", path, "--weights", "model")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout


# -- the keras.io example "Text classification with Transformer" -----------------------


@keras.saving.register_keras_serializable(package="keras_io")
class TransformerBlock(layers.Layer):
    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.num_heads, self.ff_dim, self.rate = embed_dim, num_heads, ff_dim, rate
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output)
        return self.layernorm2(out1 + ffn_output)

    def get_config(self):
        config = super().get_config()
        names = ("embed_dim", "num_heads", "ff_dim", "rate")
        return {**config, **{k: getattr(self, k) for k in names}}


@keras.saving.register_keras_serializable(package="keras_io")
class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.maxlen, self.vocab_size, self.embed_dim = maxlen, vocab_size, embed_dim
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = ops.arange(start=0, stop=maxlen, step=1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions

    def get_config(self):
        config = super().get_config()
        names = ("maxlen", "vocab_size", "embed_dim")
        return {**config, **{k: getattr(self, k) for k in names}}


def keras_io_text_transformer(maxlen=12, vocab_size=50, embed_dim=16):
    inputs = layers.Input(shape=(maxlen,))
    x = TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)(inputs)
    x = TransformerBlock(embed_dim, 2, 32)(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    return keras.Model(inputs, layers.Dense(2)(x))  # logits: the example's softmax left off


def test_keras_io_text_transformer_from_a_file(tmp_path):
    model = keras_io_text_transformer()
    randomize(model, seed=6)
    path = tmp_path / "text_transformer.keras"
    model.save(path)
    result = run_cli("emit", path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (py_path,) = (tmp_path / "out").glob("*.py")
    source = py_path.read_text()
    assert "class TokenAndPositionEmbedding(nn.Module):" in source
    assert "class TransformerBlock(nn.Module):" in source
    generated = import_file(py_path)
    net = getattr(generated, generated.__all__[0])()
    variables = load_variables(py_path.with_suffix(".safetensors"))
    tokens = np.random.default_rng(0).integers(0, 50, size=(3, 12)).astype("float32")
    report = compare(np.asarray(model(tokens)), net.apply(variables, tokens))
    assert report.ok, report.lines()
    block = variables["params"]["transformer_block"]
    assert {"att", "ffn", "layernorm1", "layernorm2"} <= set(block)


# -- tf.keras ---------------------------------------------------------------------------


def test_tf_keras_custom_layer_with_tf_ops_is_traced():
    tfk = pytest.importorskip("tf_keras")
    import tensorflow as tf

    class Affine(tfk.layers.Layer):  # kecam's ChannelAffine, with a TF split and shape
        def build(self, shape):
            self.ww = self.add_weight(name="weight", shape=(shape[-1],), initializer="ones")
            self.bb = self.add_weight(name="bias", shape=(shape[-1],), initializer="zeros")

        def call(self, x):
            a, b = tf.split(x * self.ww + self.bb, 2, axis=-1)
            scale = tf.cast(tf.shape(x)[1], x.dtype) ** 0.5
            return tf.concat([a * scale, tf.nn.relu(b)], axis=-1)

    x = tfk.Input((5, 6))
    model = tfk.Model(x, Affine(name="affine")(tfk.layers.Dense(6, name="d")(x)))
    conversion, _ = assert_parity(model)
    assert "class Affine(nn.Module):" in conversion.source
    assert set(conversion.variables["params"]["affine"]) == {"weight", "bias"}


# -- ReversibleEmbedding (Keras 3 core, every keras-hub text model) ----------------------


@pytest.mark.parametrize("tie_weights", [True, False])
def test_reversible_embedding_both_directions(tie_weights):
    embedding = layers.ReversibleEmbedding(20, 6, tie_weights=tie_weights, name="tokens")
    x = keras.Input((7,), dtype="int32")
    hidden = layers.Dense(6, name="mix")(embedding(x))
    model = keras.Model(x, embedding(hidden, reverse=True))
    tokens = np.random.default_rng(0).integers(0, 20, size=(2, 7)).astype("int32")
    conversion, _ = assert_parity(model, inputs=[tokens])
    assert "rt.ReversibleEmbedding" in conversion.source
