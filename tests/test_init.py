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
