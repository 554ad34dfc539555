"""The pooling fast path (kgen/runtime/pooling.py) against XLA's ``reduce_window``
(Flax's ``nn.max_pool`` / ``nn.avg_pool``) and against Keras.

On CPU the generated module pools one spatial axis at a time over strided slices
("shift"); elsewhere it keeps ``reduce_window`` ("xla").  These tests force each one and
compare values and gradients, over odd sizes, strides, windows and padding modes in 1,
2 and 3 spatial dims.
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from helpers import assert_layer_parity

from kgen.runtime.pooling import avg_pool, max_pool, pool_impl

CASES = [
    # (input shape without batch, window, strides, padding)
    ((9, 10, 3), (3, 3), (1, 1), "SAME"),
    ((9, 10, 3), (3, 3), (2, 2), "VALID"),
    ((9, 10, 3), (3, 3), (2, 2), "SAME"),
    ((35, 35, 4), (3, 3), (1, 1), "SAME"),  # InceptionV3's branch pool
    ((8, 8, 2), (2, 2), (2, 2), "VALID"),  # DenseNet's transition
    ((7, 11, 4), (5, 3), (3, 1), "SAME"),
    ((7, 9, 3), (4, 4), (2, 2), "VALID"),
    ((7, 9, 3), (2, 3), (3, 3), "SAME"),
    ((6, 6, 2), (1, 1), (1, 1), "VALID"),
    ((13, 3), (3,), (1,), "SAME"),
    ((13, 3), (4,), (3,), "VALID"),
    ((6, 7, 5, 2), (3, 2, 3), (1, 2, 1), "SAME"),
    ((6, 7, 5, 2), (2, 2, 2), (2, 2, 2), "VALID"),
]


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("pool", [max_pool, avg_pool], ids=["max", "avg"])
@pytest.mark.parametrize("shape, window, strides, padding", CASES)
def test_shift_matches_reduce_window(pool, shape, window, strides, padding):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    outs, grads, cotangent = {}, {}, None
    for impl in ("xla", "shift"):

        def f(x, impl=impl):
            return pool(x, window, strides=strides, padding=padding, impl=impl)

        outs[impl] = np.asarray(jax.jit(f)(x))
        if cotangent is None:
            cotangent = rng.uniform(-1, 1, outs[impl].shape).astype(np.float32)
        grad = jax.grad(lambda x, f=f, c=cotangent: jnp.sum(f(x) * c))
        grads[impl] = np.asarray(jax.jit(grad)(x))  # jitted, as in a training step
        np.testing.assert_array_equal(grads[impl], np.asarray(grad(x)))
    assert outs["xla"].shape == outs["shift"].shape
    assert _rel(outs["shift"], outs["xla"]) <= 1e-6
    assert _rel(grads["shift"], grads["xla"]) <= 1e-6


def test_max_pool_gradient_goes_to_one_cell_of_a_tie():
    """After a ReLU a window often holds equal zeros: the whole gradient goes to one of
    them (reduce_window's rule, TensorFlow's too), not split as jnp.maximum would."""
    x = np.zeros((1, 4, 4, 1), np.float32)
    for impl in ("xla", "shift"):
        g = jax.grad(lambda x, impl=impl: jnp.sum(max_pool(x, (2, 2), (2, 2), impl=impl)))(x)
        assert sorted(np.unique(np.asarray(g))) == [0.0, 1.0], impl
        assert float(np.sum(g)) == 4.0


def test_bfloat16_stays_bfloat16():
    x = jnp.ones((1, 5, 5, 2), jnp.bfloat16)
    for pool in (max_pool, avg_pool):
        assert pool(x, (3, 3), padding="SAME", impl="shift").dtype == jnp.bfloat16


def test_auto_picks_by_backend(monkeypatch):
    monkeypatch.delenv("KGEN_POOL", raising=False)
    expected = "shift" if jax.default_backend() == "cpu" else "xla"
    assert pool_impl("auto") == expected
    monkeypatch.setenv("KGEN_POOL", "xla")
    assert pool_impl("auto") == "xla"
    assert pool_impl("shift") == "shift"
    with pytest.raises(ValueError):
        pool_impl("fast")


KERAS_LAYERS = [
    (lambda: keras.layers.MaxPooling2D(3, strides=2), (15, 14, 3)),
    (lambda: keras.layers.MaxPooling2D(3, strides=2, padding="same"), (15, 14, 3)),
    (lambda: keras.layers.AveragePooling2D(3, strides=1, padding="same"), (9, 8, 3)),
    (lambda: keras.layers.AveragePooling2D(2, strides=2), (9, 8, 3)),
    (lambda: keras.layers.AveragePooling1D(3, strides=2, padding="same"), (11, 3)),
    (lambda: keras.layers.MaxPooling3D(2, padding="same"), (5, 6, 7, 2)),
]


@pytest.mark.parametrize("impl", ["xla", "shift"])
@pytest.mark.parametrize("make, shape", KERAS_LAYERS)
def test_each_path_matches_keras(make, shape, impl, monkeypatch):
    monkeypatch.setenv("KGEN_POOL", impl)
    conversion, _ = assert_layer_parity(make(), shape)
    assert "rt.max_pool" in conversion.source or "rt.avg_pool" in conversion.source
