"""Load a model from a CLI source: an application name or a model file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kgen.errors import SourceError
from kgen.tracer import catalog

__all__ = ["LoadedModel", "load_source", "MODEL_SUFFIXES"]

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class LoadedModel:
    model: object
    app: catalog.Application | None
    real_weights: bool  # weights came from a file or ImageNet, not a fresh init
    module_name: str | None = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def load_weights_file(model, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"weights file not found: {path}")
    if not p.name.endswith((".weights.h5", ".h5", ".hdf5")):
        raise SourceError(f"weights file {path!r} must be a .weights.h5 or legacy .h5 file")
    try:
        model.load_weights(str(p))
    except Exception as exc:  # Keras raises ValueError/OSError/KeyError variously
        raise SourceError(f"cannot load weights from {path}: {_one_line(exc)}") from None


def load_source(source: str, weights: str | None = None, **options) -> LoadedModel:
    """``source`` is an application name or a ``.keras``/``.h5`` path.

    ``weights``: for applications ``"imagenet"`` (default), ``"none"`` or a weights file;
    for model files ``None`` (the file's own weights), ``"none"`` or a weights file.
    """
    if source.endswith(MODEL_SUFFIXES) or os.path.sep in source or Path(source).exists():
        model = load_model_file(source)
        if weights not in (None, "none", "model"):
            if weights == "imagenet":
                raise SourceError("--weights imagenet only applies to application names")
            load_weights_file(model, weights)
        return LoadedModel(model, None, real_weights=weights != "none")

    app = catalog.get(source)
    weights = weights or "imagenet"
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
    """Load a saved model without executing anything it contains (Keras safe mode)."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"model file not found: {path}")
    if not p.name.endswith(MODEL_SUFFIXES):
        raise SourceError(f"model file {path!r} must end in .keras or .h5")
    import keras

    try:
        return keras.saving.load_model(str(p), compile=False, safe_mode=True)
    except Exception as exc:
        raise SourceError(f"cannot load model file {path}: {_one_line(exc)}") from None
