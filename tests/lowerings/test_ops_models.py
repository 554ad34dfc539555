"""Small models built from the Keras 3 Operation-node patterns that the applications
create (MobileNetV3's hard sigmoid, ConvNeXt's residual ``+``), mixed with the layers
around them, so a pattern is checked in context before the whole-model tests."""

import keras
from helpers import assert_parity, rand
from keras.src.applications.convnext import LayerScale


def _hard_sigmoid(x):
    # keras/src/applications/mobilenet_v3.py: ops Add and ops Multiply nodes around a ReLU
    return keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)


def test_mobilenet_v3_squeeze_excite():
    inputs = keras.Input((6, 6, 8))
    x = keras.layers.Activation("hard_swish")(inputs)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = keras.layers.Conv2D(4, 1, padding="same")(s)
    s = keras.layers.ReLU()(s)
    s = keras.layers.Conv2D(8, 1, padding="same")(s)
    s = _hard_sigmoid(s)  # (B, 1, 1, C)
    x = keras.layers.Multiply()([x, s])  # broadcast over H, W
    x = x * _hard_sigmoid(x)  # hard_swish as op nodes (minimalistic=False head)
    model = keras.Model(inputs, x)
    assert_parity(model, inputs=[rand(2, 6, 6, 8, seed=2, low=-6.0, high=6.0)])


def test_convnext_block_with_nested_stem():
    stem = keras.Sequential(
        [
            keras.layers.Conv2D(8, 2, strides=2),
            keras.layers.LayerNormalization(epsilon=1e-6),
        ],
        name="stem",
    )
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3400.0, 3260.0, 3290.0])(
        inputs
    )
    x = stem(x)
    y = keras.layers.Conv2D(8, 7, padding="same", groups=8)(x)
    y = keras.layers.LayerNormalization(epsilon=1e-6)(y)
    y = keras.layers.Dense(32)(y)  # Dense on a 4-D tensor
    y = keras.layers.Activation("gelu")(y)
    y = keras.layers.Dense(8)(y)
    y = LayerScale(1e-6, 8)(y)
    x = x + y  # the residual is an ops Add node, not a layer
    model = keras.Model(inputs, x)
    assert_parity(model, inputs=[rand(2, 8, 8, 3, seed=4, low=0.0, high=255.0)])
