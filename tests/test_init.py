"""``rt.init``: variables without running the model eagerly."""

import jax
import jax.numpy as jnp
import keras

import kgen
from kgen import runtime as rt


def test_init_matches_module_init_tree_and_runs():
    x = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(4, 3)(x)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same")(h)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    module = kgen.convert(model).module
    example = jnp.zeros((2, 12, 12, 3))
    fast = rt.init(module, example)
    eager = module.init(jax.random.PRNGKey(0), example)
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), tree)  # noqa: E731
    assert shapes(fast) == shapes(eager)
    # Same key, same initialisers: the same values.
    assert all(
        bool(jnp.allclose(a, b))
        for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(eager))
    )
    by_shape = rt.init(module, jax.ShapeDtypeStruct((2, 12, 12, 3), jnp.float32))
    assert shapes(by_shape) == shapes(eager)
    assert module.apply(fast, example).shape == (2, 2)


# ---- the host path (kgen/runtime/host_init.py) against the compiled one ---------------

import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax._src.random import threefry2x32 as jax_threefry  # noqa: E402

from kgen.runtime import host_init  # noqa: E402


class _Mixed(nn.Module):
    """Every initialiser kind the catalog uses, and a uniform one (exact bits)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(6, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dense(5, kernel_init=nn.initializers.glorot_uniform())(x)
        x = nn.Dense(4, kernel_init=nn.initializers.uniform(0.3))(x)
        x = nn.LayerNorm()(x)
        return nn.Embed(7, 3)(jnp.zeros(x.shape[:1], jnp.int32)).sum() + x.sum()


@pytest.mark.parametrize("key", [jax.random.PRNGKey(3), jax.random.key(5)])
def test_host_init_is_module_init(key):
    x = jax.ShapeDtypeStruct((2, 9, 8, 3), jnp.float32)
    host = rt.init(_Mixed(), x, rng=key, method="host")
    jit = rt.init(_Mixed(), x, rng=key, method="jit")
    eager = _Mixed().init(key, jnp.zeros(x.shape))
    assert jax.tree.structure(host) == jax.tree.structure(eager)
    for a, b, c in zip(jax.tree.leaves(host), jax.tree.leaves(jit), jax.tree.leaves(eager)):
        assert a.shape == c.shape and a.dtype == c.dtype
        np.testing.assert_allclose(a, c, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(b, c, rtol=2e-6, atol=1e-7)
    # uniform: random bits and exact float steps, so bit for bit
    np.testing.assert_array_equal(
        host["params"]["Dense_1"]["kernel"], eager["params"]["Dense_1"]["kernel"]
    )


def test_host_init_of_a_converted_model_matches_module_init():
    x = keras.Input((10, 10, 3))
    h = keras.layers.SeparableConv2D(4, 3, padding="same")(x)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Conv2D(5, 3, strides=2)(h)
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    module = kgen.convert(model).module
    example = jnp.zeros((1, 10, 10, 3))
    host = rt.init(module, example, method="host")
    eager = module.init(jax.random.PRNGKey(0), example)
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(eager)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


class _Orthogonal(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, kernel_init=nn.initializers.orthogonal())(x)


def test_what_the_host_path_cannot_compute_is_compiled():
    x = jnp.ones((1, 4))
    with pytest.raises(host_init.Unsupported):
        rt.init(_Orthogonal(), x, method="host")
    auto = rt.init(_Orthogonal(), x)  # falls back to the compiled program
    expected = _Orthogonal().init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(
        auto["params"]["Dense_0"]["kernel"],
        expected["params"]["Dense_0"]["kernel"],
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(host_init.Unsupported):
        rt.init(_Mixed(), jnp.ones((1, 4, 4, 3)), rng=jax.random.key(0, impl="rbg"), method="host")
    with pytest.raises(ValueError):
        rt.init(_Mixed(), x, method="eager")


@pytest.mark.parametrize("size", [1, 7, 64, host_init._CHUNK * 2 + 3])
def test_threefry_is_jax_bit_for_bit(size):
    rng = np.random.default_rng(size)
    k1, k2 = rng.integers(0, 2**32, 2, dtype=np.uint32)
    x1, x2 = rng.integers(0, 2**32, (2, size), dtype=np.uint32)
    expected = jax.jit(jax_threefry.threefry2x32_p.bind)(k1, k2, x1, x2)
    ours = host_init.threefry2x32(k1, k2, x1, x2)
    for a, b in zip(ours, expected):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("shape", [(3, 5), (host_init._CHUNK + 5,)])
def test_random_bits_small_and_chunked_are_jax_bit_for_bit(shape):
    key = jax.random.PRNGKey(7)
    expected = np.asarray(jax.random.bits(key, shape, jnp.uint32))
    np.testing.assert_array_equal(host_init._random_bits(np.asarray(key), 32, shape), expected)
    u = np.random.default_rng(0).uniform(-0.99, 0.99, shape).astype(np.float32)
    np.testing.assert_allclose(host_init._erf_inv(None, u), jax.lax.erf_inv(u), rtol=1e-6)


def _per_column(key, shape, dtype=jnp.float32):
    """A uniform draw scaled per column: a broadcast the streamed path must not flatten."""
    return jax.random.uniform(key, shape, dtype) * jnp.arange(1, shape[-1] + 1, dtype=dtype)


class _Large(nn.Module):
    """Kernels of over a million values (streamed block by block) of each kind."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(1031, (3, 3), use_bias=False)(x)  # lecun_normal: truncated normal
        x = nn.Dense(1031, kernel_init=nn.initializers.glorot_uniform())(x)
        return nn.Dense(1031, kernel_init=_per_column)(x)


def test_large_arrays_are_streamed_and_equal_module_init(monkeypatch):
    x = jax.ShapeDtypeStruct((1, 3, 3, 128), jnp.float32)
    made = []
    materialise = host_init._materialise
    monkeypatch.setattr(
        host_init,
        "_materialise",
        lambda v: made.append(v.shape) or materialise(v) if isinstance(v, host_init._Stream) else v,
    )
    host = rt.init(_Large(), x, rng=jax.random.key(11), method="host")
    jit = rt.init(_Large(), x, rng=jax.random.key(11), method="jit")
    assert sorted(made) == sorted([(3, 3, 128, 1031), (1031, 1031), (1031, 1031)])
    for name in ("Conv_0", "Dense_0", "Dense_1"):
        a, b = host["params"][name]["kernel"], jit["params"][name]["kernel"]
        assert a.size > host_init._CHUNK and a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    # uniform: the same bits and float steps, so bit for bit, streamed or not
    np.testing.assert_array_equal(
        host["params"]["Dense_0"]["kernel"], jit["params"]["Dense_0"]["kernel"]
    )
