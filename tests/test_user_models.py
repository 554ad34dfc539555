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


def causal_audio_net():
    """A WaveNet-style 1-D net on raw audio: causal Conv1D with growing dilation, BN,
    ReLU, a residual add, GlobalAveragePooling1D and Dense logits."""
    inputs = keras.Input((64, 1), name="waveform")
    x = L.Conv1D(8, 3, padding="causal", name="stem")(inputs)
    for i, dilation in enumerate((2, 4)):
        y = L.Conv1D(8, 3, padding="causal", dilation_rate=dilation, name=f"dil{dilation}")(x)
        y = L.BatchNormalization(name=f"bn{i}")(y)
        y = L.ReLU(name=f"relu{i}")(y)
        x = L.Add(name=f"res{i}")([x, y])
    x = L.GlobalAveragePooling1D(name="gap")(x)
    logits = L.Dense(5, name="logits")(x)
    return keras.Model(inputs, logits, name="causal_audio_net")


def test_causal_audio_net_from_keras_file(tmp_path):
    model = causal_audio_net()
    x = rand(3, 64, 1, seed=13)
    conversion = _assert_file_parity(model, tmp_path, [x])
    # the two dilated residual blocks are one class, the dilation its field
    assert 'padding="CAUSAL", kernel_dilation=self.kernel_dilation' in conversion.source
    assert 'Res(kernel_dilation=(4,), name="res1")' in conversion.source


def _sinusoids(steps: int, dim: int) -> np.ndarray:
    pos = np.arange(steps)[:, None]
    freq = np.exp(-np.log(10000.0) * (np.arange(0, dim, 2) / dim))
    table = np.zeros((steps, dim), np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(pos * freq), np.cos(pos * freq)
    return table


def tiny_transformer(vocab=30, steps=10, dim=16):
    """Token embedding plus sinusoidal positions (an ops Add with a constant), two
    post-norm encoder blocks (MultiHeadAttention, residuals, LayerNormalization, a
    rank-3 Dense feed-forward with gelu; the second block causal), mean pooling and
    Dense logits."""
    tokens = keras.Input((steps,), dtype="int32", name="tokens")
    x = L.Embedding(vocab, dim, name="tok_emb")(tokens)
    x = x + _sinusoids(steps, dim)
    for i, causal in enumerate((False, True)):
        attn = L.MultiHeadAttention(num_heads=2, key_dim=8, name=f"mha{i}")(
            x, x, use_causal_mask=causal
        )
        x = L.LayerNormalization(epsilon=1e-6, name=f"ln{i}a")(x + attn)
        ff = L.Dense(32, activation="gelu", name=f"ff{i}a")(x)
        ff = L.Dense(dim, name=f"ff{i}b")(keras.ops.gelu(ff))
        x = L.LayerNormalization(epsilon=1e-6, name=f"ln{i}b")(L.Add(name=f"res{i}")([x, ff]))
    x = L.GlobalAveragePooling1D(name="pool")(x)
    logits = L.Dense(4, name="logits")(x)
    return keras.Model(tokens, logits, name="tiny_transformer")


def test_tiny_transformer_from_keras_file(tmp_path):
    model = tiny_transformer()
    tokens = np.random.default_rng(14).integers(0, 30, size=(3, 10)).astype(np.int32)
    conversion = _assert_file_parity(model, tmp_path, [tokens])
    assert conversion.source.count("rt.MultiHeadAttention(") == 2
    assert "use_causal_mask=True" in conversion.source


def rnn_text_classifier(vocab=40, steps=12):
    """Padded token ids (0 = padding, ``mask_zero``), a bidirectional LSTM over the
    sequence, a GRU reading its outputs (both masked), Dense logits."""
    tokens = keras.Input((steps,), dtype="int32", name="tokens")
    x = L.Embedding(vocab, 12, mask_zero=True, name="emb")(tokens)
    x = L.Bidirectional(L.LSTM(8, return_sequences=True), name="bilstm")(x)
    x = L.GRU(6, name="gru")(x)
    x = L.Dropout(0.2, name="drop")(x)
    logits = L.Dense(3, name="logits")(x)
    return keras.Model(tokens, logits, name="rnn_text_classifier")


def test_rnn_text_classifier_from_keras_file(tmp_path):
    model = rnn_text_classifier()
    tokens = np.random.default_rng(15).integers(1, 40, size=(4, 12)).astype(np.int32)
    tokens[0, 7:] = 0  # padded sentences of different lengths
    tokens[1, 3:] = 0
    tokens[3, 11:] = 0
    conversion = _assert_file_parity(model, tmp_path, [tokens])
    assert conversion.source.count("mask=") == 2
