"""One-layer parity tests for kgen/codegen/lowerings/convolutional.py."""

import keras
import pytest
from helpers import assert_layer_parity, one_layer_model

from kgen.codegen import generate
from kgen.errors import UnsupportedError
from kgen.tracer import trace


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": 4, "kernel_size": 3},
        {"filters": 4, "kernel_size": 3, "padding": "same"},
        {"filters": 4, "kernel_size": (3, 2), "strides": 2, "padding": "same"},
        {"filters": 4, "kernel_size": 3, "strides": (2, 1), "padding": "valid"},
        {"filters": 4, "kernel_size": 3, "dilation_rate": 2, "padding": "same"},
        {"filters": 6, "kernel_size": 3, "groups": 3, "padding": "same", "use_bias": False},
        {"filters": 4, "kernel_size": 1, "activation": "relu"},
    ],
)
def test_conv2d(kwargs):
    assert_layer_parity(keras.layers.Conv2D(**kwargs), (9, 9, 6))


@pytest.mark.parametrize(
    "kwargs",
    [
        {
            "filters": 4,
            "kernel_size": 3,
            "strides": 2,
            "dilation_rate": 1,
            "groups": 2,
            "padding": "valid",
        },
        {
            "filters": 6,
            "kernel_size": (2, 3),
            "dilation_rate": (2, 1),
            "groups": 6,
            "padding": "same",
        },
        {"filters": 4, "kernel_size": 4, "strides": 3, "padding": "same", "activation": "gelu"},
    ],
)
def test_conv2d_more(kwargs):
    assert_layer_parity(keras.layers.Conv2D(**kwargs), (10, 11, 6))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": 4, "kernel_size": 3},
        {"filters": 4, "kernel_size": 3, "padding": "same", "strides": 2},
        {"filters": 4, "kernel_size": 4, "strides": 3, "padding": "valid", "use_bias": False},
        {
            "filters": 4,
            "kernel_size": 3,
            "dilation_rate": 2,
            "padding": "same",
            "activation": "tanh",
        },
        {"filters": 4, "kernel_size": 3, "padding": "causal"},
        {"filters": 4, "kernel_size": 2, "padding": "causal", "dilation_rate": 3},
        {"filters": 6, "kernel_size": 3, "padding": "causal", "groups": 3},
    ],
)
def test_conv1d(kwargs):
    assert_layer_parity(keras.layers.Conv1D(**kwargs), (11, 6))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3},
        {"kernel_size": 3, "depth_multiplier": 2, "padding": "same"},
        {"kernel_size": (3, 2), "depth_multiplier": 3, "strides": 2, "padding": "same"},
        # TF's depthwise kernel needs equal strides.
        {"kernel_size": 3, "strides": 2, "padding": "valid", "use_bias": False},
        {
            "kernel_size": 3,
            "depth_multiplier": 2,
            "dilation_rate": 2,
            "padding": "same",
            "activation": "relu6",
        },
        {"kernel_size": 4, "strides": 3, "padding": "same"},
    ],
)
def test_depthwise_conv2d(kwargs):
    assert_layer_parity(keras.layers.DepthwiseConv2D(**kwargs), (9, 10, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3},
        {"kernel_size": 3, "depth_multiplier": 2, "strides": 2, "padding": "same"},
        # Keras (TF backend) rejects padding='causal' for depthwise and separable convs.
        {
            "kernel_size": 2,
            "depth_multiplier": 3,
            "dilation_rate": 2,
            "padding": "same",
            "use_bias": False,
        },
    ],
)
def test_depthwise_conv1d(kwargs):
    assert_layer_parity(keras.layers.DepthwiseConv1D(**kwargs), (11, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": 5, "kernel_size": 3},
        {"filters": 5, "kernel_size": 3, "depth_multiplier": 2, "padding": "same"},
        {
            "filters": 4,
            "kernel_size": (3, 2),
            "depth_multiplier": 3,
            "strides": 2,
            "padding": "same",
        },
        {"filters": 4, "kernel_size": 3, "dilation_rate": 2, "padding": "same", "use_bias": False},
        {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "valid", "activation": "relu"},
    ],
)
def test_separable_conv2d(kwargs):
    assert_layer_parity(keras.layers.SeparableConv2D(**kwargs), (9, 10, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": 5, "kernel_size": 3},
        {"filters": 4, "kernel_size": 3, "depth_multiplier": 2, "strides": 2, "padding": "same"},
        {"filters": 4, "kernel_size": 2, "dilation_rate": 2, "padding": "same", "use_bias": False},
        {"filters": 4, "kernel_size": 3, "padding": "valid", "activation": "swish"},
    ],
)
def test_separable_conv1d(kwargs):
    assert_layer_parity(keras.layers.SeparableConv1D(**kwargs), (11, 3))


def _traced_conv_models():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
    x = keras.layers.Conv2D(4, 3, name="head_conv")(x)
    return trace(keras.Model(inputs, x))


def _node(graph, name):
    (nid,) = [n for n, d in graph.nodes(data=True) if d["name"] == name]
    return graph.nodes[nid]


def test_unsupported_config_value_names_layer_field_and_supported_value():
    graph = _traced_conv_models()
    _node(graph, "stem_conv")["config"]["data_format"] = "channels_first"
    with pytest.raises(UnsupportedError) as info:
        generate(graph)
    message = str(info.value)
    assert "'stem_conv' (Conv2D)" in message
    assert "data_format='channels_first'" in message
    assert "supported: 'channels_last'" in message
    assert "head_conv" not in message


def test_unknown_non_default_config_field_is_an_error():
    graph = _traced_conv_models()
    _node(graph, "stem_conv")["config"]["data_format"] = "channels_first"
    _node(graph, "head_conv")["config"]["quantum_mode"] = "entangled"
    # Unknown fields at a default-like value (None, False, empty) are not errors.
    _node(graph, "head_conv")["config"]["future_flag"] = None
    with pytest.raises(UnsupportedError) as info:
        generate(graph)
    message = str(info.value)
    # Both problems are reported together, each naming its layer and field.
    assert "2 unsupported config(s)" in message
    assert "'head_conv' (Conv2D): unknown config field quantum_mode='entangled'" in message
    assert "stem_conv" in message
    assert "future_flag" not in message


def test_required_config_value_names_the_supported_value():
    graph = trace(one_layer_model(keras.layers.Conv2D(4, 3, name="lora_conv"), (6, 6, 3)))
    _node(graph, "lora_conv")["config"]["lora_rank"] = 4
    with pytest.raises(
        UnsupportedError,
        match=r"'lora_conv' \(Conv2D\): lora_rank=4 is not "
        r"supported \(supported: None\)",
    ):
        generate(graph)
