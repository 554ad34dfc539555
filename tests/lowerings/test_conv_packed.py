"""Convolution kernels packed in oneDNN's layout for inference (``kgen.runtime.pack``,
``kgen.runtime.onednn.conv_packed``): the probe that finds the layout, values and
derivatives against XLA's convolution, the collection a module reads, what happens at
another batch size or with a stale or foreign packed kernel, and Keras parity of a
converted model run with packed kernels."""

import platform

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import conv_operands, rel_error

from kgen import runtime as rt
from kgen.runtime import onednn
from kgen.runtime.conv import PACKED, Conv

X86 = platform.machine().lower() in ("x86_64", "amd64")
pytestmark = pytest.mark.skipif(
    not X86, reason="XLA's oneDNN convolution is an x86-64 jaxlib feature"
)

# (input shape, kernel shape, strides, pads, dilation): odd sizes, strides, uneven and
# no padding, dilation, 1 to 3 spatial dims, output features not a multiple of 16, and
# the shapes oneDNN blocks differently at batch 1 and 8 (ResNet50V2's 1x1 -> 1024).
CASES = [
    ((2, 9, 10, 6), (3, 3, 6, 7), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((2, 11, 12, 4), (3, 3, 4, 5), (2, 2), ((0, 1), (0, 1)), (1, 1)),
    ((1, 23, 22, 3), (7, 7, 3, 70), (2, 2), ((3, 3), (2, 3)), (1, 1)),
    ((2, 13, 14, 10), (3, 3, 10, 33), (2, 1), ((2, 2), (0, 4)), (2, 3)),
    ((2, 9, 10, 6), (1, 1, 6, 100), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    ((1, 14, 14, 256), (1, 1, 256, 1024), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((8, 14, 14, 256), (1, 1, 256, 1024), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((2, 17, 3), (5, 3, 40), (2,), ((0, 0),), (1,)),
    ((1, 6, 7, 5, 2), (2, 2, 2, 2, 20), (1, 2, 1), ((1, 0), (0, 1), (1, 1)), (1, 1, 1)),
]


def _needs_onednn():
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")


@pytest.mark.parametrize("x_shape, k_shape, strides, pads, dilation", CASES)
def test_packed_call_matches_xla(x_shape, k_shape, strides, pads, dilation):
    _needs_onednn()
    block = onednn.packed_block(x_shape, k_shape, strides, pads, dilation)
    assert block is not None, "oneDNN's layout for this convolution was not found"
    x, kernel = conv_operands(x_shape, k_shape)
    packed = onednn.pack(kernel, block)
    assert packed.shape == onednn.packed_shape(k_shape, block)
    args = (strides, pads, dilation)
    got = jax.jit(lambda x, p, k: onednn.conv_packed(x, p, k, *args))(x, packed, kernel)
    want = onednn.plain_conv(x, kernel, *args)
    assert rel_error(got, want) <= 1e-5

    def loss(f):
        return lambda x, k: jnp.sum(f(x, k) ** 2)

    packed_loss = loss(lambda x, k: onednn.conv_packed(x, onednn.pack(k, block), k, *args))
    got = jax.jit(jax.grad(packed_loss, argnums=(0, 1)))(x, kernel)
    want = jax.grad(loss(lambda x, k: onednn.plain_conv(x, k, *args)), argnums=(0, 1))(x, kernel)
    for a, b in zip(got, want):
        assert rel_error(a, b) <= 1e-5


def test_pack_layout():
    kernel = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
    packed = np.asarray(onednn.pack(kernel, 4))
    assert packed.shape == (2, 2, 3, 4, 4)
    for o in range(5):
        assert np.array_equal(packed[o // 4, :, :, :, o % 4], np.asarray(kernel[..., o]))
    assert not packed[1, :, :, :, 1:].any()  # output features 5 to 7: zeros


def test_forward_under_differentiation_ignores_a_stale_packed_kernel():
    _needs_onednn()
    x_shape, k_shape, strides, pads, dilation = CASES[0]
    block = onednn.packed_block(x_shape, k_shape, strides, pads, dilation)
    x, kernel = conv_operands(x_shape, k_shape)
    stale = onednn.pack(kernel * 2, block)
    args = (strides, pads, dilation)
    y, dy = jax.jvp(
        lambda x: onednn.conv_packed(x, stale, kernel, *args), (x,), (jnp.ones_like(x),)
    )
    assert rel_error(y, onednn.plain_conv(x, kernel, *args)) <= 1e-5
    assert rel_error(dy, onednn.plain_conv(jnp.ones_like(x), kernel, *args)) <= 1e-5


def test_vmap_of_the_packed_call():
    _needs_onednn()
    x_shape, k_shape, strides, pads, dilation = CASES[1]
    args = (strides, pads, dilation)
    xs = jnp.stack([conv_operands(x_shape, k_shape, seed)[0] for seed in range(3)])
    _, kernel = conv_operands(x_shape, k_shape)
    joined = (3 * x_shape[0], *x_shape[1:])
    block = onednn.packed_block(joined, k_shape, strides, pads, dilation)
    packed = onednn.pack(kernel, block)
    got = jax.vmap(lambda x: onednn.conv_packed(x, packed, kernel, *args))(xs)
    want = jax.vmap(lambda x: onednn.plain_conv(x, kernel, *args))(xs)
    assert rel_error(got, want) <= 1e-5
    kernels = jnp.stack([kernel, -kernel])
    got = jax.vmap(lambda k: onednn.conv_packed(xs[0], onednn.pack(k, block), k, *args))(kernels)
    want = jax.vmap(lambda k: onednn.plain_conv(xs[0], k, *args))(kernels)
    assert rel_error(got, want) <= 1e-5


def test_probe_declines_what_it_cannot_pack(monkeypatch):
    _needs_onednn()
    # one input feature: the probe's marker has nowhere to go
    assert onednn.packed_block((1, 8, 8, 1), (3, 3, 1, 4), (1, 1), ((1, 1),) * 2, (1, 1)) is None
    # shapes that do not fit together: the check fails and says no, without raising
    assert onednn.packed_block((1, 8, 8, 5), (3, 3, 4, 4), (1, 1), ((1, 1),) * 2, (1, 1)) is None
    # a layout oneDNN does not use: the check against XLA's convolution catches it
    pack = onednn._pack
    monkeypatch.setattr(
        onednn, "_pack", lambda xp, kernel, block: pack(xp, kernel[..., ::-1], block)
    )
    onednn.packed_block.cache_clear()
    try:
        assert onednn.packed_block(*CASES[0]) is None
    finally:
        onednn.packed_block.cache_clear()


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(Conv(24, (3, 3), padding="SAME", impl="onednn", name="stem")(x))
        x = Conv(40, (1, 1), strides=2, impl="onednn", name="down")(x)
        x = Conv(8, (3, 3), feature_group_count=4, padding="SAME", impl="onednn")(x)
        return jnp.mean(x, axis=(1, 2))


def _net_variables(x):
    variables = _Net().init(jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(3)
    return jax.tree.map(lambda a: jnp.asarray(rng.uniform(-1, 1, a.shape), a.dtype), variables)


def test_pack_makes_the_collection_the_module_reads():
    _needs_onednn()
    x = conv_operands((4, 16, 16, 5), (1,))[0]
    variables = _net_variables(x)
    packed = rt.pack(_Net(), variables, x)
    assert set(packed) == {"params", PACKED}
    assert set(packed[PACKED]) == {"stem", "down"}  # the grouped one keeps its kernel
    assert packed["params"] is variables["params"]
    assert packed[PACKED]["stem"]["kernel"].ndim == 5
    apply = jax.jit(_Net().apply)
    want = apply(variables, x)
    assert rel_error(apply(packed, x), want) <= 1e-5
    lowered = jax.jit(_Net().apply).lower(packed, x).as_text()
    assert lowered.count("weights_prepacked") == 2
    # packing again replaces the collection, not adds to it
    assert jax.tree.map(np.shape, rt.pack(_Net(), packed, x)) == jax.tree.map(np.shape, packed)
    # another batch size: right whatever oneDNN does there
    x2 = conv_operands((1, 16, 16, 5), (1,), seed=4)[0]
    assert rel_error(apply(packed, x2), apply(variables, x2)) <= 1e-5


def test_packed_kernel_for_another_layout_is_not_used():
    _needs_onednn()
    x = conv_operands((2, 16, 16, 5), (1,))[0]
    variables = _net_variables(x)
    packed = rt.pack(_Net(), variables, x)
    block = packed[PACKED]["stem"]["kernel"].shape[-1]
    other = 16 if block != 16 else 32
    kernel = variables["params"]["stem"]["kernel"]
    foreign = {**packed[PACKED], "stem": {"kernel": onednn.pack(kernel, other)}}
    foreign = {**packed, PACKED: foreign}
    lowered = jax.jit(_Net().apply).lower(foreign, x).as_text()
    assert lowered.count("weights_prepacked") == 1
    assert rel_error(jax.jit(_Net().apply)(foreign, x), _Net().apply(variables, x)) <= 1e-5


def test_gradients_with_packed_variables_are_the_plain_ones():
    _needs_onednn()
    x = conv_operands((2, 16, 16, 5), (1,))[0]
    variables = _net_variables(x)
    packed = rt.pack(_Net(), variables, x)

    def loss(params, collections):
        return jnp.sum(_Net().apply({**collections, "params": params}, x) ** 2)

    got = jax.grad(loss)(variables["params"], {PACKED: packed[PACKED]})
    want = jax.grad(loss)(variables["params"], {})
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert rel_error(a, b) <= 1e-5


def test_export_and_init_do_not_see_packing():
    _needs_onednn()
    x = conv_operands((2, 16, 16, 5), (1,))[0]
    variables = _net_variables(x)
    assert set(_Net().init(jax.random.PRNGKey(0), x)) == {"params"}
    packed = rt.pack(_Net(), variables, x)
    exported = jax.export.export(jax.jit(_Net().apply))(packed, x)
    assert onednn.TARGET not in exported.mlir_module()


def test_pack_without_onednn_returns_the_variables(monkeypatch):
    x = conv_operands((2, 16, 16, 5), (1,))[0]
    variables = _net_variables(x)
    monkeypatch.setattr(onednn, "available", lambda: False)
    assert rt.pack(_Net(), variables, x) == variables


def test_converted_model_with_packed_kernels_matches_keras(monkeypatch):
    """A converted Keras CNN, every variable random, run with packed kernels at two batch
    sizes: against Keras itself.  Its convolutions are too small for oneDNN to pay, so
    ``KGEN_CONV=onednn`` sends them there."""
    _needs_onednn()
    monkeypatch.setenv("KGEN_CONV", "onednn")
    import keras

    from kgen.api import convert

    inputs = keras.Input((20, 20, 3))
    y = keras.layers.Conv2D(32, 3, strides=2, padding="same")(inputs)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    z = keras.layers.Conv2D(64, 1)(y)
    z = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(z)
    y = keras.layers.Add()([keras.layers.Conv2D(64, 1)(y), z])
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = keras.Model(inputs, keras.layers.Dense(10)(y))
    rng = np.random.default_rng(5)
    for var in model.variables:
        var.assign(rng.uniform(0.5, 1.5, var.shape).astype(np.float32))
    conversion = convert(model)
    module, variables = conversion.module, conversion.variables
    for batch in (8, 1):
        x = rng.uniform(-1, 1, (batch, 20, 20, 3)).astype(np.float32)
        packed = rt.pack(module, variables, x)
        assert len(packed[PACKED]) == 4
        got = jax.jit(module.apply)(packed, x)
        want = np.asarray(model(x, training=False))
        assert rel_error(got, want) <= 1e-4
