"""Weights: Keras weights files in (``--weights PATH``), safetensors out, and
``kgen.runtime.load_variables`` with its shape check."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from helpers import import_file, rand, run_cli
from safetensors.numpy import load_file, save_file

import kgen
from kgen import WeightsError
from kgen.runtime import load_variables
from kgen.verify import compare, randomize


def tiny_model(k, units=4):
    """Dense -> BatchNorm -> Dense, in Keras 3 (``k=keras``) or tf.keras (``k=tf_keras``)."""
    x = k.Input((6,))
    h = k.layers.Dense(units, name="d1")(x)
    h = k.layers.BatchNormalization(name="bn")(h)
    return k.Model(x, k.layers.Dense(3, name="d2")(h), name="tiny")


@pytest.fixture
def converted(tmp_path):
    """A randomised tiny model, converted and written; returns (model, conversion, paths)."""
    import keras

    model = tiny_model(keras)
    randomize(model, seed=2)
    conversion = kgen.convert(model)
    py_path, st_path = conversion.write(tmp_path)
    return model, conversion, py_path, st_path


def test_load_variables_round_trip(converted):
    model, conversion, py_path, st_path = converted
    variables = load_variables(st_path)
    assert set(variables) == {"params", "batch_stats"}
    assert variables["params"]["d1"]["kernel"].shape == (6, 4)
    assert set(variables["batch_stats"]["bn"]) == {"mean", "var"}
    for (path, got), (_, want) in zip(
        jax.tree_util.tree_leaves_with_path(variables),
        jax.tree_util.tree_leaves_with_path(conversion.variables),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=str(path))

    net = import_file(py_path).Tiny()
    checked = load_variables(st_path, module=net)
    x = rand(4, 6, seed=1)
    report = compare(np.asarray(model(x, training=False)), net.apply(checked, x))
    assert report.ok, report.lines()


def _rewrite(st_path, change):
    flat = load_file(str(st_path))
    change(flat)
    save_file(flat, str(st_path))


def test_load_variables_shape_mismatch_names_path_and_shapes(converted):
    _, _, py_path, st_path = converted
    _rewrite(st_path, lambda flat: flat.update({"params/d1/kernel": np.zeros((6, 5), np.float32)}))
    net = import_file(py_path).Tiny()
    assert set(load_variables(st_path)) == {"params", "batch_stats"}  # no module: no check
    with pytest.raises(WeightsError) as info:
        load_variables(st_path, module=net)
    message = str(info.value)
    assert "params/d1/kernel" in message
    assert "file has shape (6, 5), module expects (6, 4)" in message
    assert "\n" not in message


def test_load_variables_missing_and_unexpected(converted):
    _, _, py_path, st_path = converted

    def change(flat):
        del flat["batch_stats/bn/var"]
        flat["params/extra/kernel"] = np.zeros((2, 2), np.float32)

    _rewrite(st_path, change)
    with pytest.raises(WeightsError) as info:
        load_variables(st_path, module=import_file(py_path).Tiny())
    message = str(info.value)
    assert "batch_stats/bn/var: missing (module expects shape (4,))" in message
    assert "params/extra/kernel: unexpected (file has shape (2, 2))" in message


def test_load_variables_bad_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_variables(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(WeightsError, match="cannot read weights file") as info:
        load_variables(junk)
    assert "\n" not in str(info.value)


def _keras3_weights(tmp_path):
    import keras

    model = tiny_model(keras)
    randomize(model, seed=7)
    path = tmp_path / "other.weights.h5"
    model.save_weights(path)  # Keras 3 only writes .weights.h5
    return model, path


def _legacy_weights(tmp_path):
    import tf_keras

    model = tiny_model(tf_keras)
    randomize(model, seed=8)
    path = tmp_path / "legacy.h5"
    model.save_weights(path)  # tf.keras 2.x's legacy HDF5 weights
    return model, path


@pytest.mark.parametrize("make_weights", [_keras3_weights, _legacy_weights])
def test_emit_with_weights_file(tmp_path, make_weights):
    """``--weights PATH`` replaces the model file's own weights, for both file formats."""
    import keras

    source = tmp_path / "tiny.keras"
    own = tiny_model(keras)
    randomize(own, seed=1)
    own.save(source)
    reference, weights = make_weights(tmp_path)

    out = tmp_path / "out"
    result = run_cli("emit", source, "-o", out, "--weights", weights, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    net = import_file(info["module"]).Tiny()
    variables = load_variables(info["weights"], module=net)
    x = rand(4, 6, seed=3)
    report = compare(np.asarray(reference(x, training=False)), net.apply(variables, x))
    assert report.ok, report.lines()
    # and not the file's own weights
    assert not compare(np.asarray(own(x, training=False)), net.apply(variables, x)).ok


def test_keras3_cannot_write_legacy_h5_weights(tmp_path):
    """Why the legacy test above uses tf.keras: Keras 3 only saves ``.weights.h5``."""
    import keras

    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        tiny_model(keras).save_weights(tmp_path / "x.h5")
