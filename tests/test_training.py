"""Training-mode parity with Keras (kgen/train_check.py): the outputs of
``model(x, training=True)``, the updated BatchNorm moving statistics, and the gradient
of a scalar loss with respect to every trainable variable, each tensor at 1e-4.

Dropout is off in those comparisons (rate 0); it is checked statistically here.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from kgen.train_check import check_training

keras = pytest.importorskip("keras")
layers = keras.layers


def _assert_training_parity(model, **kwargs):
    report = check_training(model, **kwargs)
    assert report.ok, "\n".join(["training parity failed:", *report.lines()])
    assert report.gradients.outputs, "no gradient was compared"
    unchanged = [o.name for o in report.statistics.outputs if "unchanged" in o.name]
    assert not unchanged, f"statistics Keras did not update: {unchanged}"
    return report


def _small_cnn(lib):
    x = lib.Input((12, 12, 3))
    h = lib.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(x)
    h = lib.layers.BatchNormalization(name="bn")(h)
    h = lib.layers.ReLU()(h)
    h = lib.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(h)
    h = lib.layers.BatchNormalization(momentum=0.9, name="bn_dw")(h)
    h = lib.layers.Activation("swish")(h)
    h = lib.layers.GlobalAveragePooling2D()(h)
    h = lib.layers.Dropout(0.3)(h)
    return lib.Model(x, lib.layers.Dense(5, name="head")(h))


def test_keras3_cnn_with_batchnorm():
    report = _assert_training_parity(_small_cnn(keras))
    stats = {o.name for o in report.statistics.outputs}
    assert "batch_stats bn/mean" in stats and "batch_stats bn_dw/var" in stats  # all moved
    grads = {o.name for o in report.gradients.outputs}
    assert {"grad conv/kernel", "grad bn/scale", "grad head/kernel", "grad dw/kernel"} <= grads


def test_tf_keras_cnn_with_fused_batchnorm():
    """tf.keras's fused kernel updates the moving variance with the unbiased batch
    variance; the conversion matches it."""
    tfk = pytest.importorskip("tf_keras")
    _assert_training_parity(_small_cnn(tfk))


def test_keras3_attention_block():
    x = keras.Input((6, 8))
    h = layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    h = layers.LayerNormalization(name="ln")(x + h)
    h = layers.Dense(16, activation="gelu", name="up")(h)
    model = keras.Model(x, layers.Dense(8, name="down")(h))
    _assert_training_parity(model)


def test_traced_custom_layer_gradients_reach_its_own_weights():
    from test_tracing import PositionalProjection

    x = keras.Input((5, 8))
    h = PositionalProjection(16, 8, name="pos")(x)
    model = keras.Model(x, layers.LayerNormalization(name="ln")(h))
    report = _assert_training_parity(model)
    assert "grad pos/table" in {o.name for o in report.gradients.outputs}


def test_dropout_in_training_drops_at_its_rate_scales_and_varies_per_rng():
    import kgen

    x = keras.Input((4000,))
    model = keras.Model(x, layers.Dropout(0.25, name="drop")(x))
    conversion = kgen.convert(model)
    module, ones = conversion.module, np.ones((2, 4000), "float32")

    def run(seed):
        rngs = {"dropout": jax.random.PRNGKey(seed)}
        return np.asarray(module.apply(conversion.variables, ones, train=True, rngs=rngs))

    a, b = run(0), run(1)
    kept = a != 0
    assert abs(1 - kept.mean() - 0.25) < 0.02  # the rate
    np.testing.assert_allclose(a[kept], 1 / 0.75, rtol=1e-6)  # inverted-dropout scaling
    assert (kept != (b != 0)).mean() > 0.2  # another rng, another mask
    np.testing.assert_array_equal(module.apply(conversion.variables, ones), ones)  # inference


_KNOWN_GAP = pytest.mark.xfail(
    reason="issue 15, open: training-mode gradients differ from Keras's beyond 1e-4 "
    "(inference and BatchNorm statistics match)",
    strict=False,
)

_FAMILIES = [
    "MobileNet",
    pytest.param("MobileNetV2", marks=_KNOWN_GAP),
    "MobileNetV3Small",
    pytest.param("EfficientNetB0", marks=_KNOWN_GAP),
    "EfficientNetV2B0",
    pytest.param("ResNet50", marks=_KNOWN_GAP),
    "ResNet50V2",
    pytest.param("DenseNet121", marks=_KNOWN_GAP),
    "InceptionV3",
    "Xception",
    "VGG16",
    "NASNetMobile",
    "ConvNeXtTiny",
    "InceptionResNetV2",
]


@pytest.mark.catalog
@pytest.mark.parametrize("name", _FAMILIES)
def test_application_training_parity(name):
    """The smallest Keras 3 application of each family, at a small input size.

    Measured so far (issue 15, open): MobileNetV3Small passes; MobileNetV2,
    EfficientNetB0, ResNet50 and DenseNet121 do not.  In MobileNetV2 (64x64, batch 2)
    the error starts at block_14_depthwise_BN, whose batch has channels of zero
    variance: kgen's float32 gradients there are 34% from Keras's, while Keras is within
    7e-5 of the float64 gradient.  The other families have not been run to the end.
    """
    build = getattr(keras.applications, name)
    size = 75 if name in ("InceptionV3", "InceptionResNetV2", "Xception") else 64
    model = build(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    _assert_training_parity(model, batch=2)
