"""The plug-in API: a user converts a model with their own layer class by registering a
lowering from their own code (no fork of kgen), through Python and through the CLI."""

import importlib
import textwrap

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_parity
from keras import ops

from kgen.cli import main
from kgen.errors import UnsupportedError
from kgen.runtime import load_variables
from kgen.verify import compare, randomize

PLUGIN = textwrap.dedent(
    '''
    """A user's plug-in: the Keras layer class and its kgen lowering."""
    import keras
    from keras import ops

    from kgen.codegen import SELF, Call, Lowered, Module, Sym, register


    @keras.saving.register_keras_serializable(package="kgen_plugin_test")
    class ScaledDense(keras.layers.Layer):
        """x @ w * scale + b, with its own weights."""

        def __init__(self, units, scale=2.0, **kwargs):
            super().__init__(**kwargs)
            self.units, self.scale = units, scale

        def build(self, input_shape):
            self.w = self.add_weight(name="w", shape=(input_shape[-1], self.units))
            self.b = self.add_weight(name="b", shape=(self.units,), initializer="zeros")

        def call(self, x):
            return ops.matmul(x, self.w) * self.scale + self.b

        def get_config(self):
            return {**super().get_config(), "units": self.units, "scale": self.scale}


    @register("ScaledDense", family="plugin", handles={"units", "scale"})
    def lower_scaled_dense(node):
        # (x @ w) * scale + b == x @ (w * scale) + b: one nn.Dense with a rescaled kernel.
        scale = float(node.config["scale"])
        return Lowered(
            Call(SELF, (node.input,)),
            module=Module(Sym("nn.Dense"), (int(node.config["units"]),)),
            variables={"params": {"kernel": node.weight("w") * scale, "bias": node.weight("b")}},
        )
    '''
)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    (root / "kgen_plugin_test.py").write_text(PLUGIN)
    import sys

    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("kgen_plugin_test")
    finally:
        sys.path.remove(str(root))


def _model(plugin):
    x = keras.Input((6,), name="x")
    h = plugin.ScaledDense(5, scale=3.0, name="scaled")(x)
    y = keras.layers.Dense(2, name="head")(keras.layers.ReLU(name="relu")(h))
    return keras.Model(x, y, name="with_plugin_layer")


def test_plugin_lowering_in_python(plugin):
    conversion, _ = assert_parity(_model(plugin))
    assert "nn.Dense(5" in conversion.source


def test_plugin_through_cli(plugin, tmp_path):
    model = _model(plugin)
    randomize(model, seed=3)
    path = tmp_path / "custom.keras"
    model.save(path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["--plugin", "kgen_plugin_test", "emit", str(path), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    spec = importlib.util.spec_from_file_location("plugged", out / "with_plugin_layer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.WithPluginLayer()
    variables = load_variables(out / "with_plugin_layer.safetensors", module=net)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    report = compare(np.asarray(model(x)), net.apply(variables, x))
    assert report.ok, report.lines()


def test_missing_plugin_is_reported_with_the_plugin_route():
    @keras.saving.register_keras_serializable(package="kgen_plugin_test2")
    class NoLowering(keras.layers.Layer):
        def call(self, x):
            return x * 2.0 if ops.mean(x) > 0 else x  # untraceable: Python if on a value

        def compute_output_shape(self, shape):
            return shape

    x = keras.Input((4,))
    model = keras.Model(x, NoLowering(name="mystery")(x))
    import kgen

    with pytest.raises(UnsupportedError) as err:
        kgen.convert(model)
    message = str(err.value)
    assert "NoLowering x1 ('mystery'), whose call() kgen could not trace" in message
    assert "--plugin" in message and "register" in message


def test_lambda_layers_of_a_live_model_are_traced():
    from helpers import assert_parity

    def shift(t, amount=1.0):
        return t + amount

    x = keras.Input((4,))
    y = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    z = keras.layers.Lambda(shift, arguments={"amount": 3.0}, name="inc")(y)
    conversion, _ = assert_parity(keras.Model(x, z))
    assert "class Lambda(nn.Module):" in conversion.source
    assert "class Shift(nn.Module):" in conversion.source


def test_lambda_layers_are_not_traced_when_asked_not_to():
    import kgen

    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Lambda(lambda t: t + 1.0, name="inc")(x))
    with pytest.raises(UnsupportedError) as err:
        kgen.convert(model, trace_lambdas=False)
    message = str(err.value)
    assert "Lambda x1 ('inc')" in message and "never runs its code" in message
