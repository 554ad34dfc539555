"""The CPU fast paths of ``rt.Conv`` (kgen/runtime/conv.py) against Flax's ``nn.Conv``
and against Keras.

With ``impl="dot"`` a convolution whose kernel is 1 in every spatial dim runs as a matrix
product; a 'valid' or 'same' convolution with a larger kernel runs with its padding
after one spatial dim grown until that output is longer than its input, then cropped,
where ``eigen_pays``, and else a 'valid' one with one zero of padding after each
spatial dim, then cropped; elsewhere, and for every other convolution, it is
``nn.Conv``'s own ("xla").  These tests force each one and compare values, gradients
and parameters.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from helpers import assert_layer_parity

from kgen.runtime import onednn
from kgen.runtime.conv import Conv, conv_impl, eigen_pays, few_channels_pay

CASES = [
    # (input shape without batch, kernel, strides, padding, use_bias)
    ((9, 10, 6), (1, 1), (1, 1), "VALID", True),
    ((9, 10, 6), (1, 1), (2, 2), "VALID", False),
    ((9, 10, 6), (1, 1), (2, 2), "SAME", True),
    ((7, 11, 4), (1, 1), (3, 1), "SAME", True),
    ((13, 3), (1,), (1,), "SAME", True),
    ((13, 3), (1,), (2,), "VALID", False),
    ((6, 7, 5, 2), (1, 1, 1), (1, 2, 1), "SAME", True),
    ((9, 10, 6), (3, 3), (2, 2), "SAME", True),  # neither: nn.Conv's path
    # 'valid' with a kernel > 1: padded by one after each spatial dim, then cropped
    ((9, 10, 6), (3, 3), (1, 1), "VALID", True),
    ((11, 12, 4), (3, 3), (2, 2), "VALID", False),
    ((23, 22, 3), (7, 7), (2, 2), "VALID", True),
    ((10, 9, 4), (3, 2), (3, 2), "VALID", True),
    ((13, 3), (3,), (2,), "VALID", True),
    ((6, 7, 5, 2), (2, 2, 2), (1, 2, 1), "VALID", True),
    # stride 1, 2 x 48 x 48 pixels, 16 features: eigen_pays, one output longer, cropped
    ((48, 48, 16), (3, 3), (1, 1), "SAME", True),
    ((48, 47, 16), (5, 4), (1, 1), "SAME", False),
    ((48, 48, 16), (3, 3), (1, 1), "VALID", True),
    ((47, 49, 16), (1, 7), (1, 1), "SAME", True),
    # 1 to 4 input channels: few_channels_pay, a sum of one-channel slices times kernel rows
    ((12, 11, 3), (3, 3), (1, 1), "SAME", True),
    ((15, 14, 3), (3, 3), (2, 2), "VALID", False),
    ((16, 13, 1), (5, 3), (2, 1), "SAME", True),
    ((10, 9, 2), (2, 4), (1, 3), "VALID", True),
]


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("shape, kernel, strides, padding, use_bias", CASES)
def test_dot_matches_nn_conv(shape, kernel, strides, padding, use_bias):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    reference = nn.Conv(7, kernel, strides=strides, padding=padding, use_bias=use_bias)
    variables = reference.init(jax.random.PRNGKey(0), x)
    variables = jax.tree.map(lambda a: rng.uniform(-1, 1, a.shape).astype(np.float32), variables)
    expected = np.asarray(reference.apply(variables, x))
    cotangent = rng.uniform(-1, 1, expected.shape).astype(np.float32)

    def loss(v, x, module):
        return jnp.sum(module.apply(v, x) * cotangent)

    ref_grads = jax.grad(loss, argnums=(0, 1))(variables, x, reference)
    for impl in ("xla", "dot", "onednn") if onednn.available() else ("xla", "dot"):
        module = Conv(7, kernel, strides=strides, padding=padding, use_bias=use_bias, impl=impl)
        own = module.init(jax.random.PRNGKey(0), x)
        assert jax.tree.map(np.shape, own) == jax.tree.map(np.shape, variables)
        out = np.asarray(jax.jit(module.apply)(variables, x))
        assert out.shape == expected.shape and _rel(out, expected) <= 1e-6, impl
        grads = jax.grad(loss, argnums=(0, 1))(variables, x, module)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            assert _rel(np.asarray(a), np.asarray(b)) <= 1e-5, impl


def test_dot_path_is_a_matrix_product():
    x = jnp.ones((1, 4, 4, 3))
    module = Conv(5, (1, 1), impl="dot")
    variables = module.init(jax.random.PRNGKey(0), x)
    prims = {e.primitive.name for e in jax.make_jaxpr(module.apply)(variables, x).jaxpr.eqns}
    assert "dot_general" in prims and "conv_general_dilated" not in prims


@pytest.mark.parametrize("dilation, groups", [((2, 1), 1), ((1, 1), 2), ((2, 3), 2)])
def test_valid_path_with_dilation_and_groups_is_bitwise_nn_conv(dilation, groups):
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 13, 14, 10)).astype(np.float32))
    kwargs = {"kernel_dilation": dilation, "feature_group_count": groups, "padding": "VALID"}
    reference = nn.Conv(6, (3, 3), strides=(2, 1), **kwargs)
    variables = reference.init(jax.random.PRNGKey(0), x)
    module = Conv(6, (3, 3), strides=(2, 1), impl="dot", **kwargs)
    own = module.init(jax.random.PRNGKey(0), x)  # the same parameters, the same values
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(variables))
    )
    np.testing.assert_array_equal(module.apply(variables, x), reference.apply(variables, x))


def test_valid_path_pads_one_zero_after_each_dim():
    x = jnp.ones((1, 9, 9, 8))
    module = Conv(5, (3, 3), padding="VALID", impl="dot")
    variables = module.init(jax.random.PRNGKey(0), x)
    convs = [
        e for e in jax.make_jaxpr(module.apply)(variables, x).jaxpr.eqns
        if e.primitive.name == "conv_general_dilated"
    ]  # fmt: skip
    assert [tuple(map(tuple, e.params["padding"])) for e in convs] == [((0, 1), (0, 1))]
    assert module.apply(variables, x).shape == (1, 7, 7, 5)


def _conv_paddings(module, x):
    variables = module.init(jax.random.PRNGKey(0), x)
    eqns = jax.make_jaxpr(module.apply)(variables, x).jaxpr.eqns
    convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
    return [tuple(map(tuple, e.params["padding"])) for e in convs], module.apply(variables, x)


@pytest.mark.parametrize(
    "padding, kernel, expected",
    [("SAME", (3, 3), ((1, 1), (1, 2))), ("VALID", (3, 5), ((0, 0), (0, 5)))],
)
def test_eigen_path_makes_the_widest_output_one_longer(padding, kernel, expected):
    # XLA's CPU compiler sends a 2D float32 convolution to YNNPACK unless an output is
    # longer than its input; there Eigen's kernel runs, which measured faster here.
    x = jnp.ones((2, 46, 50, 16))
    paddings, y = _conv_paddings(Conv(5, kernel, padding=padding, impl="dot"), x)
    assert paddings == [expected]
    assert (
        y.shape
        == nn.Conv(5, kernel, padding=padding).init_with_output(jax.random.PRNGKey(0), x)[0].shape
    )


def test_eigen_pays_where_measured():
    x = (8, 56, 56, 64)
    assert eigen_pays(x, (3, 3, 64, 64), (1, 1), 1, jnp.float32)
    assert not eigen_pays(x, (3, 3, 64, 64), (2, 2), 1, jnp.float32)  # strided
    assert not eigen_pays(x, (3, 3, 32, 64), (1, 1), 2, jnp.float32)  # grouped
    assert not eigen_pays(x, (3, 3, 64, 64), (1, 1), 1, jnp.bfloat16)
    assert not eigen_pays((1, 56, 56, 64), (3, 3, 64, 64), (1, 1), 1, jnp.float32)  # few pixels
    assert not eigen_pays((8, 224, 224, 64), (3, 3, 64, 64), (1, 1), 1, jnp.float32)  # VGG's
    assert not eigen_pays((8, 224, 224, 3), (3, 3, 3, 64), (1, 1), 1, jnp.float32)  # 3 features
    assert not eigen_pays((8, 56, 64), (3, 64, 64), (1,), 1, jnp.float32)  # 1D


def _primitives(module, x):
    variables = module.init(jax.random.PRNGKey(0), x)
    return {e.primitive.name for e in jax.make_jaxpr(module.apply)(variables, x).jaxpr.eqns}


@pytest.mark.parametrize("dilation", [(1, 1), (2, 3)])
def test_few_channel_path_is_slices_times_kernel_rows(dilation):
    # XLA's CPU kernels are slowest on an image's first convolution (RGB in): this
    # path writes it as a sum of one-channel slices times kernel rows, which XLA fuses.
    x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 17, 15, 3)).astype(np.float32))
    kwargs = {"strides": (2, 1), "padding": "SAME", "kernel_dilation": dilation}
    module = Conv(6, (3, 3), impl="dot", **kwargs)
    prims = _primitives(module, x)
    assert "conv_general_dilated" not in prims and "dot_general" not in prims
    reference = nn.Conv(6, (3, 3), **kwargs)
    variables = jax.tree.map(
        lambda a: np.random.default_rng(4).uniform(-1, 1, a.shape).astype(np.float32),
        reference.init(jax.random.PRNGKey(0), x),
    )
    assert (
        _rel(np.asarray(module.apply(variables, x)), np.asarray(reference.apply(variables, x)))
        <= 1e-6
    )


def test_few_channels_pay_where_measured():
    f32 = jnp.float32
    assert few_channels_pay((8, 299, 299, 3), (3, 3, 3, 32), (2, 2), 1, f32)  # InceptionV3
    assert few_channels_pay((8, 224, 224, 3), (3, 3, 3, 64), (1, 1), 1, f32)  # VGG16
    assert few_channels_pay((1, 28, 28, 1), (5, 5, 1, 32), (1, 1), 1, f32)  # grey, 25 terms
    assert not few_channels_pay((8, 230, 230, 3), (7, 7, 3, 64), (2, 2), 1, f32)  # 147 terms
    assert not few_channels_pay((8, 224, 224, 3), (4, 4, 3, 96), (4, 4), 1, f32)  # patches
    assert not few_channels_pay((8, 56, 56, 8), (3, 3, 8, 8), (1, 1), 1, f32)  # 8 channels
    assert not few_channels_pay((8, 56, 56, 4), (3, 3, 2, 8), (1, 1), 2, f32)  # grouped
    assert not few_channels_pay((8, 224, 224, 3), (3, 3, 3, 64), (1, 1), 1, jnp.bfloat16)
    assert not few_channels_pay((8, 56, 3), (3, 3, 8), (1,), 1, f32)  # 1D


def test_same_path_off_the_eigen_rule_is_nn_conv_unchanged():
    x = jnp.ones((1, 9, 9, 8))
    paddings, _ = _conv_paddings(Conv(5, (3, 3), padding="SAME", impl="dot"), x)
    assert paddings == [((1, 1), (1, 1))]


def test_bfloat16_stays_bfloat16():
    x = jnp.ones((1, 4, 4, 3), jnp.bfloat16)
    module = Conv(5, (1, 1), impl="dot")
    variables = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16), module.init(jax.random.PRNGKey(0), x)
    )
    assert module.apply(variables, x).dtype == jnp.bfloat16


def test_auto_picks_by_backend(monkeypatch):
    monkeypatch.delenv("KGEN_CONV", raising=False)
    cpu = "auto" if onednn.available() else "dot"  # "auto": per convolution
    assert conv_impl("auto") == (cpu if jax.default_backend() == "cpu" else "xla")
    monkeypatch.setenv("KGEN_CONV", "xla")
    assert conv_impl("auto") == "xla"
    with pytest.raises(ValueError):
        conv_impl("fast")


KERAS_LAYERS = [
    (lambda: keras.layers.Conv2D(8, 1, strides=2, padding="same"), (9, 10, 3)),
    (lambda: keras.layers.Conv2D(8, 1, use_bias=False), (9, 10, 3)),
    (lambda: keras.layers.Conv1D(4, 1, strides=3, padding="valid"), (11, 3)),
    (lambda: keras.layers.Conv3D(4, 1, padding="same"), (4, 5, 6, 2)),
    (lambda: keras.layers.SeparableConv2D(4, 3, strides=2, padding="same"), (9, 10, 3)),
    (lambda: keras.layers.Conv2D(8, 3, strides=2, padding="valid"), (11, 10, 3)),
    (lambda: keras.layers.Conv2D(6, 3, groups=2, dilation_rate=2), (11, 10, 4)),
    (lambda: keras.layers.Conv1D(4, 5, strides=2), (17, 3)),
    (lambda: keras.layers.Conv2D(8, 3, padding="same"), (48, 48, 16)),
    (lambda: keras.layers.Conv2D(8, (3, 5), dilation_rate=2), (48, 50, 16)),
    (lambda: keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2), (13, 12, 3)),
    (lambda: keras.layers.Conv2D(8, 5, strides=2, padding="same"), (15, 16, 1)),
]


@pytest.mark.parametrize("impl", ["xla", "dot", "onednn"])
@pytest.mark.parametrize("make, shape", KERAS_LAYERS)
def test_each_path_matches_keras(make, shape, impl, monkeypatch):
    if impl == "onednn" and not onednn.available():
        pytest.skip("XLA's oneDNN convolution is not available here (not x86-64 CPU)")
    monkeypatch.setenv("KGEN_CONV", impl)
    conversion, _ = assert_layer_parity(make(), shape)
    assert "rt.Conv" in conversion.source or "rt.SeparableConv" in conversion.source


@pytest.mark.parametrize("kernel, padding", [((3, 3), "SAME"), ((3, 5), "VALID"), ((1, 1), "SAME")])
def test_nnx_conv_paths_match_nnx_conv(kernel, padding):
    from flax import nnx

    from kgen.runtime import nnx as rt_nnx

    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 46, 50, 16)).astype(np.float32))
    reference = nnx.Conv(16, 6, kernel, padding=padding, rngs=nnx.Rngs(0))
    own = rt_nnx.Conv(16, 6, kernel, padding=padding, impl="dot", rngs=nnx.Rngs(0))
    expected = np.asarray(reference(x))
    assert _rel(np.asarray(own(x)), expected) <= 1e-6


@pytest.mark.parametrize("groups, padding, strides", [(3, "SAME", (1, 1)), (4, "VALID", (2, 2))])
def test_grouped_convolution_runs_group_by_group(groups, padding, strides):
    x = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (2, 11, 12, 24)).astype(np.float32))
    kwargs = {"feature_group_count": groups, "padding": padding, "strides": strides}
    reference = nn.Conv(8 * groups // 2, (3, 3), **kwargs)
    variables = reference.init(jax.random.PRNGKey(0), x)
    module = Conv(8 * groups // 2, (3, 3), impl="dot", **kwargs)
    np.testing.assert_allclose(
        module.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-6
    )
    eqns = jax.make_jaxpr(module.apply)(variables, x).jaxpr.eqns
    convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
    assert len(convs) == groups and all(e.params["feature_group_count"] == 1 for e in convs)
    grads = jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2))(variables)
    expected = jax.grad(lambda v: jnp.sum(reference.apply(v, x) ** 2))(variables)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
