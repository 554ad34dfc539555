"""XLA's oneDNN convolution (kgen/runtime/onednn.py) against XLA's own convolution,
``nn.Conv`` and Keras: values, derivatives, vmap, the check that decides where it runs,
and what ``rt.Conv`` does where it does not."""

import platform

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import conv_operands, rel_error

from kgen.runtime import onednn
from kgen.runtime.conv import Conv, conv_impl, onednn_pads, onednn_pays

X86 = platform.machine().lower() in ("x86_64", "amd64")
needs_onednn = pytest.mark.skipif(
    not X86, reason="XLA's oneDNN convolution is an x86-64 jaxlib feature"
)

# (input shape, kernel shape, strides, pads, dilation, groups)
CASES = [
    ((2, 9, 10, 6), (3, 3, 6, 7), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 11, 12, 4), (3, 3, 4, 5), (2, 2), ((0, 1), (0, 1)), (1, 1), 1),
    ((1, 23, 22, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (2, 3)), (1, 1), 1),
    ((2, 10, 9, 4), (3, 2, 4, 6), (3, 2), ((0, 0), (0, 0)), (1, 1), 1),
    ((2, 13, 14, 10), (3, 3, 5, 6), (2, 1), ((2, 2), (0, 4)), (2, 3), 2),
    ((2, 12, 12, 24), (3, 3, 8, 12), (1, 1), ((1, 1), (1, 1)), (1, 1), 3),
    ((2, 9, 10, 6), (1, 1, 6, 7), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ((2, 9, 10, 6), (1, 1, 6, 7), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),
    ((2, 17, 3), (5, 3, 4), (2,), ((0, 0),), (1,), 1),
    ((2, 13, 4), (3, 4, 4), (1,), ((4, 0),), (2,), 1),  # causal, dilated
    ((1, 6, 7, 5, 2), (2, 2, 2, 2, 3), (1, 2, 1), ((1, 0), (0, 1), (1, 1)), (1, 1, 1), 1),
]


@needs_onednn
def test_available_on_this_jaxlib():
    # kgen's pinned jaxlib carries oneDNN on x86-64; if a release changes the custom
    # call, the check turns it off and this test says so.
    assert jax.default_backend() != "cpu" or onednn.available()


@needs_onednn
@pytest.mark.parametrize("x_shape, k_shape, strides, pads, dilation, groups", CASES)
def test_values_and_derivatives_match_xla(x_shape, k_shape, strides, pads, dilation, groups):
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")
    x, kernel = conv_operands(x_shape, k_shape)
    args = (strides, pads, dilation, groups)
    want = onednn.plain_conv(x, kernel, *args)
    got = jax.jit(lambda x, k: onednn.conv(x, k, *args))(x, kernel)
    assert got.shape == want.shape and rel_error(got, want) <= 1e-5

    cotangent = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, want.shape), jnp.float32)

    def loss(fn):
        return lambda x, k: jnp.sum(fn(x, k, *args) * cotangent)

    got_grads = jax.jit(jax.grad(loss(onednn.conv), argnums=(0, 1)))(x, kernel)
    want_grads = jax.grad(loss(onednn.plain_conv), argnums=(0, 1))(x, kernel)
    for a, b in zip(got_grads, want_grads):
        assert rel_error(a, b) <= 1e-5

    dx, dk = conv_operands(x_shape, k_shape, seed=2)
    _, got_t = jax.jvp(lambda x, k: onednn.conv(x, k, *args), (x, kernel), (dx, dk))
    _, want_t = jax.jvp(lambda x, k: onednn.plain_conv(x, k, *args), (x, kernel), (dx, dk))
    assert rel_error(got_t, want_t) <= 1e-5


@needs_onednn
def test_vmap_and_gradient_in_one_operand():
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")
    x, kernel = conv_operands((3, 2, 8, 9, 4), (3, 3, 4, 5))
    args = ((1, 2), ((1, 1), (0, 2)), (1, 1), 1)
    got = jax.vmap(lambda x: onednn.conv(x, kernel, *args))(x)
    want = jax.vmap(lambda x: onednn.plain_conv(x, kernel, *args))(x)
    assert rel_error(got, want) <= 1e-5
    grad_k = jax.grad(lambda k: jnp.sum(onednn.conv(x[0], k, *args) ** 2))(kernel)
    want_k = jax.grad(lambda k: jnp.sum(onednn.plain_conv(x[0], k, *args) ** 2))(kernel)
    assert rel_error(grad_k, want_k) <= 1e-5


@needs_onednn
def test_vmap_of_the_kernel_and_eager_calls():
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")
    x, kernel = conv_operands((2, 8, 9, 4), (3, 3, 4, 5))
    kernels = jnp.stack([kernel, -2 * kernel, kernel[::-1]])
    args = ((2, 1), ((1, 1), (1, 1)), (1, 1), 1)
    got = jax.vmap(lambda k: onednn.conv(x, k, *args))(kernels)
    want = jax.vmap(lambda k: onednn.plain_conv(x, k, *args))(kernels)
    assert got.shape == want.shape and rel_error(got, want) <= 1e-5
    assert rel_error(onednn.conv(x, kernel, *args), onednn.plain_conv(x, kernel, *args)) <= 1e-5


@needs_onednn
def test_export_gets_xla_convolution():
    # jax.export refuses custom calls without compatibility guarantees, so an exported
    # program holds XLA's convolution; it runs and matches.
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")
    x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 30, 30, 16)), jnp.float32)
    module = Conv(32, (3, 3), padding="SAME", impl="onednn")
    variables = module.init(jax.random.PRNGKey(0), x)
    exported = jax.export.export(jax.jit(module.apply))(variables, x)
    assert onednn.TARGET not in exported.mlir_module()
    assert rel_error(exported.call(variables, x), module.apply(variables, x)) <= 1e-5


@needs_onednn
def test_compiled_program_calls_onednn():
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")
    x = jnp.ones((1, 9, 9, 8))
    module = Conv(5, (3, 3), padding="SAME", impl="onednn")
    variables = module.init(jax.random.PRNGKey(0), x)
    text = jax.jit(module.apply).lower(variables, x).compile().as_text()
    assert onednn.TARGET in text


@needs_onednn
def test_check_rejects_wrong_numbers_and_errors(monkeypatch):
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")
    right = onednn._call
    monkeypatch.setattr(onednn, "_call", lambda *args: right(*args) * 1.001)
    assert not onednn.agrees()

    def fails(*args):
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(onednn, "_call", fails)
    assert not onednn.agrees()


def test_not_with_several_devices(monkeypatch):
    # XLA's SPMD partitioner has no sharding rule for the custom call: a data-parallel
    # program would gather the whole batch on every device (tests/test_fine_tune.py).
    monkeypatch.setattr(onednn, "agrees", lambda: True)
    monkeypatch.setattr(onednn, "jaxlib_release", lambda: onednn.VERIFIED_JAXLIB[0])
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    assert not onednn.available.__wrapped__()


def test_only_verified_jaxlib_releases(monkeypatch):
    # A configuration the kernel reads differently can crash the process (an older
    # XLA's offsets did here), so an unverified jaxlib is not even tried.
    tried = []
    monkeypatch.setattr(onednn, "agrees", lambda: tried.append(1) or True)
    monkeypatch.setattr(onednn, "jaxlib_release", lambda: (0, 99))
    assert not onednn.available.__wrapped__()
    assert tried == []


def test_unavailable_means_the_xla_paths(monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)
    monkeypatch.delenv("KGEN_CONV", raising=False)
    assert conv_impl("auto") == ("dot" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(RuntimeError, match="oneDNN convolution is not available"):
        conv_impl("onednn")
    monkeypatch.setenv("KGEN_CONV", "onednn")
    with pytest.raises(RuntimeError, match="oneDNN convolution is not available"):
        conv_impl("auto")


def test_onednn_pays_where_measured():
    same = ((1, 1), (1, 1))
    none = ((0, 0), (0, 0))
    # ResNet50's 3x3 over 56x56x64 at batch 1 and 8: 231 and 1850 MFLOP
    assert onednn_pays((1, 56, 56, 64), (3, 3, 64, 64), (1, 1), (1, 1), same)
    assert onednn_pays((8, 56, 56, 64), (3, 3, 64, 64), (1, 1), (1, 1), same)
    # VGG16's and ResNet50's stems over RGB
    assert onednn_pays((1, 224, 224, 3), (3, 3, 3, 64), (1, 1), (1, 1), same)
    assert onednn_pays((1, 230, 230, 3), (7, 7, 3, 64), (2, 2), (1, 1), none)
    # a squeeze-and-excitation 1x1 over one pixel, and small 1x1s at batch 1: too little
    assert not onednn_pays((1, 1, 1, 32), (1, 1, 32, 8), (1, 1), (1, 1), none)
    assert not onednn_pays((1, 28, 28, 144), (1, 1, 144, 32), (1, 1), (1, 1), none)
    assert not onednn_pays((1, 14, 14, 64), (3, 3, 64, 64), (1, 1), (1, 1), same)
    # groups divide the work; stride 2 quarters it
    assert onednn_pays((8, 28, 28, 64), (3, 3, 64, 64), (1, 1), (1, 1), same)
    assert not onednn_pays((8, 28, 28, 64), (3, 3, 8, 64), (2, 2), (1, 1), same)


@needs_onednn
def test_auto_sends_only_paying_convolutions_to_onednn(monkeypatch):
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")
    monkeypatch.delenv("KGEN_CONV", raising=False)

    def compiled(features, kernel, x):
        module = Conv(features, kernel, padding="SAME")
        variables = module.init(jax.random.PRNGKey(0), x)
        return jax.jit(module.apply).lower(variables, x).compile().as_text()

    assert onednn.TARGET in compiled(64, (3, 3), jnp.ones((1, 56, 56, 64)))
    assert onednn.TARGET not in compiled(8, (1, 1), jnp.ones((1, 4, 4, 32)))


def test_onednn_pads_resolves_what_it_takes():
    f32 = jnp.float32
    info = ((10, 10), (3, 3), (2, 1), (1, 1))
    assert onednn_pads(2, "SAME", None, None, f32, info) == [(0, 1), (1, 1)]
    assert onednn_pads(2, "VALID", 1, None, f32, info) == [(0, 0), (0, 0)]
    assert onednn_pads(2, 2, None, None, f32, info) == [(2, 2), (2, 2)]
    assert onednn_pads(2, [(1, 0), (0, 2)], None, None, f32, info) == [(1, 0), (0, 2)]
    assert onednn_pads(1, "CAUSAL", None, None, f32, ((13,), (3,), (1,), (2,))) == [(4, 0)]
    assert onednn_pads(2, "CIRCULAR", None, None, f32, info) is None
    assert onednn_pads(2, [(-1, 0), (0, 0)], None, None, f32, info) is None
    assert onednn_pads(2, "SAME", (2, 2), None, f32, info) is None  # input dilation
    assert onednn_pads(2, "SAME", None, None, jnp.bfloat16, info) is None
    assert onednn_pads(4, "SAME", None, None, f32, info) is None


MODULE_CASES = [
    # (input shape without batch, kernel, strides, padding, groups, dilation)
    ((9, 10, 6), (3, 3), (2, 2), "SAME", 1, 1),
    ((9, 10, 6), (1, 1), (2, 2), "VALID", 1, 1),
    ((11, 12, 8), (3, 5), (1, 2), [(2, 1), (0, 3)], 2, (2, 1)),
    ((15, 3), (3,), (1,), "CAUSAL", 1, 2),
    ((6, 7, 5, 2), (2, 2, 2), (1, 2, 1), "SAME", 1, 1),
]


@needs_onednn
@pytest.mark.parametrize("shape, kernel, strides, padding, groups, dilation", MODULE_CASES)
def test_module_matches_nn_conv(shape, kernel, strides, padding, groups, dilation):
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    kwargs = {
        "strides": strides,
        "padding": padding,
        "feature_group_count": groups,
        "kernel_dilation": dilation,
    }
    reference = nn.Conv(6, kernel, **kwargs)
    variables = reference.init(jax.random.PRNGKey(0), x)
    variables = jax.tree.map(lambda a: rng.uniform(-1, 1, a.shape).astype(np.float32), variables)
    module = Conv(6, kernel, impl="onednn", **kwargs)
    own = module.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(np.shape, own) == jax.tree.map(np.shape, variables)
    expected = reference.apply(variables, x)
    assert rel_error(jax.jit(module.apply)(variables, x), expected) <= 1e-5

    def loss(m):
        return lambda v: jnp.sum(m.apply(v, x) ** 2)

    for a, b in zip(
        jax.tree.leaves(jax.grad(loss(module))(variables)),
        jax.tree.leaves(jax.grad(loss(reference))(variables)),
    ):
        assert rel_error(a, b) <= 1e-5


@needs_onednn
def test_nnx_module_matches_nnx_conv():
    if not onednn.available():
        pytest.skip("XLA's oneDNN convolution did not pass its check here")
    from flax import nnx

    from kgen.runtime import nnx as rt_nnx

    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 20, 21, 8)).astype(np.float32))
    for kernel, padding in [((3, 3), "SAME"), ((1, 1), "VALID"), ((3, 5), [(1, 2), (0, 0)])]:
        reference = nnx.Conv(8, 6, kernel, padding=padding, rngs=nnx.Rngs(0))
        own = rt_nnx.Conv(8, 6, kernel, padding=padding, impl="onednn", rngs=nnx.Rngs(0))
        assert rel_error(own(x), reference(x)) <= 1e-5
