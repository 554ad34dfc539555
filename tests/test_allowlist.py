"""Model files are untrusted: hostile files are refused before any Keras reads them.

Each hostile file is crafted the way an attacker would: a working model file whose
config gains one object that tf.keras (or Keras) would execute or read while it rebuilds
the model.  Each test runs ``kgen emit`` on it and asserts exit code 2, a one-line
message naming the offender, no marker file, nothing read, and an empty output
directory; then it loads the same file with Keras directly, unchecked, to prove the
file really does what the check stops.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import pytest
from helpers import run_cli
from test_errors import assert_user_error

from kgen.errors import SourceError
from kgen.tracer import allowlist
from kgen.tracer.load import load_model_file

tf = pytest.importorskip("tensorflow")
tfk = pytest.importorskip("tf_keras")


# --- crafting ---------------------------------------------------------------------------


def _tf_keras_model():
    x = tfk.Input((4,), name="x")
    return tfk.Model(x, tf.math.multiply(tfk.layers.Dense(3, name="d")(x), 2.0), name="m")


def _class_method(marker: Path) -> dict:
    """``tf.io.write_file(marker, "owned")``, called eagerly while tf.keras rebuilds the
    graph: a ClassMethod op layer whose inputs are all constants."""
    const = ["_CONSTANT_VALUE", -1]
    return {
        "class_name": "ClassMethod",
        "config": {
            "name": "evil",
            "trainable": True,
            "dtype": "float32",
            "cls_symbol": "io.write_file",
            "method_name": "__call__",
        },
        "name": "evil",
        "inbound_nodes": [
            [[*const, str(marker), {"kwargs": {}}], [*const, "owned", {"kwargs": {}}]]
        ],
    }


def _instance_method() -> dict:
    """A method call on a constant: an InstanceMethod op layer tf.keras calls while
    loading (the attribute is the file's choice)."""
    return {
        "class_name": "InstanceMethod",
        "config": {"name": "evil_method", "trainable": True, "attr_name": "upper"},
        "name": "evil_method",
        "inbound_nodes": [[["_CONSTANT_VALUE", -1, "owned", {"args": [], "kwargs": {}}]]],
    }


def _with_layer(config: dict, layer: dict, keras_archive: bool = False) -> dict:
    config = json.loads(json.dumps(config))
    if keras_archive:  # tf.keras 2.13+ archives name each class's module
        layer = {"module": "tf_keras.src.layers.core.tf_op_layer", "registered_name": None, **layer}
    config["config"]["layers"].insert(1, layer)
    return config


def _h5(tmp_path, layer) -> Path:
    path = tmp_path / "model.h5"
    _tf_keras_model().save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(_with_layer(config, layer))
    return path


def _keras_2x(tmp_path, layer) -> Path:
    plain = tmp_path / "plain.keras"
    _tf_keras_model().save(plain)
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
        assert json.loads(src.read("metadata.json"))["keras_version"].startswith("2.")
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(_with_layer(json.loads(data), layer, keras_archive=True))
            dst.writestr(item, data)
    plain.unlink()
    return path


def _saved_model(tmp_path, layer) -> Path:
    from tf_keras.protobuf import saved_metadata_pb2

    path = tmp_path / "model_savedmodel"
    _tf_keras_model().save(path)
    metadata = saved_metadata_pb2.SavedMetadata()
    metadata.ParseFromString((path / "keras_metadata.pb").read_bytes())
    root = next(n for n in metadata.nodes if n.node_path == "root")
    meta = json.loads(root.metadata)
    meta["model_config"] = _with_layer(meta["model_config"], layer)
    root.metadata = json.dumps(meta)
    (path / "keras_metadata.pb").write_bytes(metadata.SerializeToString())
    return path


def _load_unchecked(path: Path):
    """What tf.keras does with the file when nothing checks it first."""
    if path.is_dir():
        from tf_keras.protobuf import saved_metadata_pb2
        from tf_keras.src.saving.legacy.saved_model import json_utils

        metadata = saved_metadata_pb2.SavedMetadata()
        metadata.ParseFromString((path / "keras_metadata.pb").read_bytes())
        root = next(n for n in metadata.nodes if n.node_path == "root")
        config = json.loads(root.metadata)["model_config"]
        return tfk.models.model_from_config(json_utils.decode(json.dumps(config)))
    return tfk.models.load_model(path, compile=False)


def _assert_refused(path: Path, tmp_path: Path, *fragments: str) -> str:
    out = tmp_path / "out"
    out.mkdir()
    line = assert_user_error(run_cli("emit", path, "-o", out), "refusing model file", *fragments)
    assert list(out.iterdir()) == []
    return line


# --- the hostile files ------------------------------------------------------------------

FORMATS = {"h5": _h5, "keras_2x": _keras_2x, "savedmodel": _saved_model}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_class_method_write_file_is_refused_before_loading(tmp_path, fmt):
    marker = tmp_path / "elsewhere" / "pwned"
    marker.parent.mkdir()
    path = FORMATS[fmt](tmp_path, _class_method(marker))

    line = _assert_refused(path, tmp_path, "ClassMethod x1 ('evil')")
    assert "--plugin" in line
    assert not marker.exists()
    assert list(marker.parent.iterdir()) == []

    # The check is what stops it: tf.keras itself writes the file while loading.
    with contextlib.suppress(Exception):  # it fails afterwards; the file is written by then
        _load_unchecked(path)
    assert marker.read_bytes() == b"owned"


def test_class_method_h5_in_a_real_process(tmp_path):
    """The same through the installed command, as a user runs it."""
    marker = tmp_path / "pwned"
    path = _h5(tmp_path, _class_method(marker))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "kgen.cli", "emit", str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ClassMethod" in lines[0], result.stderr
    assert not marker.exists() and not out.exists()


def test_instance_method_is_refused_before_loading(tmp_path, monkeypatch):
    path = _h5(tmp_path, _instance_method())
    _assert_refused(path, tmp_path, "InstanceMethod x1 ('evil_method')")

    # Unchecked, tf.keras calls the method while it rebuilds the graph.
    from tf_keras.src.layers.core import tf_op_layer

    calls = []
    real = tf_op_layer.InstanceMethod.call

    def spy(self, obj, args, kwargs):
        calls.append(self.attr_name)
        return real(self, obj, args, kwargs)

    monkeypatch.setattr(tf_op_layer.InstanceMethod, "call", spy)
    with contextlib.suppress(Exception):  # it fails later on, after the call
        _load_unchecked(path)
    assert calls == ["upper"]


def _lookup_h5(tmp_path, vocabulary_path: Path) -> Path:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\nc\n")
    x = tfk.Input((1,), dtype="string", name="x")
    model = tfk.Model(x, tfk.layers.StringLookup(vocabulary=str(vocab), name="lookup")(x))
    path = tmp_path / "lookup.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        text = f.attrs["model_config"]
        text = text.decode() if isinstance(text, bytes) else text
        f.attrs["model_config"] = text.replace(
            json.dumps(str(vocab)), json.dumps(str(vocabulary_path))
        )
    return path


def test_lookup_vocabulary_path_is_refused_without_reading_it(tmp_path):
    # The path is one that must stay untouched: it does not exist, so any attempt to
    # read it would fail with Keras's own "not found" error instead of kgen's refusal.
    secret = tmp_path / "never" / "secret.txt"
    path = _lookup_h5(tmp_path, secret)
    _assert_refused(path, tmp_path, "'lookup'", "vocabulary=", "file path")
    assert not secret.parent.exists()

    # Unchecked, tf.keras goes looking for the file.
    with pytest.raises(Exception, match=r"secret\.txt"):
        _load_unchecked(path)


# --- what the allowlist lets through ----------------------------------------------------


def _has_lowering(kind, name, **identity):
    from kgen.codegen.registry import has_lowering

    return has_lowering(kind, name, **identity)


def test_file_kgen_converts_is_allowed(tmp_path):
    path = tmp_path / "ok.h5"
    _tf_keras_model().save(path)
    assert load_model_file(str(path)) is not None


def test_unknown_tf_symbol_and_constant_only_op_are_refused():
    base = {"class_name": "Functional", "config": {"name": "m", "layers": []}}

    def config_with(*layers):
        config = json.loads(json.dumps(base))
        config["config"]["layers"] = [
            {"class_name": "InputLayer", "config": {"name": "x"}, "name": "x", "inbound_nodes": []},
            *layers,
        ]
        return config

    def op(name, symbol, node):
        return {
            "class_name": "TFOpLambda",
            "config": {"name": name, "function": symbol},
            "name": name,
            "inbound_nodes": [node],
        }

    ok = config_with(op("mul", "math.multiply", ["x", 0, 0, {"y": 2.0}]))
    allowlist.check_config(ok, "f", source="tf_keras", has_lowering=_has_lowering)

    bad_symbol = config_with(op("w", "io.write_file", ["x", 0, 0, {"contents": "a"}]))
    with pytest.raises(SourceError, match=r"calls tf\.io\.write_file"):
        allowlist.check_config(bad_symbol, "f", source="tf_keras", has_lowering=_has_lowering)

    constant = config_with(op("c", "math.multiply", ["_CONSTANT_VALUE", -1, 3.0, {"y": 2.0}]))
    with pytest.raises(SourceError, match="'c' takes only constant inputs"):
        allowlist.check_config(constant, "f", source="tf_keras", has_lowering=_has_lowering)


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ({"class_name": "__lambda__", "config": {"value": "abc"}}, "holds Python code"),
        (
            {"module": "os", "class_name": "function", "config": "system"},
            "is not a Keras activation",
        ),
        (
            {"module": "builtins", "class_name": "GlorotUniform", "config": {}},
            "not a Keras object kgen allows",
        ),
        (
            {"class_name": "TypeSpec", "type_spec": "x", "serialized": []},
            "Python or TF object",
        ),
    ],
    ids=["lambda", "foreign_function", "initializer_from_elsewhere", "typespec"],
)
def test_objects_outside_the_allowlist_are_refused(obj, fragment):
    config = {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {
            "name": "m",
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "Dense",
                    "config": {"name": "d", "units": 2, "kernel_initializer": obj},
                    "name": "d",
                    "inbound_nodes": [],
                }
            ],
        },
    }
    with pytest.raises(SourceError, match=fragment):
        allowlist.check_config(config, "f", source="keras3", has_lowering=_has_lowering)


def test_keras3_class_from_a_foreign_module_is_refused():
    """Keras 3 would import the module a config names (in its first-party packages);
    tf.keras imports any.  A class name kgen knows, from another module, is refused."""
    layer = {
        "module": "evil_package.layers",
        "class_name": "Dense",
        "config": {"name": "d", "units": 2},
        "name": "d",
        "inbound_nodes": [],
    }
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [layer]}}
    for source in ("keras3", "tf_keras"):
        with pytest.raises(SourceError, match=r"Dense x1 \('d'\)"):
            allowlist.check_config(config, "f", source=source, has_lowering=_has_lowering)


def test_first_party_keras3_classes_pass_the_file_check():
    """keras_hub classes load under Keras's safe mode; kgen reports what it cannot
    convert after tracing instead of refusing the file."""
    layer = {
        "module": "keras_hub.src.layers.modeling.transformer_encoder",
        "class_name": "TransformerEncoder",
        "config": {"name": "enc"},
        "name": "enc",
        "inbound_nodes": [],
    }
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [layer]}}
    allowlist.check_config(config, "f", source="keras3", has_lowering=_has_lowering)
    with pytest.raises(SourceError, match="TransformerEncoder"):
        allowlist.check_config(config, "f", source="tf_keras", has_lowering=_has_lowering)


# --- bounded input ----------------------------------------------------------------------


def _keras3_file(tmp_path) -> Path:
    import keras

    x = keras.Input((3,), name="x")
    path = tmp_path / "small.keras"
    keras.Model(x, keras.layers.Dense(2, name="d")(x)).save(path)
    return path


def _replace_member(path: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(path) as z:
        items = [(i, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for item, content in items:
            z.writestr(item.filename, data if item.filename == name else content)


def test_oversized_config_is_refused_before_parsing(tmp_path, monkeypatch):
    path = _keras3_file(tmp_path)
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    config["config"]["padding"] = " " * (allowlist.MAX_CONFIG_BYTES + 10)
    _replace_member(path, "config.json", json.dumps(config).encode())
    assert path.stat().st_size < 1_000_000  # a zip bomb: tiny on disk

    def no_parse(*args, **kwargs):
        raise AssertionError("the config was parsed")

    monkeypatch.setattr(json, "loads", no_parse)
    line = assert_user_error(run_cli("emit", path, "-o", tmp_path / "out"), "MiB")
    assert "model config" in line


def test_deeply_nested_config_is_a_user_error(tmp_path):
    path = _keras3_file(tmp_path)
    with zipfile.ZipFile(path) as z:
        text = z.read("config.json").decode()
    deep = "[" * 200_000 + "]" * 200_000
    _replace_member(
        path, "config.json", text.replace('"trainable": true', f'"trainable": {deep}', 1).encode()
    )
    assert_user_error(run_cli("emit", path, "-o", tmp_path / "out"), "nested")

    shallow_but_deep = "[" * 150 + "]" * 150  # parses, but deeper than kgen allows
    _replace_member(
        path,
        "config.json",
        text.replace('"trainable": true', f'"trainable": {shallow_but_deep}', 1).encode(),
    )
    assert_user_error(run_cli("emit", path, "-o", tmp_path / "out"), "nested")


def test_config_layer_without_a_name_gets_a_sentence(tmp_path):
    path = _keras3_file(tmp_path)
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Dense":
            del layer["name"]
            del layer["config"]["name"]
    _replace_member(path, "config.json", json.dumps(config).encode())
    assert_user_error(run_cli("emit", path, "-o", tmp_path / "out"), "has no name")


# --- the allowlist refuses no application ------------------------------------------------

_DEFAULT_APPS = {"MobileNetV2", "EfficientNetB0", "NASNetMobile", "RegNetY002", "ResNetRS50"}


def _app_params():
    from kgen.tracer.catalog import APPLICATIONS

    return [
        pytest.param(name, marks=() if name in _DEFAULT_APPS else pytest.mark.catalog)
        for name in APPLICATIONS
    ]


@pytest.mark.parametrize("name", _app_params())
def test_application_config_is_allowed(name):
    """Every application's config, as its Keras saves it, passes the file check."""
    import keras

    from kgen.tracer import catalog

    app = catalog.get(name)
    model = catalog.build(app, weights=None)
    if app.source == "keras3":
        text = json.dumps(keras.saving.serialize_keras_object(model))
    else:
        text = model.to_json()
    config = allowlist.parse_config(text, name)
    allowlist.check_config(config, name, source=app.source, has_lowering=_has_lowering)
