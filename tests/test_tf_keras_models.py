"""Whole legacy tf.keras (Keras 2, ``tf_keras``) models: Keras 2 ``.h5`` model files
through ``kgen emit``, the tf.keras-only applications (ResNetRS, RegNetX/Y) and legacy
``.h5`` weights files.  Every variable is randomised and each result is compared with
tf.keras itself in the same test."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import rand

from kgen.verify import TOLERANCE, check_model, compare, randomize

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

tf = pytest.importorskip("tensorflow")
tfk = pytest.importorskip("tf_keras")
L = tfk.layers


def emit(*args):
    """Run ``kgen emit ... --json``; return the parsed JSON line."""
    from kgen.cli import main

    result = CliRunner().invoke(main, ["emit", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def import_emitted(info):
    """Import an emitted module from its file; return (module instance, variables)."""
    from kgen import runtime as rt

    name = f"kgen_test_{info['class']}"
    spec = importlib.util.spec_from_file_location(name, info["module"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    instance = getattr(module, info["class"])()
    return instance, rt.load_variables(info["weights"], module=instance)


def apply(instance, variables, *inputs):
    import jax

    return jax.device_get(jax.jit(lambda v, *xs: instance.apply(v, *xs))(variables, *inputs))


# --- (a) a Keras 2 .h5 model file with TF ops on Keras tensors -------------------------


def _custom_model(ellipsis: bool = True):
    inp = tfk.Input((8, 8, 3), name="image")
    x = L.Conv2D(6, 3, padding="same", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = tf.nn.relu(x) * 2.0  # TFOpLambda: nn.relu, math.multiply
    y = tf.concat([x[:, ::2, ::2, :3], x[:, 1::2, 1::2, -3:]], axis=-1)  # slicing + concat
    y = y - tf.reduce_mean(y, axis=[1, 2], keepdims=True)
    z = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(y)
    pooled = tf.reduce_mean(z, [1, 2])  # positional axis
    # tf.keras cannot write an Ellipsis into a .keras archive's config
    out = L.Dense(5, name="logits")((pooled[..., 1:] if ellipsis else pooled[:, 1:]) / 3.0)
    return tfk.Model(inp, out, name="custom_tf_ops")


# tf.keras 2 writes three full-model formats: a SavedModel directory (the TF 2 default,
# ``model.save("dir")``), a legacy ``.h5`` file and, since 2.13, a ``.keras`` archive.
MODEL_FORMATS = {"h5": "m.h5", "savedmodel": "m_savedmodel", "keras": "m.keras"}


@pytest.mark.parametrize("fmt", sorted(MODEL_FORMATS))
def test_model_file_with_tf_ops(tmp_path, fmt):
    model = _custom_model(ellipsis=fmt != "keras")
    randomize(model, seed=0)
    path = tmp_path / MODEL_FORMATS[fmt]
    model.save(path)
    assert path.is_dir() == (fmt == "savedmodel")

    info = emit(str(path), "-o", str(tmp_path / "out"))
    imports = [
        line.split()[1]
        for line in Path(info["module"]).read_text().splitlines()
        if line.startswith(("import ", "from "))
    ]
    assert not any(m.split(".")[0] in ("tensorflow", "keras", "tf_keras") for m in imports)
    instance, variables = import_emitted(info)
    x = rand(2, 8, 8, 3, seed=4)
    report = compare(model(x, training=False).numpy(), apply(instance, variables, x))
    assert report.ok, report.lines()


@pytest.mark.parametrize("fmt", ["h5", "savedmodel"])
def test_text_classifier_file_with_masks(tmp_path, fmt):
    """The usual tf.keras text model: padded tokens, Embedding(mask_zero=True), a
    bidirectional LSTM that must skip the padding, attention pooling, logits."""
    tokens = tfk.Input((9,), name="tokens")
    x = L.Embedding(50, 8, mask_zero=True, name="embed")(tokens)
    x = L.Bidirectional(L.LSTM(6, return_sequences=True), name="bilstm")(x)
    x = L.Attention(name="self_attention")([x, x])
    x = L.GlobalAveragePooling1D(name="pool")(x)
    model = tfk.Model(tokens, L.Dense(3, name="logits")(x), name="text_classifier")
    randomize(model, seed=2)
    path = tmp_path / ("m.h5" if fmt == "h5" else "m_savedmodel")
    model.save(path)

    info = emit(str(path), "-o", str(tmp_path / "out"))
    instance, variables = import_emitted(info)
    x = np.random.default_rng(0).integers(1, 50, size=(3, 9)).astype("float32")
    x[0, 5:], x[1, 2:], x[2, :] = 0, 0, 0  # padding, and a row that is all padding
    x[2, 0] = 7
    report = compare(model(x, training=False).numpy(), apply(instance, variables, x))
    assert report.ok, report.lines()


def test_keras2_h5_loads_with_tf_keras_and_keras3_h5_with_keras(tmp_path):
    import keras

    from kgen.tracer.load import load_model_file

    inp = tfk.Input((4,))
    tfk.Model(inp, L.Dense(2)(inp)).save(tmp_path / "k2.h5")
    inp3 = keras.Input((4,))
    keras.Model(inp3, keras.layers.Dense(2)(inp3)).save(tmp_path / "k3.h5")

    assert isinstance(load_model_file(str(tmp_path / "k2.h5")), tfk.Model)
    k3 = load_model_file(str(tmp_path / "k3.h5"))
    assert isinstance(k3, keras.Model) and not isinstance(k3, tfk.Model)


def _lambda_h5(tmp_path, marker, nested: bool, name: str = "lambda.h5"):
    """A Keras 2 model file whose Lambda would create ``marker`` when the model is
    rebuilt."""

    def evil():  # a real lambda: tf.keras saves its marshalled bytecode
        return L.Lambda(lambda t, p=str(marker): (open(p, "w").close(), t)[1], name="evil")

    if nested:
        inner_in = tfk.Input((3,))
        inner = tfk.Model(inner_in, evil()(inner_in), name="inner")
        inp = tfk.Input((3,))
        model = tfk.Model(inp, L.Dense(2)(inner(inp)))
    else:
        inp = tfk.Input((3,))
        model = tfk.Model(inp, L.Dense(2)(evil()(inp)))
    path = tmp_path / name
    model.save(path)
    marker.unlink()  # building (and tracing) the model above ran the lambda
    return path


@pytest.mark.parametrize("nested", [False, True], ids=["top_level", "nested_model"])
def test_h5_with_lambda_is_refused_without_running_it(tmp_path, nested):
    from kgen.errors import SourceError
    from kgen.tracer.load import load_model_file

    marker = tmp_path / "marker"
    path = _lambda_h5(tmp_path, marker, nested)

    with pytest.raises(SourceError) as info:
        load_model_file(str(path))
    message = str(info.value)
    assert "\n" not in message and "'evil'" in message and "Lambda" in message
    assert "--plugin" in message
    assert not marker.exists()

    from kgen.cli import main

    result = CliRunner().invoke(main, ["emit", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "'evil'" in result.output
    assert not marker.exists() and not (tmp_path / "out").exists()

    # The check is what stops it: loading the file unchecked runs the file's bytecode.
    tfk.models.load_model(path, compile=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["lambda_savedmodel", "lambda.keras"])
def test_other_formats_with_lambda_are_refused_without_running_it(tmp_path, name):
    from kgen.errors import SourceError
    from kgen.tracer.load import load_model_file

    marker = tmp_path / "marker"
    path = _lambda_h5(tmp_path, marker, nested=True, name=name)
    with pytest.raises(SourceError, match="Lambda 'evil'"):
        load_model_file(str(path))
    assert not marker.exists()


def test_savedmodel_without_keras_metadata_is_refused(tmp_path):
    from kgen.errors import SourceError
    from kgen.tracer.load import load_model_file

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3])])
        def __call__(self, x):
            return x * 2.0

    tf.saved_model.save(Plain(), str(tmp_path / "plain"))
    with pytest.raises(SourceError, match="without Keras metadata"):
        load_model_file(str(tmp_path / "plain"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="not a SavedModel"):
        load_model_file(str(tmp_path / "empty"))


def test_subclassed_savedmodel_is_refused(tmp_path):
    from kgen.errors import SourceError
    from kgen.tracer.load import load_model_file

    class Sub(tfk.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Sub()
    model(tf.zeros((1, 3)))
    model.save(tmp_path / "sub")
    with pytest.raises(SourceError, match="subclassed") as info:
        load_model_file(str(tmp_path / "sub"))
    assert "\n" not in str(info.value)


def test_savedmodel_variables_are_restored(tmp_path):
    """A SavedModel is rebuilt from its config: its variables must come from its own
    checkpoint, not a fresh initialisation."""
    from kgen.tracer.load import load_model_file

    model = _custom_model()
    randomize(model, seed=3)
    model.save(tmp_path / "sm")
    loaded = load_model_file(str(tmp_path / "sm"))
    assert isinstance(loaded, tfk.Model)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):
        assert a.name == b.name
        assert (a.numpy() == b.numpy()).all(), a.name


def test_h5_with_unlowered_tf_symbol_is_refused(tmp_path):
    """A TFOpLambda names a TF function that tf.keras calls while rebuilding the model:
    only symbols kgen lowers are let through."""
    from kgen.errors import SourceError
    from kgen.tracer.load import load_model_file

    inp = tfk.Input((4,))
    tfk.Model(inp, tf.math.cumsum(inp, axis=1)).save(tmp_path / "cumsum.h5")
    with pytest.raises(SourceError, match=r"tf\.math\.cumsum"):
        load_model_file(str(tmp_path / "cumsum.h5"))


# --- (b) the tf.keras-only applications ------------------------------------------------

DEFAULT_APPS = ["RegNetX002", "RegNetY002"]  # ResNetRS50: the module fixture below


def _tf_keras_apps():
    from kgen.tracer.catalog import APPLICATIONS

    return [name for name, app in APPLICATIONS.items() if app.source == "tf_keras"]


def _check_app(name):
    model = getattr(tfk.applications, name)(weights=None, classifier_activation=None)
    _, report = check_model(model)
    assert report.ok, "\n".join(report.lines())
    return report


@pytest.mark.parametrize("name", DEFAULT_APPS)
def test_application(name):
    _check_app(name)


@pytest.mark.catalog
@pytest.mark.parametrize("name", _tf_keras_apps())
def test_application_catalog(name):
    _check_app(name)


def test_catalog_has_all_31_tf_keras_applications():
    names = _tf_keras_apps()
    assert len(names) == 31
    assert all(hasattr(tfk.applications, n) for n in names)


@pytest.fixture(scope="module")
def resnet_rs50(tmp_path_factory):
    """ResNetRS50 (logits), randomised once, and its legacy .h5 weights file."""
    model = tfk.applications.ResNetRS50(weights=None, classifier_activation=None)
    randomize(model, seed=0)
    path = tmp_path_factory.mktemp("resnetrs") / "w.h5"
    model.save_weights(path)
    return model, path


def test_resnet_rs50(resnet_rs50):
    model, _ = resnet_rs50
    _, report = check_model(model, randomize_weights=False)
    assert report.ok, "\n".join(report.lines())


# --- (c) kgen emit ResNetRS50 --weights <legacy .h5 weights file> ----------------------


def test_emit_resnet_rs50_with_legacy_h5_weights(resnet_rs50, tmp_path):
    model, weights = resnet_rs50
    info = emit(
        "ResNetRS50",
        "--weights",
        str(weights),
        "--classifier-activation",
        "none",
        "-o",
        str(tmp_path),
    )
    instance, variables = import_emitted(info)
    x = rand(2, 224, 224, 3, seed=7, low=0.0, high=255.0)
    report = compare(model(x, training=False).numpy(), apply(instance, variables, x))
    # The reference is the randomised model, so this also shows the file's weights were used.
    assert report.ok and report.max_rel <= TOLERANCE, report.lines()
