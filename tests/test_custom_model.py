"""Custom Keras 3 models saved as ``.keras`` and converted through the file path.

Each model has every variable randomised, is saved, converted with ``kgen emit FILE -o
DIR``; the written module is imported from its ``.py`` file, the written safetensors are
loaded (shape-checked) with ``kgen.runtime.load_variables``, and the outputs are compared
with Keras: the model in memory and the one loaded back from the file.
"""

from __future__ import annotations

import importlib.util
import sys

import jax
import keras
import numpy as np
import pytest
from click.testing import CliRunner

from kgen.cli import main
from kgen.runtime import load_variables
from kgen.tracer.load import load_model_file
from kgen.verify import compare, randomize

L = keras.layers


def two_in_two_out():
    """Dict inputs and outputs, a shared layer called twice, a nested Sequential, ops."""
    image = keras.Input((8, 8, 3), name="image")
    meta = keras.Input((5,), name="meta")
    shared = L.Dense(6, activation="relu", name="shared_dense")
    block = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            L.BatchNormalization(name="bn"),
            L.ReLU(name="relu"),
            L.Conv2D(4, 1, name="pointwise"),
        ],
        name="block",
    )
    x = L.Conv2D(4, 3, padding="same", name="conv")(image)
    x = block(x)
    pooled = L.GlobalAveragePooling2D(name="gap")(x)
    spatial_mean = keras.ops.mean(x * 0.5, axis=(1, 2))
    feats = L.Concatenate(name="concat")([pooled, spatial_mean, meta[:, 1:4]])
    a = shared(feats)
    b = shared(L.Dense(11, name="meta_proj")(meta))
    logits = L.Dense(3, name="logits")(a + b * 0.5)
    heat = keras.ops.mean(x[:, 2:6, ::2, :], axis=-1)
    return keras.Model(
        {"image": image, "meta": meta}, {"logits": logits, "heat": heat}, name="two_in_two_out"
    )


def nested_functional():
    """A functional model used as a layer inside another, with a Sequential inside it."""
    inner_in = keras.Input((6,), name="inner_in")
    h = L.Dense(6, activation="tanh", name="inner_dense")(inner_in)
    h = keras.Sequential(
        [keras.Input((6,)), L.Dense(6, name="deep_dense"), L.ReLU(name="deep_relu")],
        name="deepest",
    )(h)
    inner = keras.Model(inner_in, h * 0.5 + inner_in, name="inner")
    x = keras.Input((6,), name="x")
    y = inner(L.Dense(6, name="pre")(x))
    return keras.Model(x, L.Dense(4, name="head")(y), name="nested_functional")


def shared_nested():
    """One nested functional model (two outputs) called twice."""
    inner_in = keras.Input((6,), name="inner_in")
    h = L.Dense(6, activation="tanh", name="inner_dense")(inner_in)
    inner = keras.Model(inner_in, [h, h - inner_in], name="inner")
    x = keras.Input((6,), name="x")
    a1, a2 = inner(x)
    b1, b2 = inner(a1)
    out = L.Add(name="sum")([a2, b1, b2])
    return keras.Model(x, [out, a1], name="shared_nested")


def _random_inputs(model, seed):
    rng = np.random.default_rng(seed)
    specs = model._inputs_struct
    if isinstance(specs, dict):
        return {k: rng.normal(size=(2, *t.shape[1:])).astype(np.float32) for k, t in specs.items()}
    return rng.normal(size=(2, *specs.shape[1:])).astype(np.float32)


def _numpy(value):
    return jax.tree_util.tree_map(np.asarray, value)


def _import_file(path):
    spec = importlib.util.spec_from_file_location(f"kgen_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop(spec.name, None)
    return module


@pytest.mark.parametrize("build", [two_in_two_out, nested_functional, shared_nested])
def test_saved_model_file_converts_with_parity(build, tmp_path):
    model = build()
    assert randomize(model, seed=7) == len(model.weights)
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = load_model_file(str(path))

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["emit", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    (py_path,) = out.glob("*.py")
    st_path = py_path.with_suffix(".safetensors")
    assert st_path.exists()

    generated = _import_file(py_path)
    cls = getattr(generated, generated.__all__[0])
    module = cls()
    variables = load_variables(st_path, module=module)  # raises on any shape mismatch

    inputs = _random_inputs(model, seed=11)
    args = list(inputs.values()) if isinstance(inputs, dict) else [inputs]  # Keras order
    got = jax.device_get(jax.jit(module.apply)(variables, *args))
    for reference_model in (model, loaded):
        reference = _numpy(reference_model(inputs, training=False))
        report = compare(reference, got)
        assert report.ok, "\n".join(report.lines())
    # The file round trip changes nothing in the generated code.
    from kgen.api import convert

    assert convert(model).source == py_path.read_text(encoding="utf-8")


def test_shared_nested_model_is_one_submodule():
    """A nested model called twice is one Flax submodule (one set of weights)."""
    from kgen.api import convert

    conversion = convert(shared_nested())
    source = conversion.source
    assert source.count("Inner(name=") == 1, source
    assert list(conversion.variables["params"]) == ["inner"]
    assert conversion.n_layers == 3  # inner_dense, the subtract op, sum: inner counts once


def test_single_output_given_as_a_list_comes_back_bare():
    """Keras's Functional.call unpacks a one-element output list (unpack_singleton)."""
    import keras
    from helpers import assert_parity

    x = keras.Input((3,), name="x")
    model = keras.Model(x, [keras.layers.Dense(2, name="d")(x)], name="single_in_list")
    conversion, _ = assert_parity(model)
    assert "return x\n" in conversion.source
