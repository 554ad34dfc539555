"""The depthwise fast path (kgen/runtime/conv.py) against the plain grouped convolution
and against Keras.

On CPU the generated module sums shifted slices ("shift"); elsewhere it keeps XLA's
grouped convolution ("xla").  Both read the same parameters; these tests force each
one and compare them with each other and with Keras, over odd sizes, strides,
dilations, padding modes and depth multipliers.
"""

import jax
import keras
import numpy as np
import pytest
from helpers import assert_layer_parity

from kgen.runtime.conv import DepthwiseConv, depthwise_conv, depthwise_impl

CASES = [
    # (input shape without batch, kernel, strides, dilation, padding, multiplier)
    ((9, 10, 3), (3, 3), (1, 1), (1, 1), "SAME", 1),
    ((9, 10, 3), (3, 3), (2, 2), (1, 1), "SAME", 1),
    ((9, 10, 3), (3, 3), (2, 2), (1, 1), "VALID", 2),
    ((7, 11, 4), (5, 3), (3, 1), (1, 1), "SAME", 3),
    ((12, 12, 2), (3, 3), (1, 1), (2, 3), "SAME", 1),
    ((12, 13, 2), (2, 4), (2, 3), (2, 1), "VALID", 2),
    ((8, 8, 5), (7, 7), (1, 1), (1, 1), "SAME", 1),  # ConvNeXt's kernel
    ((8, 8, 5), (1, 1), (1, 1), (1, 1), "VALID", 1),
    ((13, 3), (3,), (1,), (1,), "SAME", 1),
    ((13, 3), (3,), (2,), (1,), "VALID", 2),
    ((13, 3), (2,), (1,), (3,), "CAUSAL", 1),
    ((6, 7, 5, 2), (3, 2, 3), (1, 2, 1), (1, 1, 2), "SAME", 1),
    ((9, 10, 3), (3, 3), (1, 1), (1, 1), ((2, 0), (1, 3)), 1),
]


@pytest.mark.parametrize("shape, kernel, strides, dilation, padding, mult", CASES)
def test_shift_matches_grouped_convolution(shape, kernel, strides, dilation, padding, mult):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    k = rng.uniform(-1, 1, (*kernel, 1, shape[-1] * mult)).astype(np.float32)
    results = {
        impl: np.asarray(
            jax.jit(
                lambda x, k, impl=impl: depthwise_conv(
                    x, k, strides=strides, padding=padding, dilation=dilation, impl=impl
                )
            )(x, k)
        )
        for impl in ("xla", "shift")
    }
    assert results["xla"].shape == results["shift"].shape
    rel = np.max(np.abs(results["xla"] - results["shift"])) / np.max(np.abs(results["xla"]))
    assert rel <= 1e-6, rel


def test_module_has_nn_conv_parameters():
    """The fast path changes computation, never the weight format."""
    import flax.linen as nn

    x = np.zeros((1, 6, 6, 3), np.float32)
    ours = DepthwiseConv(6, (3, 3), padding="SAME").init(jax.random.PRNGKey(0), x)
    theirs = nn.Conv(6, (3, 3), feature_group_count=3).init(jax.random.PRNGKey(0), x)
    shapes = jax.tree_util.tree_map(lambda a: a.shape, (ours, theirs))
    assert shapes[0] == shapes[1]


def test_auto_picks_by_backend(monkeypatch):
    monkeypatch.delenv("KGEN_DEPTHWISE", raising=False)
    expected = "shift" if jax.default_backend() == "cpu" else "xla"
    assert depthwise_impl("auto") == expected
    monkeypatch.setenv("KGEN_DEPTHWISE", "xla")
    assert depthwise_impl("auto") == "xla"
    assert depthwise_impl("shift") == "shift"
    with pytest.raises(ValueError):
        depthwise_impl("fast")


KERAS_LAYERS = [
    (lambda: keras.layers.DepthwiseConv2D(3, strides=2, padding="same"), (9, 10, 3)),
    (lambda: keras.layers.DepthwiseConv2D((3, 2), depth_multiplier=3, padding="valid"), (9, 10, 3)),
    (lambda: keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same"), (11, 9, 2)),
    (
        lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=2, strides=2, padding="same"),
        (11, 3),
    ),
    (lambda: keras.layers.SeparableConv2D(4, 3, strides=2, padding="same"), (9, 10, 3)),
    (lambda: keras.layers.Conv2D(6, 7, groups=6, padding="same"), (9, 9, 6)),
    (lambda: keras.layers.Conv2D(12, 3, groups=6, strides=2, padding="valid"), (9, 9, 6)),
]


@pytest.mark.parametrize("impl", ["xla", "shift"])
@pytest.mark.parametrize("make, shape", KERAS_LAYERS)
def test_each_path_matches_keras(make, shape, impl, monkeypatch):
    monkeypatch.setenv("KGEN_DEPTHWISE", impl)
    conversion, _ = assert_layer_parity(make(), shape)
    assert "rt.DepthwiseConv" in conversion.source or "rt.SeparableConv" in conversion.source
