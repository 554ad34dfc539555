"""Load a model from a CLI source: an application name or a model file.

Bad input is rejected with a :class:`~kgen.errors.SourceError` (one line), before Keras
is imported where the check does not need it.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kgen.errors import SourceError
from kgen.tracer import catalog

__all__ = ["MODEL_SUFFIXES", "LoadedModel", "load_model_file", "load_source", "load_weights_file"]

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5")


@dataclass
class LoadedModel:
    model: object
    app: catalog.Application | None
    real_weights: bool  # weights came from a file or ImageNet, not a fresh init
    module_name: str | None = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _looks_like_path(source: str) -> bool:
    """Application names are identifiers; anything with a dot or a slash is a file."""
    seps = {os.path.sep, os.path.altsep} - {None}
    return "." in source or any(s in source for s in seps) or Path(source).exists()


def _check_file(path: str, what: str, suffixes: tuple[str, ...], expected: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise SourceError(f"{what} {path!r} is a directory; expected {expected}")
    if not p.is_file():
        raise SourceError(f"{what} not found: {path}")
    if not p.name.endswith(suffixes):
        raise SourceError(f"{what} {path!r} must be {expected}")
    if p.name.endswith(".keras"):
        if not zipfile.is_zipfile(p):
            raise SourceError(f"{what} {path!r} is not a valid .keras file (not a zip archive)")
    else:
        import h5py

        if not h5py.is_hdf5(str(p)):
            raise SourceError(f"{what} {path!r} is not a valid HDF5 file")
    return p


# Keras 3's message for a .weights.h5 file that does not fit the model (saving_lib.py).
_KERAS_FAILED = re.compile(
    r"A total of (\d+) objects could not be loaded\. Example error message for object "
    r"<(\w+) name=([^,>]+)"
)
_KERAS_SHAPES = re.compile(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))")


def _weights_problem(exc: BaseException) -> str:
    """Keras's multi-paragraph loading error, shortened to the facts that matter."""
    text = " ".join(str(exc).split())
    failed, shapes = _KERAS_FAILED.search(text), _KERAS_SHAPES.search(text)
    if failed and shapes:
        n, cls, name = failed.groups()
        return (
            f"{n} layer(s) do not match the model, e.g. layer {name!r} ({cls}): the model "
            f"has shape {shapes.group(1)}, the file has {shapes.group(2)}"
        )
    return _one_line(exc)


def load_weights_file(model, path: str) -> None:
    """Load a Keras weights file (``.weights.h5``, or a legacy ``.h5``) into ``model``."""
    p = _check_file(path, "weights file", WEIGHTS_SUFFIXES, "a .weights.h5 or legacy .h5 file")
    try:
        model.load_weights(str(p))
    except Exception as exc:  # Keras raises ValueError/OSError/KeyError variously
        raise SourceError(f"cannot load weights from {path}: {_weights_problem(exc)}") from None


def load_source(source: str, weights: str | None = None, **options) -> LoadedModel:
    """``source`` is an application name or a ``.keras``/``.h5`` path.

    ``weights``: for applications ``"imagenet"`` (default), ``"none"`` or a weights file;
    for model files ``None`` (the file's own weights), ``"none"`` or a weights file.
    """
    if weights not in (None, "none", "model", "imagenet") and not _looks_like_path(weights):
        raise SourceError(
            f"--weights {weights!r} is neither an option nor a file path (see --help)"
        )
    if source not in catalog.APPLICATIONS and _looks_like_path(source):
        if weights == "imagenet":
            raise SourceError(
                "--weights imagenet only applies to application names (see `kgen list`)"
            )
        model = load_model_file(source)
        if weights not in (None, "none", "model"):
            load_weights_file(model, weights)
        return LoadedModel(model, None, real_weights=weights != "none")

    app = catalog.get(source)
    weights = weights or "imagenet"
    if weights not in ("imagenet", "none"):
        _check_file(weights, "weights file", WEIGHTS_SUFFIXES, "a .weights.h5 or legacy .h5 file")
    if weights == "imagenet":
        try:
            model = catalog.build(app, weights="imagenet", **options)
        except Exception as exc:
            raise SourceError(
                f"could not get the ImageNet weights for {app.name} ({_one_line(exc)}); "
                "offline, use --weights none (code only) or --weights PATH (a .weights.h5 file)"
            ) from None
        return LoadedModel(model, app, real_weights=True)
    try:
        model = catalog.build(app, weights=None, **options)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"cannot build {app.name} with these options: {_one_line(exc)}") from None
    if weights != "none":
        load_weights_file(model, weights)
    return LoadedModel(model, app, real_weights=weights != "none")


def load_model_file(path: str):
    """Load a saved model without executing anything it contains (Keras safe mode).

    Accepted: a ``.keras`` archive, a full-model ``.h5`` file, or a tf.keras SavedModel
    directory (``model.save("dir")`` in TF 2.x).  Whatever Keras wrote the file, its
    model config is read with plain ``json`` and checked (:func:`_refuse_unsafe`) before
    any Keras rebuilds it.  A file written by Keras 2 (``keras_version`` 2.x) is loaded
    with tf.keras, so it converts with Keras 2 semantics.
    """
    if Path(path).is_dir():
        return _load_saved_model(Path(path), path)
    p = _check_file(path, "model file", MODEL_SUFFIXES, "a .keras or .h5 model file")
    if p.name.endswith(".keras"):
        version, config = _keras_zip_config(p, path)
    else:
        version, config = _h5_config(p, path)
    if config is not None:
        _refuse_unsafe(config, path)
    if version.startswith("2."):
        return _load_tf_keras_file(p, path)
    import keras

    try:
        return keras.saving.load_model(str(p), compile=False, safe_mode=True)
    except Exception as exc:
        hint = ""
        if "No model config found" in str(exc):
            hint = " (it holds weights only: pass the model file, and this file as --weights)"
        raise SourceError(f"cannot load model file {path}: {_one_line(exc)}{hint}") from None


def _h5_text(value) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _h5_config(p: Path, path: str) -> tuple[str, str]:
    """A ``.h5`` model file's ``(keras_version, model_config JSON)``, read with h5py."""
    import h5py

    try:
        with h5py.File(str(p), "r") as f:
            version = _h5_text(f.attrs.get("keras_version")) or ""
            config = _h5_text(f.attrs.get("model_config"))
    except Exception as exc:
        raise SourceError(f"cannot read model file {path}: {_one_line(exc)}") from None
    if config is None:
        raise SourceError(
            f"cannot load model file {path}: it has no model config (it holds weights "
            "only: pass the model file, and this file as --weights)"
        )
    return version, config


def _keras_zip_config(p: Path, path: str) -> tuple[str, str | None]:
    """A ``.keras`` archive's ``(keras_version, config.json)``; Keras 3 writes 3.x, tf.keras
    2.13+ writes 2.x into ``metadata.json``."""
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            meta = z.read("metadata.json") if "metadata.json" in names else b"{}"
            config = z.read("config.json").decode("utf-8") if "config.json" in names else None
        version = json.loads(meta).get("keras_version", "")
    except (zipfile.BadZipFile, OSError, ValueError, AttributeError) as exc:
        raise SourceError(f"cannot read model file {path}: {_one_line(exc)}") from None
    return str(version), config


def _refuse_unsafe(config, path: str) -> None:
    """Refuse a model whose rebuilding would run code from the file.

    Rebuilding a tf.keras model unmarshals and runs the Python bytecode of its ``Lambda``
    layers (and of lambdas in RNN cell wrappers), and calls each ``TFOpLambda`` layer's TF
    function, named by the file, while it wires the graph.  So the file is refused when
    its config holds Lambda layers or serialised lambdas anywhere (nested models
    included), or a TFOpLambda symbol that kgen has no lowering for.
    """
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError as exc:
            raise SourceError(f"model file {path}: its model config is not JSON ({exc})") from None
    lambdas, symbols = _unsafe_parts(config)
    problems = []
    if lambdas:
        problems.append(
            f"{len(lambdas)} Lambda layer(s) or Python lambda(s) ({', '.join(lambdas[:5])}"
            f"{', ...' if len(lambdas) > 5 else ''}), whose code would run when the file "
            "is loaded"
        )
    if symbols:
        problems.append(
            f"TF op layer(s) calling {', '.join(sorted(set(symbols)))}, which kgen does not "
            "lower and would call when the file is loaded"
        )
    if problems:
        raise SourceError(
            f"refusing model file {path}: it contains {'; and '.join(problems)}. Move that "
            "code into a custom layer class, register a lowering for it and pass it with "
            "--plugin MODULE (see README, 'Custom layers')"
        )


def _unsafe_parts(config) -> tuple[list[str], list[str]]:
    """(Lambda layers and serialised lambdas, unlowered TFOpLambda symbols) in a model
    config, searched everywhere: nested models, wrappers, any depth."""
    from kgen.codegen.registry import lookup

    lambdas: list[str] = []
    symbols: list[str] = []
    stack = [config]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
            continue
        if not isinstance(value, dict):
            continue
        cls = value.get("class_name")
        inner = value.get("config") if isinstance(value.get("config"), dict) else {}
        name = inner.get("name", value.get("name", "?"))
        if cls == "Lambda":
            lambdas.append(f"Lambda {str(name)[:60]!r}")
            continue  # refused whole; its own config holds the bytecode
        if cls == "__lambda__":
            lambdas.append("a serialised lambda")
        elif cls in ("TFOpLambda", "SlicingOpLambda"):
            symbol = inner.get("function")
            if not isinstance(symbol, str) or lookup("tfop", symbol) is None:
                symbols.append(f"tf.{str(symbol)[:60]}")
        for key, item in value.items():
            # Cell wrappers store lambdas as {"<fn>_type": "lambda", "<fn>": bytecode}.
            if item == "lambda" and str(key).endswith("_type"):
                lambdas.append(f"a lambda in {cls or 'a config'} {str(name)[:60]!r}")
            stack.append(item)
    return lambdas, symbols


def _safe_mode():
    try:
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # pragma: no cover - older tf_keras
        from contextlib import nullcontext

        return nullcontext()
    return SafeModeScope(True)


def _load_tf_keras_file(p: Path, path: str):
    """Load a Keras 2 ``.h5`` or ``.keras`` model (already checked) with tf.keras."""
    import tf_keras

    try:
        with _safe_mode():
            return tf_keras.models.load_model(str(p), compile=False)
    except Exception as exc:
        raise SourceError(f"cannot load model file {path}: {_one_line(exc)}") from None


def _load_saved_model(p: Path, path: str):
    """Rebuild a tf.keras SavedModel directory from its Keras metadata, then restore its
    variables from the checkpoint inside.

    Nothing of the SavedModel's own graph is loaded or run: ``keras_metadata.pb`` is a
    protobuf holding the model config as JSON, which is checked like any other config,
    and ``variables/`` is a tensor checkpoint.
    """
    if not (p / "saved_model.pb").is_file():
        raise SourceError(
            f"model file {path!r} is a directory but not a SavedModel (no saved_model.pb); "
            "expected a .keras or .h5 model file or a tf.keras SavedModel directory"
        )
    if not (p / "keras_metadata.pb").is_file():
        raise SourceError(
            f"{path} is a TensorFlow SavedModel without Keras metadata (written by "
            "tf.saved_model.save or model.export), so it holds no Keras layer graph; save "
            "the Keras model itself with model.save('model.keras')"
        )
    try:
        from tf_keras.protobuf import saved_metadata_pb2

        metadata = saved_metadata_pb2.SavedMetadata()
        metadata.ParseFromString((p / "keras_metadata.pb").read_bytes())
        root = next(n for n in metadata.nodes if n.node_path == "root")
        meta = json.loads(root.metadata)
    except Exception as exc:
        raise SourceError(f"cannot read the Keras metadata of {path}: {_one_line(exc)}") from None
    config = meta.get("model_config")
    if not isinstance(config, dict) or "config" not in config:
        cls = str(meta.get("class_name", "?"))[:60]
        raise SourceError(
            f"cannot rebuild the model in {path}: its class {cls!r} has no saved config "
            "(a subclassed model); kgen converts functional and Sequential models"
        )
    _refuse_unsafe(config, path)

    import tf_keras
    from tf_keras.src.saving.legacy.saved_model import json_utils

    try:
        with _safe_mode():
            model = tf_keras.models.model_from_config(json_utils.decode(json.dumps(config)))
    except Exception as exc:
        raise SourceError(f"cannot rebuild the model in {path}: {_one_line(exc)}") from None
    try:
        status = model.load_weights(str(p / "variables" / "variables"))
        status.assert_existing_objects_matched()
    except Exception as exc:
        raise SourceError(f"cannot restore the variables of {path}: {_one_line(exc)}") from None
    return model
