"""Users' own models: built, every variable randomised, saved as ``.keras``, loaded back
with ``kgen.tracer.load.load_model_file`` (safe mode), converted, and compared with Keras
(the loaded model) on the same batch.  One test function per model."""

from __future__ import annotations

import keras
import numpy as np
from helpers import rand

from kgen.tracer.load import load_model_file
from kgen.verify import check_model, randomize

L = keras.layers


def _save_and_load(model, tmp_path):
    randomize(model, seed=7)
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = load_model_file(str(path))
    # The file's weights are the randomised ones (nothing re-initialised on load).
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return loaded


def _assert_file_parity(model, tmp_path, inputs):
    loaded = _save_and_load(model, tmp_path)
    # The file's own (randomised) weights: no second randomisation.
    conversion, report = check_model(loaded, randomize_weights=False, inputs=inputs)
    assert report.ok, "\n".join(["parity failed:", *report.lines()])
    return conversion


def small_unet():
    """Two-level U-Net: Conv2D/BN/ReLU encoder, a Conv2DTranspose and a bilinear
    UpSampling2D decoder path, Cropping2D to align a skip, Concatenate."""
    inputs = keras.Input((20, 20, 3), name="image")

    def block(x, filters, name):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x)

    e1 = block(inputs, 4, "enc1")  # 20x20
    p1 = L.MaxPooling2D(2, name="pool1")(e1)  # 10x10
    e2 = block(p1, 8, "enc2")
    p2 = L.MaxPooling2D(2, name="pool2")(e2)  # 5x5
    mid = block(p2, 8, "mid")
    # A strided transposed conv back to 10x10, concatenated with e2.
    u2 = L.Conv2DTranspose(8, 3, strides=2, padding="same", name="up2")(mid)
    d2 = block(L.Concatenate(name="cat2")([u2, e2]), 8, "dec2")
    # Bilinear up-sampling to 20x20 and a 22x22 skip cropped to match.
    u1 = L.UpSampling2D(2, interpolation="bilinear", name="up1")(d2)
    skip = L.ZeroPadding2D(1, name="skip_pad")(e1)
    skip = L.Cropping2D(((1, 1), (2, 0)), name="skip_crop")(skip)
    d1 = block(L.Concatenate(name="cat1")([u1, skip]), 4, "dec1")
    logits = L.Conv2D(2, 1, name="logits")(d1)
    return keras.Model(inputs, logits, name="small_unet")


def test_small_unet_from_keras_file(tmp_path):
    model = small_unet()
    x = rand(2, 20, 20, 3, seed=11)
    conversion = _assert_file_parity(model, tmp_path, [x])
    assert "nn.ConvTranspose(" in conversion.source and "rt.upsample(" in conversion.source


def conv3d_net():
    """A small volumetric classifier: Conv3D/BN/ReLU, MaxPooling3D, GlobalAveragePooling3D,
    Dense logits."""
    inputs = keras.Input((8, 10, 6, 2), name="volume")
    x = L.Conv3D(4, 3, padding="same", name="conv1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Activation("relu", name="relu1")(x)
    x = L.MaxPooling3D(2, name="pool1")(x)  # 4x5x3
    x = L.Conv3D(6, (3, 3, 2), strides=(1, 2, 1), padding="valid", name="conv2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Activation("relu", name="relu2")(x)
    x = L.GlobalAveragePooling3D(name="gap")(x)
    x = L.Dense(8, activation="relu", name="fc")(x)
    logits = L.Dense(3, name="logits")(x)
    return keras.Model(inputs, logits, name="conv3d_net")


def test_conv3d_net_from_keras_file(tmp_path):
    model = conv3d_net()
    x = rand(3, 8, 10, 6, 2, seed=12)
    _assert_file_parity(model, tmp_path, [x])
