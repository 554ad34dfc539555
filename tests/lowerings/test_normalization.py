"""One-layer parity tests for BatchNormalization in kgen/codegen/lowerings/normalization.py,
in inference and in training mode (batch statistics and moving-statistic updates)."""

import jax
import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, assert_parity, one_layer_model, rand

from kgen.verify import compare, randomize

CASES = [
    ({}, (5, 4, 3)),
    ({"center": False}, (5, 4, 3)),
    ({"scale": False}, (5, 4, 3)),
    ({"center": False, "scale": False}, (5, 4, 3)),
    ({"axis": 1}, (5, 4, 3)),
    ({"axis": 2, "epsilon": 1e-5}, (5, 4, 3)),
    ({"axis": -1, "epsilon": 1.001e-5, "momentum": 0.9}, (5, 4, 3)),
    ({"epsilon": 0.1}, (6,)),
    ({"scale": False, "epsilon": 1e-6}, (6,)),
    ({"axis": 1}, (4, 6)),
]
IDS = [
    f"{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}-rank{len(s) + 1}" for kw, s in CASES
]


@pytest.mark.parametrize("kwargs, shape", CASES, ids=IDS)
def test_batch_norm(kwargs, shape):
    # Inputs far from zero make the Keras formula's rounding (vs Flax's) visible.
    x = rand(2, *shape, low=-20.0, high=30.0)
    assert_layer_parity(keras.layers.BatchNormalization(**kwargs), shape, inputs=[x])


def _module_name(conversion):
    (name,) = conversion.variables["batch_stats"]
    return name


@pytest.mark.parametrize("kwargs, shape", CASES, ids=IDS)
def test_batch_norm_training(kwargs, shape):
    """train=True normalises with the batch statistics and updates the moving statistics
    as ``layer(x, training=True)`` does."""
    from kgen.api import convert

    layer = keras.layers.BatchNormalization(**kwargs)
    model = one_layer_model(layer, shape)
    randomize(model, seed=4)
    conversion = convert(model)
    x = rand(3, *shape, seed=5, low=-2.0, high=4.0)

    module = conversion.module
    apply = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))
    y, updates = apply(conversion.variables, x)
    reference = np.asarray(model([x], training=True))
    report = compare(reference, np.asarray(y))
    assert report.ok, report.lines()

    stats = updates["batch_stats"][_module_name(conversion)]
    moving = {"mean": layer.moving_mean, "var": layer.moving_variance}
    for key, variable in moving.items():
        np.testing.assert_allclose(
            np.asarray(stats[key]), np.asarray(variable), rtol=1e-5, atol=1e-6
        )
        # The update did something (not a comparison of two untouched copies).
        assert not np.allclose(
            np.asarray(stats[key]),
            conversion.variables["batch_stats"][_module_name(conversion)][key],
        )


def test_frozen_batch_norm_uses_moving_statistics_in_training():
    from kgen.api import convert

    layer = keras.layers.BatchNormalization(trainable=False)
    model = one_layer_model(layer, (4, 3))
    randomize(model, seed=4)
    conversion = convert(model)
    x = rand(3, 4, 3, seed=5, low=-2.0, high=4.0)
    module = conversion.module
    y, updates = module.apply(conversion.variables, x, train=True, mutable=["batch_stats"])
    report = compare(np.asarray(model([x], training=True)), np.asarray(y))
    assert report.ok, report.lines()
    name = _module_name(conversion)
    np.testing.assert_array_equal(
        np.asarray(updates["batch_stats"][name]["mean"]), np.asarray(layer.moving_mean)
    )


def test_batch_norm_call_training_false_follows_the_model_mode():
    """Keras 3's Functional replaces a ``training=False`` stored on a layer call with the
    flag the model is called with (``keras/src/models/functional.py``, operation_fn)."""
    from kgen.api import convert

    inputs = keras.Input((4, 3))
    layer = keras.layers.BatchNormalization()
    model = keras.Model(inputs, layer(inputs, training=False))
    assert_parity(model)
    conversion = convert(model)
    x = rand(3, 4, 3, seed=5)
    y, _ = conversion.module.apply(conversion.variables, x, train=True, mutable=["batch_stats"])
    reference = np.asarray(model(x, training=True))
    assert not np.allclose(reference, np.asarray(model(x, training=False)))
    report = compare(reference, np.asarray(y))
    assert report.ok, report.lines()


def test_batch_norm_renorm_inference():
    # renorm adds moving_stddev/renorm_mean/renorm_stddev; inference still uses the
    # moving mean and variance, so the mapping must go by name, not position.
    x = rand(2, 4, 3, low=-5.0, high=5.0)
    assert_layer_parity(keras.layers.BatchNormalization(renorm=True), (4, 3), inputs=[x])


@pytest.mark.parametrize("training", [True, False])
def test_tf_keras_batch_norm_call_training_argument_wins(training):
    """tf.keras honours a ``training=`` argument stored on the layer call over the model's
    mode, so ``training=True`` means batch statistics even for inference."""
    import tf_keras

    from kgen.api import convert

    inputs = tf_keras.Input((4, 3))
    model = tf_keras.Model(inputs, tf_keras.layers.BatchNormalization()(inputs, training=training))
    randomize(model, seed=2)
    conversion = convert(model)
    x = rand(3, 4, 3, seed=5, low=-2.0, high=4.0)
    module = conversion.module
    for train in (False, True):
        if train:
            y, _ = module.apply(conversion.variables, x, train=True, mutable=["batch_stats"])
        else:
            y = module.apply(conversion.variables, x)  # no mutable collections
        report = compare(model(x, training=train).numpy(), np.asarray(y))
        assert report.ok, (train, report.lines())


@pytest.mark.parametrize("axis", [[1, 3], [3, 1]])
def test_tf_keras_batch_norm_several_axes(axis):
    """Keras 3 takes one int axis; tf.keras takes a list and keeps the weights in
    broadcast shape (1, H, 1, C)."""
    import tf_keras

    from kgen.api import convert

    inputs = tf_keras.Input((4, 5, 3))
    layer = tf_keras.layers.BatchNormalization(axis=axis)
    model = tf_keras.Model(inputs, layer(inputs))
    assert_parity(model)
    conversion = convert(model)
    x = rand(3, 4, 5, 3, seed=5, low=-2.0, high=4.0)
    y, updates = conversion.module.apply(
        conversion.variables, x, train=True, mutable=["batch_stats"]
    )
    report = compare(model(x, training=True).numpy(), np.asarray(y))
    assert report.ok, report.lines()
    stats = updates["batch_stats"][_module_name(conversion)]
    np.testing.assert_allclose(
        np.asarray(stats["var"]), layer.moving_variance.numpy().reshape(4, 3), rtol=1e-5
    )
