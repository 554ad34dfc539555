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
from kgen.tracer import allowlist, catalog

__all__ = ["MODEL_SUFFIXES", "LoadedModel", "load_model_file", "load_source", "load_weights_file"]

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5")


@dataclass
class LoadedModel:
    model: object
    app: catalog.Application | None
    real_weights: bool  # weights came from a file or ImageNet, not a fresh init
    fresh_layers: tuple = ()  # layers left at Keras's initialisation (a new head)
    module_name: str | None = None
    input_shapes: tuple | None = None  # a subclassed model's, from input_shape=
    from_code: bool = False  # built by the user's own code (module:factory), not a file


#: ``package.module:factory``: a model built by the user's own (trusted) code.
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory(source: str) -> bool:
    return bool(FACTORY.match(source)) and not Path(source).exists()


def load_factory(source: str, input_shape: tuple | None = None) -> LoadedModel:
    """``module:factory``: import ``module`` (trusted code, as a ``--plugin`` is) and call
    ``factory()`` for the model, or take ``factory`` itself when it is a model.  A
    subclassed model that was never called is built on zeros of ``input_shape``."""
    import importlib

    module_name, _, attr = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceError(
            f"cannot import {module_name!r} for {source!r}: {_one_line(exc)}"
        ) from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise SourceError(f"module {module_name!r} has no {attr!r}")
    model = factory
    if callable(factory) and not hasattr(factory, "layers"):
        try:
            model = factory()
        except Exception as exc:
            raise SourceError(f"{source}() raised {type(exc).__name__}: {_one_line(exc)}") from None
    if not hasattr(model, "layers") or not hasattr(model, "get_config"):
        raise SourceError(f"{source} is not a Keras model (got {type(model).__name__})")
    if input_shape is not None and not getattr(model, "built", True):
        import numpy as np

        try:
            model(np.zeros((1, *input_shape), "float32"))
        except Exception as exc:
            raise SourceError(
                f"{source}: calling the model on input shape {input_shape} raised "
                f"{type(exc).__name__}: {_one_line(exc)}"
            ) from None
    shapes = None if input_shape is None else (tuple(input_shape),)
    return LoadedModel(model, None, real_weights=True, input_shapes=shapes, from_code=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def looks_like_path(source: str) -> bool:
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


def load_source(
    source: str, weights: str | None = None, *, has_lowering=None, **options
) -> LoadedModel:
    """``source`` is an application name or a ``.keras``/``.h5`` path.

    ``weights``: for applications ``"imagenet"`` (default), ``"none"`` or a weights file;
    for model files ``None`` (the file's own weights), ``"none"`` or a weights file.
    ``has_lowering``: see :func:`load_model_file`.
    """
    if is_factory(source):
        if weights not in (None, "model", "none"):
            raise SourceError("weights= only applies to application names and model files")
        return load_factory(source, options.get("input_shape"))
    if weights not in (None, "none", "model", "imagenet") and not looks_like_path(weights):
        raise SourceError(f"weights={weights!r} is neither imagenet, none, model nor a file path")
    if source not in catalog.APPLICATIONS and looks_like_path(source):
        if weights == "imagenet":
            raise SourceError(
                "weights=imagenet only applies to application names (see `kgen list`)"
            )
        model = load_model_file(source, has_lowering)
        if weights not in (None, "none", "model"):
            load_weights_file(model, weights)
        return LoadedModel(model, None, real_weights=weights != "none")

    app = catalog.get(source)
    weights = weights or "imagenet"
    if weights not in ("imagenet", "none"):
        _check_file(weights, "weights file", WEIGHTS_SUFFIXES, "a .weights.h5 or legacy .h5 file")
    if weights == "imagenet":
        classes = options.get("classes")
        if classes not in (None, 1000) and options.get("include_top", True):
            return _pretrained_backbone(app, options)
        return LoadedModel(_build_imagenet(app, options), app, real_weights=True)
    model = _build_fresh(app, options)
    if weights != "none":
        load_weights_file(model, weights)
    return LoadedModel(model, app, real_weights=weights != "none")


def _build_imagenet(app, options: dict):
    """``app`` with the ImageNet weights (Keras's download and cache)."""
    try:
        return catalog.build(app, weights="imagenet", **options)
    except Exception as exc:
        raise SourceError(
            f"could not get the ImageNet weights for {app.name} ({_one_line(exc)}); "
            "offline, use weights=none (code only) or weights=PATH (a .weights.h5 file)"
        ) from None


def _build_fresh(app, options: dict):
    """``app`` at Keras's initialisation."""
    try:
        return catalog.build(app, weights=None, **options)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"cannot build {app.name} with these options: {_one_line(exc)}") from None


def _pretrained_backbone(app, options: dict) -> LoadedModel:
    """``classes`` other than ImageNet's with the ImageNet weights: what ``timm``'s
    ``num_classes`` gives.  The model is built with the new head; every layer whose
    weights have the ImageNet model's shapes gets them, the head keeps Keras's
    initialisation (Keras itself refuses this combination)."""
    pretrained = _build_imagenet(app, {k: v for k, v in options.items() if k != "classes"})
    model = _build_fresh(app, options)
    source = {layer.name: layer for layer in pretrained.layers}
    fresh = []
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        match = source.get(layer.name)
        theirs = match.get_weights() if match is not None else None
        if theirs is None or [w.shape for w in theirs] != [w.shape for w in weights]:
            fresh.append(layer.name)
            continue
        layer.set_weights(theirs)
    if not fresh or len(fresh) > 3:  # a head is one or two layers, never the backbone
        raise SourceError(
            f"cannot give {app.name} a {options['classes']}-class head on the ImageNet "
            f"weights: {len(fresh)} layers differ from the ImageNet model"
        )
    return LoadedModel(model, app, real_weights=True, fresh_layers=tuple(fresh))


def with_outputs(model, names) -> object:
    """``model`` returning the outputs of the layers ``names`` (in that order)."""
    found = {layer.name: layer for layer in model.layers}
    tensors = []
    for name in names:
        layer = found.get(name)
        if layer is None:
            shown = ", ".join(list(found)[-5:])
            raise SourceError(
                f"outputs: no layer named {name!r} in model {model.name!r} "
                f"(its last layers: {shown})"
            )
        try:
            tensors.append(layer.output)
        except (AttributeError, ValueError) as exc:  # a layer called more than once
            raise SourceError(
                f"outputs: layer {name!r} has no single output ({_one_line(exc)})"
            ) from None
    module = type(model).__module__
    if module.startswith("tf_keras"):
        import tf_keras as keras_module
    else:
        import keras as keras_module
    return keras_module.Model(
        model.inputs, tensors[0] if len(tensors) == 1 else tensors, name=model.name
    )


def load_model_file(path: str, has_lowering=None):
    """Load a saved model without executing anything it contains.

    Accepted: a ``.keras`` archive, a full-model ``.h5`` file, or a tf.keras SavedModel
    directory (``model.save("dir")`` in TF 2.x).  Whatever Keras wrote the file, its
    model config is read with plain ``json`` and checked against the allowlist
    (:mod:`kgen.tracer.allowlist`) before any Keras rebuilds it; ``has_lowering`` is the
    lowering registry's answer to "does kgen convert this class?" (by default kgen's
    registry, plug-ins included).  A file written by Keras 2 (``keras_version`` 2.x) is
    loaded with tf.keras, so it converts with Keras 2 semantics.
    """
    if Path(path).is_dir():
        return _load_saved_model(Path(path), path, has_lowering)
    p = _check_file(path, "model file", MODEL_SUFFIXES, "a .keras or .h5 model file")
    if p.name.endswith(".keras"):
        version, config = _keras_zip_config(p, path)
    else:
        version, config = _h5_config(p, path)
    if config is not None:
        source = "tf_keras" if version.startswith("2.") else "keras3"
        _check_config(config, path, source, has_lowering)
    if version.startswith("2."):
        return _load_tf_keras_file(p, path)
    import keras

    try:
        return keras.saving.load_model(str(p), compile=False, safe_mode=True)
    except Exception as exc:
        hint = ""
        if "No model config found" in str(exc):
            hint = " (it holds weights only: pass the model file, and this file as weights=PATH)"
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
            for key in ("keras_version", "model_config"):
                if key in f.attrs:
                    allowlist.check_size(f.attrs.get_id(key).get_storage_size(), path)
            version = _h5_text(f.attrs.get("keras_version")) or ""
            config = _h5_text(f.attrs.get("model_config"))
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"cannot read model file {path}: {_one_line(exc)}") from None
    if config is None:
        raise SourceError(
            f"cannot load model file {path}: it has no model config (it holds weights "
            "only: pass the model file, and this file as weights=PATH)"
        )
    return version, config


def _read_member(z: zipfile.ZipFile, name: str, path: str) -> bytes:
    """One archive member, read no further than the config size limit (the size a zip
    header claims is not trusted: a bomb's can lie)."""
    allowlist.check_size(z.getinfo(name).file_size, path)
    with z.open(name) as f:
        data = f.read(allowlist.MAX_CONFIG_BYTES + 1)
    allowlist.check_size(len(data), path)
    return data


def _keras_zip_config(p: Path, path: str) -> tuple[str, str | None]:
    """A ``.keras`` archive's ``(keras_version, config.json)``; Keras 3 writes 3.x, tf.keras
    2.13+ writes 2.x into ``metadata.json``."""
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            meta = _read_member(z, "metadata.json", path) if "metadata.json" in names else b"{}"
            config = _read_member(z, "config.json", path) if "config.json" in names else None
            config = None if config is None else config.decode("utf-8")
        version = json.loads(meta).get("keras_version", "")
    except SourceError:
        raise
    except RecursionError:
        raise SourceError(
            f"refusing model file {path}: its metadata is nested too deeply"
        ) from None
    except (zipfile.BadZipFile, OSError, ValueError, AttributeError, UnicodeError) as exc:
        raise SourceError(f"cannot read model file {path}: {_one_line(exc)}") from None
    return str(version), config


def _check_config(config, path: str, source: str, has_lowering) -> None:
    """The allowlist check (:mod:`kgen.tracer.allowlist`) of a config read as JSON."""
    if has_lowering is None:
        from kgen.codegen.registry import has_lowering
    if isinstance(config, (str, bytes)):
        config = allowlist.parse_config(config, path)
    allowlist.check_config(config, path, source=source, has_lowering=has_lowering)


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


def _load_saved_model(p: Path, path: str, has_lowering=None):
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

        allowlist.check_size((p / "keras_metadata.pb").stat().st_size, path)
        metadata = saved_metadata_pb2.SavedMetadata()
        metadata.ParseFromString((p / "keras_metadata.pb").read_bytes())
        root = next(n for n in metadata.nodes if n.node_path == "root")
        meta = allowlist.parse_config(root.metadata, path)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"cannot read the Keras metadata of {path}: {_one_line(exc)}") from None
    config = meta.get("model_config")
    if not isinstance(config, dict) or "config" not in config:
        cls = str(meta.get("class_name", "?"))[:60]
        raise SourceError(
            f"cannot rebuild the model in {path}: its class {cls!r} has no saved config "
            "(a subclassed model); kgen converts functional and Sequential models"
        )
    _check_config(config, path, "tf_keras", has_lowering)

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
