"""ImageNet input preprocessing and prediction decoding, without Keras.

``preprocess_input(x, mode)`` reproduces ``keras.applications.imagenet_utils.preprocess_input``
for channels-last batches; ``decode_predictions(probs)`` reproduces its
``decode_predictions`` from the class index shipped with kgen (the file Keras downloads,
byte for byte), so no network access is needed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jax.numpy as jnp
import numpy as np

__all__ = ["MODES", "decode_predictions", "imagenet_class_index", "preprocess_input"]

# The constants of keras/src/applications/imagenet_utils.py.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
_TORCH_STD_RGB = (0.229, 0.224, 0.225)

MODES = ("caffe", "tf", "torch", "none")

_CLASS_INDEX = Path(__file__).parent / "data" / "imagenet_class_index.json"


def preprocess_input(x, mode: str):
    """Map RGB pixel values in [0, 255] (channels last) to what an ImageNet model expects.

    - ``caffe``: RGB -> BGR, then subtract the ImageNet mean of each BGR channel
      (VGG, ResNet).
    - ``tf``: ``x / 127.5 - 1``, i.e. [-1, 1] (Inception, MobileNet, Xception, ...).
    - ``torch``: ``x / 255``, then subtract the mean and divide by the standard deviation
      of each RGB channel (DenseNet).
    - ``none``: the model preprocesses inside itself (EfficientNet, ConvNeXt, ...);
      ``x`` is returned unchanged.

    Integer inputs are cast to float32 first, as Keras does.
    """
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")
    x = jnp.asarray(x)
    if mode == "none":
        return x
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if x.ndim == 0 or x.shape[-1] != 3:
        raise ValueError(
            f"preprocess_input(mode={mode!r}) needs 3 colour channels last; got shape {x.shape}"
        )
    if mode == "torch":
        mean = jnp.asarray(_TORCH_MEAN_RGB, dtype=x.dtype)
        std = jnp.asarray(_TORCH_STD_RGB, dtype=x.dtype)
        return (x / 255.0 - mean) / std
    bgr = x[..., ::-1]
    return bgr - jnp.asarray(_CAFFE_MEAN_BGR, dtype=x.dtype)


@lru_cache(maxsize=1)
def imagenet_class_index() -> dict[int, tuple[str, str]]:
    """``{index: (wordnet_id, name)}`` for the 1000 ImageNet classes."""
    with open(_CLASS_INDEX, encoding="utf-8") as f:
        raw = json.load(f)
    return {int(k): (v[0], v[1]) for k, v in raw.items()}


def decode_predictions(probs, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Per row of ``probs`` (shape ``(batch, 1000)``), the ``top`` classes as
    ``(wordnet_id, name, score)`` tuples, highest score first (as Keras returns them)."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != 1000:
        raise ValueError(
            f"decode_predictions expects a batch of ImageNet predictions of shape "
            f"(batch, 1000); got shape {probs.shape}"
        )
    index = imagenet_class_index()
    results = []
    for row in probs:
        best = np.argsort(row, kind="stable")[-top:][::-1]
        result = [(*index[int(i)], float(row[i])) for i in best]
        result.sort(key=lambda item: item[2], reverse=True)
        results.append(result)
    return results
