"""Parity helpers shared by the tests: build a Keras model, randomise every variable,
convert it, and compare with Keras itself in the same process."""

from __future__ import annotations

import numpy as np

from kgen.verify import TOLERANCE, check_model


def one_layer_model(layer, *input_shapes, dtype="float32"):
    """A functional model applying ``layer`` to inputs of ``input_shapes`` (no batch dim).

    With several shapes the layer is called on a list (merge layers).
    """
    import keras

    inputs = [keras.Input(shape, dtype=dtype) for shape in input_shapes]
    outputs = layer(inputs if len(inputs) > 1 else inputs[0])
    return keras.Model(inputs, outputs)


def assert_parity(model, *, seed=0, batch=2, inputs=None, tolerance=TOLERANCE, train=False):
    """Randomise, convert and compare; fail with the full report above ``tolerance``."""
    conversion, report = check_model(
        model, seed=seed, batch=batch, inputs=inputs, tolerance=tolerance
    )
    assert report.ok, "\n".join(["parity failed:", *report.lines()])
    return conversion, report


def assert_layer_parity(layer, *input_shapes, seed=0, inputs=None, tolerance=TOLERANCE):
    """One-layer parity test: the layer alone in a functional model."""
    model = one_layer_model(layer, *input_shapes)
    return assert_parity(model, seed=seed, inputs=inputs, tolerance=tolerance)


def rel_error(got, want) -> float:
    """max |got - want| / max |want|."""
    got, want = np.asarray(got), np.asarray(want)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def conv_operands(x_shape, k_shape, seed=0):
    """A random input and kernel in [-1, 1], as float32 jax arrays."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(-1, 1, x_shape).astype(np.float32))
    kernel = jnp.asarray(rng.uniform(-1, 1, k_shape).astype(np.float32))
    return x, kernel


def rand(*shape, seed=0, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def run_cli(*args):
    """Run ``kgen ARGS`` in-process; ``result.exit_code`` carries SystemExit codes."""
    from click.testing import CliRunner

    from kgen.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def import_file(path):
    """Import a generated ``.py`` file as a fresh module."""
    import importlib.util
    import sys
    import uuid

    name = f"kgen_test_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tf_keras_layer_parity(make_layer, *shapes, dtype="float32", inputs=None):
    """The same one-layer check with legacy tf.keras (``tf_keras``) building the model."""
    import tf_keras as tfk

    ins = [tfk.Input(s, dtype=dtype) for s in shapes]
    x = ins if len(ins) > 1 else ins[0]
    return assert_parity(tfk.Model(x, make_layer(tfk.layers)(x)), inputs=inputs)
