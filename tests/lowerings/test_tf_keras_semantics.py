"""Keras 2 (legacy tf.keras, the ``tf_keras`` package) semantics.

Where tf.keras differs from Keras 3 (hard_sigmoid, LeakyReLU's ``alpha``, the
``depthwise_kernel`` weight name, the fused BatchNormalization update, weight names with
``:0`` suffixes) each one-layer model is built with tf.keras, every variable randomised,
and the conversion compared with tf.keras itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_parity, rand

tf = pytest.importorskip("tensorflow")
tfk = pytest.importorskip("tf_keras")
L = tfk.layers


def one_layer(layer, *shapes):
    inputs = [tfk.Input(s) for s in shapes]
    return tfk.Model(
        inputs if len(inputs) > 1 else inputs[0], layer(inputs if len(inputs) > 1 else inputs[0])
    )


def wide(*shape, seed=0):
    """Inputs in [-5, 5]: crosses every kink and clip of the activations."""
    return rand(2, *shape, seed=seed, low=-5.0, high=5.0)


SHAPE = (5, 6)

# Every activation string tf.keras 2 accepts (tf_keras/src/activations.py: its own
# functions plus the tf.nn aliases relu6, leaky_relu, log_softmax and silu).
TF_KERAS_ACTIVATIONS = [
    "relu",
    "relu6",
    "elu",
    "selu",
    "softplus",
    "softsign",
    "swish",
    "silu",
    "gelu",
    "tanh",
    "sigmoid",
    "exponential",
    "hard_sigmoid",
    "linear",
    "softmax",
    "mish",
    "leaky_relu",
    "log_softmax",
]


def test_activation_list_is_tf_keras_own():
    for name in TF_KERAS_ACTIVATIONS:
        tfk.activations.get(name)  # raises for a string tf.keras does not know
    for name in ("hard_swish", "hard_silu"):  # Keras 3 only
        with pytest.raises(ValueError):
            tfk.activations.get(name)


@pytest.mark.parametrize("name", TF_KERAS_ACTIVATIONS)
def test_activation_string(name):
    assert_parity(one_layer(L.Activation(name), SHAPE), inputs=[wide(*SHAPE)])


@pytest.mark.parametrize("name", ["hard_sigmoid", "gelu", "leaky_relu", "swish"])
def test_activation_argument_of_dense(name):
    model = one_layer(L.Dense(5, activation=name), (4,))
    assert_parity(model, inputs=[wide(4)])


def test_hard_sigmoid_is_the_clip_form():
    """tf.keras: clip(0.2x + 0.5, 0, 1); Keras 3 (and jax.nn): relu6(x + 3) / 6."""
    import jax

    x = wide(*SHAPE)
    model = one_layer(L.Activation("hard_sigmoid"), SHAPE)
    conversion, _ = assert_parity(model, inputs=[x])
    keras3_form = np.asarray(jax.nn.hard_sigmoid(x))
    assert np.max(np.abs(keras3_form - model(x).numpy())) > 0.05  # the test can tell them apart
    assert "jax.nn.hard_sigmoid" not in conversion.source


@pytest.mark.parametrize("kwargs", [{}, {"alpha": 0.1}, {"alpha": 0.0}])
def test_leaky_relu_alpha(kwargs):
    """tf.keras's LeakyReLU takes ``alpha`` (default 0.3), Keras 3's ``negative_slope``."""
    assert_parity(one_layer(L.LeakyReLU(**kwargs), SHAPE), inputs=[wide(*SHAPE)])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, depth_multiplier=2),
        dict(kernel_size=3, depth_multiplier=2, strides=2, padding="same", activation="relu6"),
        dict(kernel_size=(3, 2), depth_multiplier=1, use_bias=False, dilation_rate=2),
    ],
)
def test_depthwise_conv2d(kwargs):
    from kgen.tracer import trace

    model = one_layer(L.DepthwiseConv2D(**kwargs, name="dw"), (9, 9, 3))
    weights = trace(model).nodes["dw"]["weights"]
    assert "depthwise_kernel" in weights and "kernel" not in weights
    assert_parity(model)


def test_conv2d_weights_with_suffixes():
    layer = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv")
    model = one_layer(layer, (9, 9, 3))
    assert [w.name for w in layer.weights] == ["conv/kernel:0", "conv/bias:0"]
    assert_parity(model)


def test_dense():
    assert_parity(one_layer(L.Dense(7, activation="tanh"), (5,)))


@pytest.mark.parametrize(
    "layer",
    [
        lambda: L.MaxPooling2D(3, strides=2, padding="same"),
        lambda: L.AveragePooling2D(2, strides=2, padding="same"),
        lambda: L.AveragePooling2D(3, strides=1, padding="same"),
        lambda: L.GlobalAveragePooling2D(keepdims=True),
        lambda: L.GlobalMaxPooling2D(),
    ],
    ids=["max_same", "avg_2x2_same", "avg_3x3_same", "gap_keepdims", "gmp"],
)
def test_pooling(layer):
    assert_parity(one_layer(layer(), (7, 7, 3)))


def test_rescaling_and_dropout():
    inp = tfk.Input((6, 6, 3))
    x = L.Rescaling(1.0 / 255, offset=-0.5)(inp)
    x = L.Dropout(0.5, noise_shape=(None, 1, 1, 3))(x)
    assert_parity(tfk.Model(inp, x), inputs=[rand(2, 6, 6, 3, low=0, high=255)])


# --- the Normalization preprocessing layer (ResNetRS uses the config form) -----------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mean=[0.485, 0.456, 0.406], variance=[0.052, 0.050, 0.051]),
        dict(mean=0.5, variance=2.0),
        dict(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0], invert=True),
    ],
)
def test_normalization_config(kwargs):
    assert_parity(one_layer(L.Normalization(**kwargs), (4, 4, 3)))


@pytest.mark.parametrize("axis", [-1, (1, 3)])
def test_normalization_weights(axis):
    """Adapt-style: weights mean, variance, count (randomised)."""
    layer = L.Normalization(axis=axis)
    model = one_layer(layer, (4, 5, 3))
    assert [w.name.split("/")[-1] for w in layer.weights] == ["mean:0", "variance:0", "count:0"]
    assert_parity(model)


# --- BatchNormalization: inference and the training-mode update -----------------------


def _bn_model(shape, **kwargs):
    inp = tfk.Input(shape)
    return tfk.Model(inp, L.BatchNormalization(name="bn", **kwargs)(inp))


@pytest.mark.parametrize("shape", [(4, 4, 3), (5,)])
def test_batch_norm_inference(shape):
    assert_parity(_bn_model(shape, epsilon=1e-5, momentum=0.9))


@pytest.mark.parametrize(
    "shape, kwargs, fused",
    [
        ((4, 4, 3), {}, True),  # rank 4, channels last: fused kernel, unbiased update
        ((2, 3, 3, 3), {}, True),  # rank 5: fused
        ((4, 4, 3), {"axis": 2}, False),  # rank 4 on a non-channel axis: not fused
        ((4, 4, 3), {"fused": False}, False),
        ((5,), {}, False),  # rank 2: never fused, biased update
    ],
    ids=["rank4", "rank5", "rank4_axis2", "rank4_unfused", "rank2"],
)
def test_batch_norm_training_update(shape, kwargs, fused):
    """After one training call the moving statistics match tf.keras's: the fused kernel
    updates the moving variance with the unbiased (n/(n-1)) batch variance, the
    non-fused path with the biased one.  Training-mode outputs match too."""
    import jax

    from kgen.api import convert
    from kgen.verify import randomize

    model = _bn_model(shape, momentum=0.5, **kwargs)
    assert model.get_layer("bn").fused is fused
    randomize(model, seed=3)
    conversion = convert(model)
    x = rand(4, *shape, seed=5, low=-2.0, high=3.0)

    y_ref = model(x, training=True).numpy()
    bn = model.get_layer("bn")
    ref_mean, ref_var = bn.moving_mean.numpy(), bn.moving_variance.numpy()

    y, updates = conversion.module.apply(
        conversion.variables, x, train=True, mutable=["batch_stats"]
    )
    stats = jax.device_get(updates["batch_stats"]["bn"])
    np.testing.assert_allclose(stats["mean"], ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], ref_var, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(np.asarray(y) - y_ref)) / np.max(np.abs(y_ref)) < 1e-4

    # Biased and unbiased differ by far more than rtol here, so the test can tell.
    n = x.size // ref_mean.size
    assert n / (n - 1) - 1 > 100 * 1e-5


# --- graph structure: Sequential, nested models, shared layers -------------------------


def test_sequential():
    model = tfk.Sequential(
        [
            tfk.Input((8, 8, 3)),
            L.Conv2D(4, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(6.0),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dense(5),
        ]
    )
    assert_parity(model)


def test_nested_models():
    inner = tfk.Sequential([tfk.Input((6, 6, 3)), L.Conv2D(4, 1), L.ReLU()], name="stem")
    block_in = tfk.Input((6, 6, 4))
    block = tfk.Model(block_in, L.Conv2D(4, 3, padding="same")(block_in) + block_in, name="block")
    inp = tfk.Input((6, 6, 3))
    x = block(block(inner(inp)))  # the nested functional model is shared, too
    x = L.GlobalAveragePooling2D()(x)
    assert_parity(tfk.Model(inp, L.Dense(3)(x)))


def test_shared_layer():
    dense = L.Dense(4, name="shared")
    a, b = tfk.Input((5,)), tfk.Input((5,))
    out = L.Concatenate()([dense(a), dense(b), dense(a * 2.0)])
    conversion, _ = assert_parity(tfk.Model([a, b], out))
    assert len(conversion.variables["params"]) == 1  # one submodule, called three times
