"""User-facing errors: one line on stderr (``kgen: error: ...``), exit code 2, no
traceback, and nothing written when a conversion fails."""

from __future__ import annotations

import os
import urllib.error
import zipfile
from pathlib import Path

import pytest
from helpers import run_cli

import kgen
import kgen.api
from kgen.errors import UnsupportedError
from kgen.verify import randomize


def assert_user_error(result, *fragments, code=2):
    """Exactly one ``kgen: error:`` line on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kgen: error: "), lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tiny_model(units=4):
    import keras

    x = keras.Input((6,))
    h = keras.layers.Dense(units, name="d1")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(x, keras.layers.Dense(3, name="d2")(h), name="tiny")


def _custom_layer_classes():
    """Two user layer classes kgen has no lowering for and cannot trace into: their
    ``call`` branches in Python on a tensor's value (registered so .keras files load)."""
    import keras
    from keras import ops

    if not hasattr(_custom_layer_classes, "cache"):

        @keras.saving.register_keras_serializable(package="kgen_errors_test")
        class Squish(keras.layers.Layer):
            def call(self, x):
                return x * 0.5 if ops.max(x) > 0 else x

            def compute_output_shape(self, shape):
                return shape

        @keras.saving.register_keras_serializable(package="kgen_errors_test")
        class Wobble(keras.layers.Layer):
            def call(self, x):
                return x + 1.0 if ops.min(x) > 0 else x

            def compute_output_shape(self, shape):
                return shape

        _custom_layer_classes.cache = (Squish, Wobble)
    return _custom_layer_classes.cache


def unsupported_model():
    """Two layer classes kgen has no lowering for: Squish once, Wobble twice."""
    import keras

    squish, wobble = _custom_layer_classes()
    x = keras.Input((5,))
    h = squish(name="emb")(keras.layers.Dense(4, name="d")(x))
    h = wobble(name="lstm_a")(h)
    h = wobble(name="lstm_b")(h)
    return keras.Model(x, keras.layers.Dense(2, name="head")(h))


@pytest.fixture
def tiny_file(tmp_path):
    model = tiny_model()
    randomize(model, seed=1)
    path = tmp_path / "tiny.keras"
    model.save(path)
    return path


def test_unsupported_layers_listed_together_by_the_api():
    with pytest.raises(UnsupportedError) as info:
        kgen.convert(unsupported_model())
    message = str(info.value)
    assert "3 layer(s) of 2 unsupported class(es)" in message
    assert "Squish x1 ('emb'), whose call() kgen could not trace" in message
    assert "Wobble x2 ('lstm_a', 'lstm_b'), whose call() kgen could not trace" in message
    assert "cannot be used as a boolean" in message  # the reason, from Keras
    assert "Dense" not in message


def test_unsupported_layers_cli_writes_nothing(tmp_path):
    source = tmp_path / "rnn.keras"
    unsupported_model().save(source)
    out = tmp_path / "out"
    assert_user_error(
        run_cli("emit", source, "-o", out), "Squish x1 ('emb')", "Wobble x2 ('lstm_a', 'lstm_b')"
    )
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert_user_error(run_cli("emit", source, "-o", out, "--json"), "Wobble x2")
    assert os.listdir(out) == ["keep.txt"]


def test_unknown_application():
    assert_user_error(run_cli("emit", "NoSuchNet"), "unknown application 'NoSuchNet'", "kgen list")
    assert_user_error(run_cli("verify", "mobilenet"), "did you mean MobileNet?")


@pytest.mark.parametrize("name", ["missing.keras", "missing.h5", "missing.txt", "sub/missing"])
def test_missing_model_file(tmp_path, name):
    assert_user_error(run_cli("emit", tmp_path / name, "-o", tmp_path / "out"), "not found")
    assert os.listdir(tmp_path) == []


def test_model_file_with_wrong_suffix(tmp_path):
    path = tmp_path / "model.pb"
    path.write_bytes(b"not a model")
    assert_user_error(run_cli("emit", path), "must be a .keras or .h5 model file")


def test_directory_as_model_file(tmp_path):
    assert_user_error(run_cli("emit", tmp_path), "is a directory")


@pytest.mark.parametrize(
    "suffix, problem", [(".keras", "not a zip archive"), (".h5", "not a valid HDF5")]
)
def test_corrupt_model_file(tmp_path, suffix, problem):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(os.urandom(2048))
    out = tmp_path / "out"
    assert_user_error(run_cli("emit", path, "-o", out), problem)
    assert not out.exists()


def test_keras_file_without_a_model(tmp_path):
    """A zip archive that is not a whole .keras file: Keras's own reason, on one line."""
    path = tmp_path / "cut.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")
    assert_user_error(run_cli("emit", path, "-o", tmp_path / "out"), "cannot load model file")
    assert not (tmp_path / "out").exists()


def test_weights_file_given_as_model(tmp_path):
    path = tmp_path / "tiny.weights.h5"
    tiny_model().save_weights(path)
    assert_user_error(run_cli("emit", path), "holds weights only", "--weights")


def test_imagenet_weights_only_for_applications(tiny_file):
    assert_user_error(run_cli("emit", tiny_file, "--weights", "imagenet"), "application names")


def test_unknown_weights_option(tiny_file):
    assert_user_error(
        run_cli("emit", "MobileNet", "--weights", "random"),
        "--weights 'random'",
        "neither imagenet, none, model nor a file path",
    )
    assert_user_error(run_cli("verify", tiny_file, "--weights", "imagenett"), "'imagenett'")


def test_model_weights_only_for_model_files():
    assert_user_error(run_cli("verify", "MobileNet", "--weights", "model"), "model file")


@pytest.mark.parametrize("name", ["gone.weights.h5", "gone.h5"])
def test_missing_weights_file(tiny_file, tmp_path, name):
    out = tmp_path / "out"
    assert_user_error(
        run_cli("emit", tiny_file, "-o", out, "--weights", tmp_path / name),
        "weights file not found",
    )
    assert not out.exists()


def test_weights_file_with_wrong_suffix(tiny_file, tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"x")
    assert_user_error(run_cli("emit", tiny_file, "--weights", path), ".weights.h5 or legacy .h5")


def test_weights_file_with_mismatched_shapes(tiny_file, tmp_path):
    """Keras's multi-paragraph message becomes one line naming a layer and both shapes."""
    wide = tmp_path / "wide.weights.h5"
    tiny_model(units=5).save_weights(wide)
    out = tmp_path / "out"
    line = assert_user_error(
        run_cli("emit", tiny_file, "-o", out, "--weights", wide), "cannot load weights from"
    )
    assert "'d1' (Dense)" in line and "(6, 4)" in line and "(6, 5)" in line
    assert not out.exists()


def test_legacy_h5_weights_with_mismatched_shapes(tiny_file, tmp_path):
    import tf_keras

    x = tf_keras.Input((6,))
    h = tf_keras.layers.BatchNormalization(name="bn")(tf_keras.layers.Dense(5, name="d1")(x))
    legacy = tmp_path / "wide.h5"
    tf_keras.Model(x, tf_keras.layers.Dense(3, name="d2")(h)).save_weights(legacy)
    line = assert_user_error(run_cli("emit", tiny_file, "-o", tmp_path / "o", "--weights", legacy))
    assert "d1" in line and "(6, 4)" in line and "(6, 5)" in line


def test_output_that_is_a_file(tiny_file, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    assert_user_error(run_cli("emit", tiny_file, "-o", target), "is not a directory")
    assert target.read_text() == "x"


def test_failed_write_leaves_nothing(tiny_file, tmp_path, monkeypatch):
    def full_disk(variables, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kgen.api, "save_variables", full_disk)
    out = tmp_path / "out"
    assert_user_error(run_cli("emit", tiny_file, "-o", out), "cannot write", "No space left")
    assert not out.exists()

    out.mkdir()
    assert_user_error(run_cli("emit", tiny_file, "-o", out), "No space left")
    assert os.listdir(out) == []


def test_imagenet_offline(monkeypatch, tmp_path):
    """No network: one line naming the other --weights options, exit 2, nothing written."""
    import keras
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setattr(keras.utils, "get_file", offline)
    out = tmp_path / "out"
    assert_user_error(
        run_cli("emit", "MobileNet", "-o", out, "--json"),
        "ImageNet weights for MobileNet",
        "name resolution",
        "--weights none",
        "--weights PATH",
    )
    assert not out.exists()


def test_bad_plugin():
    assert_user_error(run_cli("--plugin", "kgen_no_such_plugin", "list"), "kgen_no_such_plugin")


def test_internal_error_is_one_line_with_exit_3(tiny_file, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.delenv("KGEN_DEBUG", raising=False)
    monkeypatch.setattr(kgen.api, "convert_model", bug)
    assert_user_error(
        run_cli("emit", tiny_file, "-o", tiny_file.parent / "out"),
        "internal error: RuntimeError: something broke",
        "KGEN_DEBUG=1",
        code=3,
    )
