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

tf = pytest.importorskip("tensorflow")
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


# --- the rest of the layer set, as tf.keras builds it ----------------------------------
# Each entry: (layer factory taking the tf.keras layers module, *input shapes).
LAYERS = {
    "Conv1D_causal_dil": (lambda L: L.Conv1D(4, 3, padding="causal", dilation_rate=2), (9, 3)),
    "Conv2D_groups_same_stride": (
        lambda L: L.Conv2D(4, 3, strides=2, padding="same", groups=2, activation="swish"),
        (9, 9, 4),
    ),
    "Conv3D": (lambda L: L.Conv3D(3, 2, padding="same"), (4, 5, 5, 2)),
    "Conv2DTranspose_same": (
        lambda L: L.Conv2DTranspose(3, 3, strides=2, padding="same"),
        (5, 5, 2),
    ),
    "Conv2DTranspose_outpad": (
        lambda L: L.Conv2DTranspose(3, 3, strides=2, output_padding=1),
        (5, 5, 2),
    ),
    "Conv1DTranspose": (lambda L: L.Conv1DTranspose(3, 3, strides=2, padding="same"), (6, 2)),
    "Conv3DTranspose": (lambda L: L.Conv3DTranspose(2, 2, strides=2), (3, 3, 3, 2)),
    "SeparableConv2D": (
        lambda L: L.SeparableConv2D(4, 3, depth_multiplier=2, padding="same", strides=2),
        (9, 9, 3),
    ),
    "SeparableConv1D": (lambda L: L.SeparableConv1D(4, 3, padding="same"), (9, 3)),
    "DepthwiseConv1D": (lambda L: L.DepthwiseConv1D(3, depth_multiplier=2, padding="same"), (9, 3)),
    "DepthwiseConv2D_dil": (
        lambda L: L.DepthwiseConv2D(3, dilation_rate=2, padding="same"),
        (9, 9, 3),
    ),
    "MaxPool2D_same": (lambda L: L.MaxPooling2D(3, strides=2, padding="same"), (9, 9, 3)),
    "AvgPool2D_same": (lambda L: L.AveragePooling2D(3, strides=2, padding="same"), (9, 9, 3)),
    "AvgPool1D_same": (lambda L: L.AveragePooling1D(3, strides=2, padding="same"), (9, 3)),
    "AvgPool3D_same": (lambda L: L.AveragePooling3D(2, padding="same"), (5, 5, 5, 2)),
    "MaxPool1D": (lambda L: L.MaxPooling1D(2), (9, 3)),
    "GAP2D_keepdims": (lambda L: L.GlobalAveragePooling2D(keepdims=True), (5, 5, 3)),
    "GMP1D": (lambda L: L.GlobalMaxPooling1D(), (5, 3)),
    "GMP3D": (lambda L: L.GlobalMaxPooling3D(), (3, 3, 3, 2)),
    "BN_axis1": (lambda L: L.BatchNormalization(axis=1), (3, 5, 5)),
    "BN_noscale": (
        lambda L: L.BatchNormalization(scale=False, center=False, epsilon=0.01),
        (5, 5, 3),
    ),
    "BN_2d": (lambda L: L.BatchNormalization(momentum=0.9), (6,)),
    "LayerNorm": (lambda L: L.LayerNormalization(axis=[1, 2]), (4, 5, 3)),
    "LayerNorm_noscale": (lambda L: L.LayerNormalization(scale=False, epsilon=1e-5), (4, 5)),
    "GroupNorm": (lambda L: L.GroupNormalization(groups=2), (4, 4, 6)),
    "UnitNorm": (lambda L: L.UnitNormalization(axis=-1), (4, 5)),
    "Normalization": (
        lambda L: L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0]),
        (4, 3),
    ),
    "Normalization_invert": (
        lambda L: L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0], invert=True),
        (4, 3),
    ),
    "Dense_act": (lambda L: L.Dense(4, activation="gelu"), (5, 3)),
    "Dense_selu": (lambda L: L.Dense(4, activation="selu", use_bias=False), (3,)),
    "Dense_softplus": (lambda L: L.Dense(4, activation="softplus"), (3,)),
    "Dense_exp": (lambda L: L.Dense(4, activation="exponential"), (3,)),
    "Dense_hard_sigmoid": (lambda L: L.Dense(4, activation="hard_sigmoid"), (3,)),
    "Dense_softsign": (lambda L: L.Dense(4, activation="softsign"), (3,)),
    "Dense_mish": (lambda L: L.Dense(4, activation="mish"), (3,)),
    "Dense_relu6": (lambda L: L.Dense(4, activation="relu6"), (3,)),
    "Dense_elu": (lambda L: L.Dense(4, activation="elu"), (3,)),
    "Dense_tanh": (lambda L: L.Dense(4, activation="tanh"), (3,)),
    "Cropping2D": (lambda L: L.Cropping2D(((1, 2), (0, 1))), (6, 6, 2)),
    "Cropping1D": (lambda L: L.Cropping1D((1, 2)), (6, 2)),
    "Cropping3D": (lambda L: L.Cropping3D(1), (4, 4, 4, 2)),
    "ZeroPadding2D": (lambda L: L.ZeroPadding2D(((1, 2), (0, 1))), (4, 4, 2)),
    "ZeroPadding1D": (lambda L: L.ZeroPadding1D(2), (4, 2)),
    "ZeroPadding3D": (lambda L: L.ZeroPadding3D(1), (3, 3, 3, 2)),
    "UpSampling2D_bilinear": (lambda L: L.UpSampling2D(2, interpolation="bilinear"), (4, 4, 2)),
    "UpSampling2D": (lambda L: L.UpSampling2D((2, 3)), (4, 4, 2)),
    "UpSampling1D": (lambda L: L.UpSampling1D(3), (4, 2)),
    "UpSampling3D": (lambda L: L.UpSampling3D(2), (2, 2, 2, 2)),
    "Resizing_bilinear": (lambda L: L.Resizing(7, 5), (4, 4, 2)),
    "Resizing_nearest": (lambda L: L.Resizing(7, 5, interpolation="nearest"), (4, 4, 2)),
    "Resizing_aspect": (lambda L: L.Resizing(4, 6, crop_to_aspect_ratio=True), (8, 8, 2)),
    "Resizing_bicubic": (lambda L: L.Resizing(7, 5, interpolation="bicubic"), (4, 4, 2)),
    "Rescaling": (lambda L: L.Rescaling(1 / 127.5, offset=-1), (4, 4, 2)),
    "CenterCrop": (lambda L: L.CenterCrop(3, 2), (5, 5, 2)),
    "CenterCrop_up": (lambda L: L.CenterCrop(6, 6), (4, 5, 2)),
    "Reshape": (lambda L: L.Reshape((-1, 2)), (4, 4)),
    "Permute": (lambda L: L.Permute((2, 1)), (4, 3)),
    "RepeatVector": (lambda L: L.RepeatVector(3), (4,)),
    "Flatten": (lambda L: L.Flatten(), (4, 3, 2)),
    "PReLU": (lambda L: L.PReLU(shared_axes=[1, 2]), (4, 4, 3)),
    "ELU": (lambda L: L.ELU(0.5), (4,)),
    "ReLU_full": (lambda L: L.ReLU(max_value=0.5, negative_slope=0.1, threshold=0.1), (4,)),
    "Softmax_axis": (lambda L: L.Softmax(axis=1), (4, 3)),
    "LeakyReLU_default": (lambda L: L.LeakyReLU(), (4,)),
    "Activation_hard_sigmoid": (lambda L: L.Activation("hard_sigmoid"), (4,)),
    "Activation_gelu": (lambda L: L.Activation("gelu"), (4,)),
    "Activation_swish": (lambda L: L.Activation("swish"), (4,)),
    "Embedding": (lambda L: L.Embedding(10, 3, input_length=4), (4,)),
    "TD_conv": (lambda L: L.TimeDistributed(L.Conv2D(3, 2)), (3, 5, 5, 2)),
    "GaussianNoise": (lambda L: L.GaussianNoise(0.1), (4,)),
    "SpatialDropout2D": (lambda L: L.SpatialDropout2D(0.2), (4, 4, 2)),
    "AlphaDropout": (lambda L: L.AlphaDropout(0.2), (4,)),
    "ActivityRegularization": (lambda L: L.ActivityRegularization(0.1), (4,)),
    "Identity": (lambda L: L.Identity(), (4,)),
    "Conv2D": (lambda L: L.Conv2D(4, 3), (6, 6, 3)),
    "MaxPool3D": (lambda L: L.MaxPooling3D(2, padding="same"), (3, 3, 3, 2)),
    "GAP1D": (lambda L: L.GlobalAveragePooling1D(), (5, 3)),
    "GAP3D": (lambda L: L.GlobalAveragePooling3D(), (3, 3, 3, 2)),
    "GMP2D": (lambda L: L.GlobalMaxPooling2D(keepdims=True), (3, 3, 2)),
    "Dropout": (lambda L: L.Dropout(0.3), (4,)),
    "GaussianDropout": (lambda L: L.GaussianDropout(0.3), (4,)),
    "SpatialDropout1D": (lambda L: L.SpatialDropout1D(0.3), (4, 2)),
    "SpatialDropout3D": (lambda L: L.SpatialDropout3D(0.3), (2, 2, 2, 2)),
    "Add": (lambda L: L.Add(), (4, 3), (4, 3)),
    "Subtract": (lambda L: L.Subtract(), (4, 3), (4, 3)),
    "Multiply": (lambda L: L.Multiply(), (4, 3), (4, 3)),
    "Average": (lambda L: L.Average(), (4, 3), (4, 3)),
    "Maximum": (lambda L: L.Maximum(), (4, 3), (4, 3)),
    "Minimum": (lambda L: L.Minimum(), (4, 3), (4, 3)),
    "Concatenate": (lambda L: L.Concatenate(axis=1), (4, 3), (2, 3)),
    "Dot": (lambda L: L.Dot(axes=(2, 2), normalize=True), (4, 3), (5, 3)),
    # tf.keras only; every implementation stores the kernel differently
    "LocallyConnected1D": (lambda L: L.LocallyConnected1D(4, 3), (7, 2)),
    "LocallyConnected1D_impl2_strided": (
        lambda L: L.LocallyConnected1D(4, 3, strides=2, implementation=2, activation="relu"),
        (8, 2),
    ),
    "LocallyConnected1D_impl3": (
        lambda L: L.LocallyConnected1D(3, 2, strides=2, implementation=3, use_bias=False),
        (7, 3),
    ),
    "LocallyConnected2D": (lambda L: L.LocallyConnected2D(4, (3, 2)), (6, 5, 2)),
    "LocallyConnected2D_impl1_strided": (
        lambda L: L.LocallyConnected2D(3, 3, strides=(2, 1), activation="tanh"),
        (7, 6, 2),
    ),
    "LocallyConnected2D_impl2": (
        lambda L: L.LocallyConnected2D(4, (2, 3), strides=(1, 2), implementation=2),
        (5, 7, 3),
    ),
    "LocallyConnected2D_impl3": (
        lambda L: L.LocallyConnected2D(3, 2, strides=2, implementation=3, use_bias=False),
        (6, 5, 2),
    ),
}


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer(case):
    make, *shapes = LAYERS[case]
    inputs = None
    if case == "Embedding":
        inputs = [np.random.default_rng(0).integers(0, 10, (2, 4)).astype("float32")]
    tf_keras_layer_parity(make, *shapes, inputs=inputs)


def test_every_tf_keras_lowering_has_a_case_here():
    """Every layer class kgen lowers for tf.keras is built by tf.keras in a parity case
    of this module."""
    from kgen.codegen.registry import registered

    lowered = {s.class_name for s in registered() if s.kind == "layer" and "tf_keras" in s.sources}
    built = set()

    def collect(layer):
        built.add(type(layer).__name__)
        for attr in ("layer", "forward_layer", "backward_layer"):
            if isinstance(getattr(layer, attr, None), L.Layer):
                collect(getattr(layer, attr))

    factories = [make(L) for make, *_ in LAYERS.values()]
    factories += [make(L) for make in (*RECURRENT.values(), *AUGMENTATION.values())]
    for layer in factories:
        collect(layer)
    elsewhere = {  # built inside model functions of the other sections
        "MultiHeadAttention",
        "Attention",
        "AdditiveAttention",
        "Masking",
        "TimeDistributed",
        "ThresholdedReLU",
        "EinsumDense",
    }
    assert lowered - built - elsewhere == set()


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
    "tf_op_drops_it": (lambda a: L.LSTM(3)(tf.nn.relu(_embed(a)) * 2.0), (7,)),
}


@pytest.mark.parametrize("case", sorted(MASKED))
def test_embedding_mask_zero(case):
    fn, shape = MASKED[case]
    conversion, _ = assert_parity(_model(fn, shape), inputs=[_tokens()])
    # tf.keras drops the mask at layers without mask support and at TF ops
    assert ("_mask = " in conversion.source) != case.endswith("drops_it")


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


def test_locally_connected_same_padding_is_refused():
    from kgen import convert
    from kgen.errors import UnsupportedError

    model = _model(
        lambda x: L.LocallyConnected2D(3, 3, padding="same", implementation=2)(x), (5, 5, 2)
    )
    with pytest.raises(UnsupportedError, match="padding='same'"):
        convert(model)
