"""``--api nnx``: the generated module as a Flax NNX class, with the linen form's parity.

Every parity test here compares the NNX module with Keras itself, on randomised
variables: one layer per NNX rule (``codegen/nnx.py``), users' models (nested, shared,
dict inputs, traced custom layers), the smallest application of each catalog family,
and a training step (outputs, moving statistics and gradients, ``check_training``).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from flax import nnx
from helpers import import_file, one_layer_model, rand, run_cli
from test_custom_model import nested_functional, shared_nested, two_in_two_out
from test_tracing import Net, _positional_model
from test_user_models import (
    causal_audio_net,
    conv3d_net,
    rnn_text_classifier,
    small_unet,
    tiny_transformer,
)

import kgen
from kgen.errors import UnsupportedError
from kgen.runtime import load_variables
from kgen.runtime import nnx as rt_nnx
from kgen.train_check import check_training
from kgen.verify import check_model, compare, randomize

L = keras.layers


def _check(model, **kwargs):
    conversion, report = check_model(model, api="nnx", **kwargs)
    assert report.ok, "\n".join(["parity failed:", *report.lines()])
    assert "(nnx.Module)" in conversion.source and "flax.linen" not in conversion.source
    return conversion


# One layer per NNX rule, with the settings that change its constructor.
LAYERS = {
    "dense": (lambda: L.Dense(5), [(7,)]),
    "dense_on_sequences": (lambda: L.Dense(5, use_bias=False), [(4, 7)]),
    "conv1d_dilated": (lambda: L.Conv1D(4, 3, dilation_rate=2, padding="causal"), [(11, 3)]),
    "conv2d_strided": (lambda: L.Conv2D(6, 3, strides=2, padding="same"), [(9, 9, 4)]),
    "conv2d_groups": (lambda: L.Conv2D(6, 3, groups=2), [(7, 7, 4)]),
    "conv2d_depthwise_groups": (lambda: L.Conv2D(4, 7, groups=4, padding="same"), [(9, 9, 4)]),
    "conv2d_pointwise_strided": (lambda: L.Conv2D(5, 1, strides=2), [(9, 9, 4)]),
    "conv3d": (lambda: L.Conv3D(3, 2), [(5, 5, 5, 2)]),
    "depthwise_multiplier": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), [(8, 8, 3)]),
    "separable1d": (lambda: L.SeparableConv1D(5, 3, padding="same"), [(10, 3)]),
    "separable2d": (lambda: L.SeparableConv2D(5, 3, strides=2, depth_multiplier=2), [(9, 9, 3)]),
    "batchnorm": (lambda: L.BatchNormalization(epsilon=1e-2), [(6, 6, 5)]),
    "batchnorm_axis1": (lambda: L.BatchNormalization(axis=1), [(4, 6)]),
    "layernorm_two_axes": (lambda: L.LayerNormalization(axis=[1, 2]), [(3, 4, 5)]),
    "layernorm_rms": (lambda: L.LayerNormalization(rms_scaling=True), [(3, 6)]),
    "groupnorm": (lambda: L.GroupNormalization(groups=2), [(5, 5, 6)]),
    "embedding": (lambda: L.Embedding(20, 4), [(6,)]),
    "dropout": (lambda: L.Dropout(0.5), [(8,)]),
    "spatial_dropout": (lambda: L.SpatialDropout2D(0.5), [(4, 4, 3)]),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"), [(5, 5, 3)]),
    "rms_norm": (lambda: L.RMSNormalization(), [(4, 6)]),
    "prelu": (lambda: L.PReLU(shared_axes=[1]), [(5, 3)]),
    "einsum_dense": (lambda: L.EinsumDense("abc,cd->abd", (3, 4), bias_axes="d"), [(3, 6)]),
    # Linen-backed (rt.nnx.Linen): one implementation of these for both APIs
    "gru": (lambda: L.GRU(5, return_sequences=True), [(6, 3)]),
    "bidirectional_lstm": (lambda: L.Bidirectional(L.LSTM(4)), [(6, 3)]),
    "gaussian_noise": (lambda: L.GaussianNoise(0.3), [(7,)]),
    "reversible_embedding": (lambda: L.ReversibleEmbedding(20, 4), [(6,)]),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_one_layer_parity(name):
    make, shapes = LAYERS[name]
    model = one_layer_model(make(), *shapes)
    inputs = None
    if name in ("embedding", "reversible_embedding"):
        inputs = [np.random.default_rng(0).integers(0, 20, (2, 6)).astype(np.float32)]
    _check(model, inputs=inputs)


def test_normalization_with_its_statistics_as_weights():
    layer = L.Normalization(axis=-1)
    layer.adapt(rand(20, 4, seed=3) * 3.0 + 1.0)
    conversion = _check(one_layer_model(layer, (4,)), randomize_weights=False)
    assert set(conversion.variables["batch_stats"]["normalization"]) == {"mean", "variance"}


@pytest.mark.parametrize(
    "build",
    [
        two_in_two_out,
        nested_functional,
        shared_nested,
        small_unet,
        conv3d_net,
        causal_audio_net,
        tiny_transformer,
        rnn_text_classifier,
    ],
)
def test_user_models(build):
    model = build()
    _check(model)


def test_traced_custom_layers_share_one_class_and_own_their_weights():
    model = _positional_model(dims=(8, 8, 4))
    conversion = _check(model, inputs=[rand(2, 6, 8)])
    source = conversion.source
    assert source.count("class PositionalProjection(nnx.Module):") == 1
    assert "nnx.Param(jnp.zeros(" in source and "self.table[...]" in source
    table = conversion.variables["params"]["pos2"]["table"]
    np.testing.assert_array_equal(table, model.get_layer("pos2").table.numpy())


def test_subclassed_model_with_dropout_in_blocks():
    net = Net(name="net")
    net(np.zeros((1, 5), "float32"))
    randomize(net, seed=4)
    conversion = kgen.convert(net, input_shapes=(5,), api="nnx")
    x = rand(3, 5)
    report = compare(np.asarray(net(x)), np.asarray(conversion.module(x)))
    assert report.ok, report.lines()
    assert conversion.source.count("class Block(nnx.Module):") == 1


# The smallest model of every catalog family, at reduced input sizes.
APPLICATIONS = {
    "VGG16": 32,
    "ResNet50": 64,
    "ResNet50V2": 64,
    "InceptionV3": 75,
    "InceptionResNetV2": 75,
    "Xception": 71,
    "MobileNet": 64,
    "MobileNetV2": 64,
    "MobileNetV3Small": 64,
    "DenseNet121": 64,
    "NASNetMobile": 64,
    "EfficientNetB0": 64,
    "EfficientNetV2B0": 64,
    "ConvNeXtTiny": 64,
}


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_applications(name):
    size = APPLICATIONS[name]
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classifier_activation=None
    )
    low, high = (
        (0.0, 255.0) if name.startswith(("EfficientNet", "MobileNetV3", "ConvNeXt")) else (-1, 1)
    )
    _check(model, taps=4, inputs=[rand(2, size, size, 3, seed=1, low=low, high=high)])


def test_folded_blocks_are_classes_whose_sizes_are_init_arguments():
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    conversion = _check(model, taps=0)
    source = conversion.source
    assert "class ConvBlock(nnx.Module):" in source
    assert "def __init__(self, " in source and "rngs: nnx.Rngs" in source
    # The input channels of a block's first conv differ per stage: an __init__ argument
    assert "in_features" in source
    flat = kgen.convert(model, fold=False, api="nnx")
    x = rand(1, 64, 64, 3, seed=2)
    folded_out = np.asarray(conversion.module(x))
    np.testing.assert_allclose(np.asarray(flat.module(x)), folded_out, rtol=1e-5, atol=1e-6)


def test_names_that_are_not_attributes_are_renamed():
    x = keras.Input((6,), name="in")
    h = L.Dense(4, name="1st")(x)
    h = L.Dense(4, name="eval")(h)
    h = L.Dense(4, name="train")(h)
    h = L.BatchNormalization(name="rngs")(h)
    conversion = _check(keras.Model(x, L.Dense(2, name="params")(h)))
    names = set(conversion.variables["params"])
    assert names == {"layer_1st", "eval_", "train_", "rngs", "params_"}, names


def test_same_model_gives_byte_identical_source():
    model = small_unet()
    a = kgen.convert(model, api="nnx").source
    b = kgen.convert(model, api="nnx").source
    assert a == b
    assert kgen.convert(model).source != a  # the linen form is its own


def test_attention_is_linen_backed_with_linen_names():
    model = tiny_transformer()
    conversion = _check(model)
    assert "rt.nnx.Linen(rt.MultiHeadAttention(" in conversion.source
    mha = conversion.variables["params"]["mha0"]  # the Keras layer's name
    assert set(mha) == {"query", "key", "value", "attention_output"}


def test_a_plugin_submodule_without_an_nnx_form_is_one_clear_error(tmp_path, monkeypatch):
    from kgen.codegen import SELF, Call, Lowered, Module, Sym, register, registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @keras.saving.register_keras_serializable(package="kgen_nnx_test")
    class Normed(L.Layer):
        def call(self, x):
            return keras.ops.tanh(x)

    @register("Normed", family="plugin")
    def lower_normed(node):
        return Lowered(Call(SELF, (node.input,)), module=Module(Sym("nn.LayerNorm")))

    x = keras.Input((4,))
    model = keras.Model(x, Normed(name="normed")(x))
    with pytest.raises(UnsupportedError, match=r"'normed'.*emit this model with --api linen"):
        kgen.convert(model, api="nnx")
    path = tmp_path / "normed.keras"
    model.save(path)
    out = tmp_path / "out"
    result = run_cli("emit", path, "--api", "nnx", "-o", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_emit_load_and_save_round_trip(tmp_path):
    model = small_unet()
    randomize(model, seed=3)
    path = tmp_path / "unet.keras"
    model.save(path)
    result = run_cli("emit", path, "--api", "nnx", "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout.strip().splitlines()[-1])
    generated = import_file(info["module"])
    cls = getattr(generated, info["class"])
    loaded = rt_nnx.load(cls, info["weights"])  # no initialiser runs
    x = rand(2, 20, 20, 3, seed=5)
    report = compare(np.asarray(model(x)), np.asarray(nnx.jit(lambda m, x: m(x))(loaded, x)))
    assert report.ok, report.lines()
    # The module's weights are the file's, all of them, under the same paths
    variables = load_variables(info["weights"])
    again = rt_nnx.variables(loaded)
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(variables)
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)
    # A fresh model initialises the same structure; rt.nnx.init compiles the same
    # initialisers in one program (same values to float rounding)
    fresh = rt_nnx.variables(cls(rngs=nnx.Rngs(0)))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(variables)
    for method in ("host", "jit"):
        compiled = rt_nnx.variables(rt_nnx.init(cls, seed=0, method=method))
        assert jax.tree_util.tree_structure(compiled) == jax.tree_util.tree_structure(fresh)
        for a, b in zip(jax.tree_util.tree_leaves(compiled), jax.tree_util.tree_leaves(fresh)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the host path's rng streams are the eager model's: the same dropout masks
    streams = [
        (path, v)
        for path, v in nnx.iter_graph(rt_nnx.init(cls, seed=0, method="host"))
        if isinstance(v, nnx.RngKey)
    ]
    eager_streams = [
        (path, v) for path, v in nnx.iter_graph(cls(rngs=nnx.Rngs(0))) if isinstance(v, nnx.RngKey)
    ]
    assert [p for p, _ in streams] == [p for p, _ in eager_streams]
    for (_, a), (_, b) in zip(streams, eager_streams):
        np.testing.assert_array_equal(jax.random.key_data(a[...]), jax.random.key_data(b[...]))
    bad = jax.tree_util.tree_map(lambda a: a, variables)
    node = bad["params"]
    while isinstance(next(iter(node.values())), dict):
        node = next(iter(node.values()))
    node[next(iter(node))] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(kgen.WeightsError, match="shape"):
        rt_nnx.load(cls, bad)
    del bad["params"][next(iter(bad["params"]))]
    with pytest.raises(kgen.WeightsError, match="not given"):
        rt_nnx.load(cls, bad)


def _training_model():
    x = keras.Input((10, 10, 3))
    h = L.Conv2D(6, 3, padding="same")(x)
    h = L.BatchNormalization()(h)
    h = L.Activation("swish")(h)
    h = L.SeparableConv2D(5, 3)(h)
    h = L.LayerNormalization()(h)
    h = L.GlobalAveragePooling2D()(h)
    h = L.Dropout(0.3)(h)
    return keras.Model(x, L.Dense(4)(h))


@pytest.mark.parametrize(
    "build",
    [
        _training_model,
        pytest.param(
            lambda: keras.applications.EfficientNetB0(
                weights=None, input_shape=(64, 64, 3), classifier_activation=None
            ),
            marks=pytest.mark.catalog,  # 90 s here, most of it the float64 reference grads
        ),
    ],
    ids=["small", "EfficientNetB0"],
)
def test_training_step_parity(build):
    report = check_training(build(), api="nnx", batch=2)
    assert report.ok, "\n".join(report.lines())
    assert report.statistics.outputs and report.gradients.outputs and not report.unmatched


def test_dropout_follows_train_and_its_rng_stream():
    conversion = kgen.convert(one_layer_model(L.Dropout(0.25), (4000,)), api="nnx")
    model = conversion.module
    x = jnp.ones((1, 4000))
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(x))  # inference: identity
    a, b = np.asarray(model(x, train=True)), np.asarray(model(x, train=True))
    assert abs(np.mean(a == 0) - 0.25) < 0.03  # the rate
    np.testing.assert_allclose(a[a != 0], 1 / 0.75, rtol=1e-6)  # the scaling
    assert not np.array_equal(a, b)  # the stream moves on


def test_batchnorm_moves_its_statistics_only_in_training():
    conversion = kgen.convert(one_layer_model(L.BatchNormalization(momentum=0.5), (3,)), api="nnx")
    model = conversion.module
    before = np.asarray(model.batch_normalization.mean[...])
    x = rand(8, 3, seed=4) + 2.0
    model(x)
    np.testing.assert_array_equal(np.asarray(model.batch_normalization.mean[...]), before)
    model(x, train=True)
    expected = before * 0.5 + x.mean(0) * 0.5
    np.testing.assert_allclose(np.asarray(model.batch_normalization.mean[...]), expected, rtol=1e-6)


def test_fine_tuning_example_with_nnx_optimizer(tmp_path, monkeypatch):
    from kgen.examples import fine_tune_nnx

    monkeypatch.setenv("KGEN_CACHE_DIR", str(tmp_path))
    result = fine_tune_nnx.run(epochs=4)
    assert result["backbone_unchanged"] and result["head_trained"]
    assert result["accuracy"] >= 0.9 > result["chance"]
    assert result["restored_accuracy"] == result["accuracy"]


def test_tf_keras_model_with_fused_batchnorm_trains_as_tf_keras():
    """tf.keras: its own layer classes, and the fused BatchNorm's unbiased update."""
    tfk = pytest.importorskip("tf_keras")
    x = tfk.Input((6, 6, 3))
    h = tfk.layers.Conv2D(4, 3, padding="same")(x)
    h = tfk.layers.BatchNormalization(fused=True)(h)
    h = tfk.layers.DepthwiseConv2D(3)(h)
    h = tfk.layers.GlobalAveragePooling2D()(h)
    model = tfk.Model(x, tfk.layers.Dense(3)(h))
    _check(model)
    report = check_training(model, api="nnx", batch=3)
    assert report.ok, "\n".join(report.lines())
