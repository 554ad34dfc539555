"""kgen.runtime.preprocess_input / decode_predictions against Keras's own functions."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from kgen.runtime import decode_predictions, preprocess_input
from kgen.runtime.preprocessing import _CLASS_INDEX, imagenet_class_index

# (kgen mode, keras.applications module whose preprocess_input uses it)
KERAS_MODULES = [
    ("caffe", "vgg16"),
    ("tf", "mobilenet"),
    ("torch", "densenet"),
    ("none", "efficientnet"),
]


def _images(shape=(3, 17, 13, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=shape).astype(np.float32)


@pytest.mark.parametrize("mode,module", KERAS_MODULES)
def test_preprocess_input_matches_keras(mode, module):
    import importlib

    keras_module = importlib.import_module(f"keras.applications.{module}")
    x = _images()
    expected = np.asarray(keras_module.preprocess_input(x.copy()))  # Keras edits in place
    got = np.asarray(preprocess_input(x, mode))
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    if mode != "none":
        assert not np.allclose(got, x)  # it really changed the input


@pytest.mark.parametrize("mode,module", KERAS_MODULES[:3])
def test_preprocess_input_matches_keras_on_tensors_and_uint8(mode, module):
    import importlib

    import keras

    keras_module = importlib.import_module(f"keras.applications.{module}")
    pixels = np.random.default_rng(1).integers(0, 256, size=(2, 5, 7, 3)).astype(np.uint8)
    expected = np.asarray(keras_module.preprocess_input(pixels.copy()))
    got = np.asarray(preprocess_input(pixels, mode))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # Keras's tensor path (different code from its numpy path) agrees too.
    tensor = keras.ops.convert_to_tensor(pixels.astype(np.float32))
    expected_tensor = keras.ops.convert_to_numpy(keras_module.preprocess_input(tensor))
    np.testing.assert_allclose(got, expected_tensor, rtol=0, atol=1e-5)


def test_preprocess_input_single_image_and_caffe_channel_order():
    pixel = np.array([[[10.0, 20.0, 30.0]]], dtype=np.float32)  # one RGB pixel, no batch
    got = np.asarray(preprocess_input(pixel, "caffe"))
    np.testing.assert_allclose(got[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_preprocess_input_rejects_bad_mode_and_channels():
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        preprocess_input(_images(), "imagenet")
    with pytest.raises(ValueError, match="3 colour channels"):
        preprocess_input(np.zeros((1, 4, 4, 1), np.float32), "caffe")


def test_class_index_is_the_keras_file():
    raw = _CLASS_INDEX.read_bytes()
    # The file_hash keras.applications.imagenet_utils.decode_predictions checks.
    assert hashlib.md5(raw).hexdigest() == "c2c37ea517e94d9795004a39431a14cb"
    data = json.loads(raw)
    assert list(data) == [str(i) for i in range(1000)]
    assert data["0"] == ["n01440764", "tench"]
    assert data["999"] == ["n15075141", "toilet_tissue"]
    index = imagenet_class_index()
    assert len(index) == 1000 and index[207] == ("n02099601", "golden_retriever")


def _hand_built_probs():
    probs = np.zeros((2, 1000), dtype=np.float32)
    probs[0, [207, 1, 999, 0, 500, 3]] = [0.4, 0.25, 0.15, 0.1, 0.06, 0.04]
    probs[1, [281, 282, 285]] = [0.2, 0.7, 0.1]
    return probs


def test_decode_predictions_order_ids_names_scores():
    results = decode_predictions(_hand_built_probs(), top=5)
    assert len(results) == 2
    assert [(wnid, name) for wnid, name, _ in results[0]] == [
        ("n02099601", "golden_retriever"),
        ("n01443537", "goldfish"),
        ("n15075141", "toilet_tissue"),
        ("n01440764", "tench"),
        ("n03042490", "cliff_dwelling"),
    ]
    np.testing.assert_allclose([s for *_, s in results[0]], [0.4, 0.25, 0.15, 0.1, 0.06], rtol=1e-6)
    top3 = decode_predictions(_hand_built_probs(), top=3)[1]
    assert [name for _, name, _ in top3] == ["tiger_cat", "tabby", "Egyptian_cat"]
    with pytest.raises(ValueError, match=r"\(batch, 1000\)"):
        decode_predictions(np.zeros((2, 10)))


def test_decode_predictions_matches_keras_offline(monkeypatch):
    """Keras's decode_predictions, with its download pointed at our copy of the file."""
    from keras.src.applications import imagenet_utils
    from keras.src.utils import file_utils

    calls = []

    def fake_get_file(fname, origin=None, **kwargs):
        calls.append((fname, kwargs.get("file_hash")))
        return str(_CLASS_INDEX)

    monkeypatch.setattr(file_utils, "get_file", fake_get_file)
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", None)
    probs = np.random.default_rng(3).dirichlet(np.ones(1000), size=4).astype(np.float32)
    probs[:, 5] = 0.5  # a clear winner in every row
    expected = imagenet_utils.decode_predictions(probs, top=5)
    assert calls and calls[0][0] == "imagenet_class_index.json"
    got = decode_predictions(probs, top=5)
    assert [[(w, n) for w, n, _ in row] for row in got] == [
        [(w, n) for w, n, _ in row] for row in expected
    ]
    np.testing.assert_allclose(
        [[s for *_, s in row] for row in got],
        [[float(s) for *_, s in row] for row in expected],
        rtol=0,
        atol=0,
    )
    assert got[0][0][:2] == ("n01496331", "electric_ray")


def _tiny_model():
    import keras

    inputs = keras.Input((6, 6, 3))
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("mode,module", KERAS_MODULES)
def test_generated_class_carries_preprocessing(mode, module):
    import importlib

    from kgen.api import convert_model as convert
    from kgen.codegen import check_source

    conversion = convert(
        _tiny_model(), class_name="Tiny", metadata={"preprocess": mode, "input_size": 6}
    )
    assert check_source(conversion.source) == []
    cls = conversion.load().Tiny
    assert cls.preprocess_mode == mode and cls.input_size == (6, 6)
    keras_module = importlib.import_module(f"keras.applications.{module}")
    x = _images((2, 6, 6, 3), seed=4)
    np.testing.assert_allclose(
        np.asarray(cls.preprocess(x)), keras_module.preprocess_input(x.copy()), rtol=0, atol=1e-5
    )


def test_generated_class_without_metadata_has_no_preprocessing():
    from kgen.api import convert_model as convert

    conversion = convert(_tiny_model(), class_name="Tiny")
    cls = conversion.load().Tiny
    assert not hasattr(cls, "preprocess") and not hasattr(cls, "preprocess_mode")
    assert "preprocess" not in conversion.source
    if "from kgen import runtime as rt" in conversion.source:  # no unused import
        assert "rt." in conversion.source, conversion.source
    with pytest.raises(ValueError, match="unknown preprocess mode"):
        convert(_tiny_model(), metadata={"preprocess": "imagenet"})
