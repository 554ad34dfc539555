"""A lowering is found by the class's identity, never by its bare name.

keras-hub's Gemma ``RMSNormalization`` computes ``x * rsqrt(mean(x^2) + eps) * (1 +
scale)``; Keras's computes ``... * scale``.  Matched by name, the conversion used to
succeed with relative error 0.42.  A user's class that shares a name with a Keras layer
is converted by its own plug-in lowering or by tracing its own ``call()``, with parity,
and never as the Keras class.
"""

from __future__ import annotations

import dataclasses

import keras
import pytest
from helpers import assert_parity, run_cli
from keras import ops
from test_errors import assert_user_error

from kgen.codegen import registry
from kgen.codegen.lowerings.normalization import lower_rms_norm
from kgen.verify import randomize

PACKAGE = "kgen_identity_test"


@keras.saving.register_keras_serializable(package=PACKAGE)
class RMSNormalization(keras.layers.Layer):
    """Gemma's form: the scale is stored as an offset from 1."""

    def __init__(self, axis=-1, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.axis, self.epsilon = axis, epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        norm = x * ops.rsqrt(ops.mean(x * x, axis=self.axis, keepdims=True) + self.epsilon)
        return norm * (1.0 + self.scale)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}


class Dropout(keras.layers.Dropout):
    """A Dropout subclass whose call is not Dropout's."""

    def call(self, inputs, training=None):
        return inputs * 2.0


class Opaque(keras.layers.Layer):
    """A third-party layer whose get_config() raises (keras-hub's Llama blocks do)."""

    config_calls = 0

    def call(self, x):
        return x + 1.0

    def get_config(self):
        Opaque.config_calls += 1
        raise NotImplementedError("no config")


def _model(norm_layer):
    x = keras.Input((5, 6), name="x")
    h = keras.layers.Dense(6, name="proj")(x)
    return keras.Model(x, keras.layers.Dense(3, name="head")(norm_layer(h)), name="gemma_like")


@pytest.fixture
def gemma_plugin():
    """The user's plug-in: Keras's own RMSNorm lowering with the scale offset by 1,
    registered under the class's identity (``module.Name``)."""
    key = f"{RMSNormalization.__module__}.RMSNormalization"

    @registry.register(key, family="user", handles={"axis", "epsilon"})
    def lower(node):
        return lower_rms_norm(
            dataclasses.replace(node, weights={"scale": node.weight("scale") + 1})
        )

    try:
        yield key
    finally:
        registry._REGISTRY.pop(("layer", key))


def test_user_class_named_like_a_keras_layer_is_traced_not_converted_as_it():
    conversion, _ = assert_parity(_model(RMSNormalization(name="norm")))
    assert "class RMSNormalization(nn.Module):" in conversion.source
    assert "nn.RMSNorm" not in conversion.source
    assert set(conversion.variables["params"]["norm"]) == {"scale"}
    # Keras's own RMSNormalization still converts by its lowering.
    conversion, _ = assert_parity(_model(keras.layers.RMSNormalization(name="norm")))
    assert "nn.RMSNorm" in conversion.source


def test_user_class_converts_through_its_own_plugin(gemma_plugin):
    conversion, report = assert_parity(_model(RMSNormalization(name="norm")))
    assert report.ok and "nn.RMSNorm" in conversion.source


def test_user_class_in_a_file_is_refused_or_converted_by_its_plugin(tmp_path, gemma_plugin):
    model = _model(RMSNormalization(name="norm"))
    randomize(model, seed=2)
    path = tmp_path / "gemma_like.keras"
    model.save(path)
    # With the plug-in the file converts (its class is in Keras's registry).
    result = run_cli("verify", path, "--weights", "model")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout


def test_user_class_in_a_file_without_plugin_is_refused(tmp_path):
    model = _model(RMSNormalization(name="norm"))
    path = tmp_path / "gemma_like.keras"
    model.save(path)
    registered = keras.saving.get_custom_objects()
    key = f"{PACKAGE}>RMSNormalization"
    cls = registered.pop(key)  # as in a process that did not import the defining module
    try:
        assert_user_error(
            run_cli("emit", path, "-o", tmp_path / "out"),
            "RMSNormalization x1 ('norm')",
            "--plugin",
        )
    finally:
        registered[key] = cls
    assert not (tmp_path / "out").exists()


def test_user_class_in_a_file_is_traced_when_its_module_is_loaded(tmp_path):
    model = _model(RMSNormalization(name="norm"))
    randomize(model, seed=3)
    path = tmp_path / "gemma_like.keras"
    model.save(path)
    result = run_cli("verify", path, "--weights", "model")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout


def test_dropout_subclass_overriding_call_is_not_converted_as_dropout():
    x = keras.Input((4,))
    model = keras.Model(x, Dropout(0.5, name="drop")(keras.layers.Dense(4, name="d")(x)))
    conversion, _ = assert_parity(model)  # x * 2, where Dropout would be an identity
    assert "class Dropout(nn.Module):" in conversion.source
    assert "nn.Dropout" not in conversion.source


def test_wrapper_around_a_user_class_is_not_converted_as_keras_would():
    class Dense(keras.layers.Dense):
        def call(self, x):
            return super().call(x) * 3.0

    x = keras.Input((3, 4))
    model = keras.Model(x, keras.layers.TimeDistributed(Dense(2), name="td")(x))
    conversion, _ = assert_parity(model)
    assert "class TimeDistributed(nn.Module):" in conversion.source


def test_unknown_class_is_traced_without_calling_get_config():
    x = keras.Input((4,))
    model = keras.Model(x, Opaque(name="opaque")(keras.layers.Dense(4, name="d")(x)))
    Opaque.config_calls = 0
    conversion, _ = assert_parity(model)
    assert "class Opaque(nn.Module):" in conversion.source
    assert Opaque.config_calls == 0
