"""One-layer parity tests for kgen/codegen/lowerings/resampling.py (UpSampling1D/2D/3D,
Resizing, CenterCrop) and ZeroPadding3D/Cropping3D
(kgen/codegen/lowerings/reshaping.py; the 1-D/2-D ones are in test_reshaping.py)."""

import keras
import pytest
from helpers import assert_layer_parity, tf_keras_layer_parity

import kgen
from kgen.errors import UnsupportedError


@pytest.mark.parametrize("size", [1, 3])
def test_upsampling1d(size):
    assert_layer_parity(keras.layers.UpSampling1D(size), (5, 3))


@pytest.mark.parametrize(
    "size, interpolation",
    [
        (2, "nearest"),
        ((2, 3), "nearest"),
        (2, "bilinear"),
        ((3, 2), "bilinear"),
        # TF's bicubic kernel quantises the sample offsets to 1/1024 (3x is not exact).
        ((3, 2), "bicubic"),
        (2, "lanczos3"),
        ((2, 3), "lanczos5"),
    ],
)
def test_upsampling2d(size, interpolation):
    assert_layer_parity(keras.layers.UpSampling2D(size, interpolation=interpolation), (4, 5, 3))


@pytest.mark.parametrize("size", [2, (1, 2, 3)])
def test_upsampling3d(size):
    assert_layer_parity(keras.layers.UpSampling3D(size), (3, 4, 2, 2))


@pytest.mark.parametrize(
    "interpolation, size",
    [
        ("nearest", (14, 6)),
        ("nearest", (3, 4)),
        ("bilinear", (14, 6)),
        ("bilinear", (3, 4)),  # downsampling: no antialiasing unless asked for
        ("bicubic", (14, 6)),
        ("bicubic", (10, 27)),
        ("lanczos3", (3, 4)),
        ("lanczos5", (10, 27)),
    ],
)
def test_resizing(interpolation, size):
    assert_layer_parity(keras.layers.Resizing(*size, interpolation=interpolation), (7, 9, 3))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos3"])
def test_resizing_antialias(interpolation):
    layer = keras.layers.Resizing(3, 5, interpolation=interpolation, antialias=True)
    assert_layer_parity(layer, (7, 9, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(height=4, width=4, crop_to_aspect_ratio=True),
        dict(height=10, width=5, crop_to_aspect_ratio=True, interpolation="nearest"),
        dict(height=4, width=4, pad_to_aspect_ratio=True),
        dict(height=5, width=11, pad_to_aspect_ratio=True, fill_value=0.5),
        dict(height=12, width=6, pad_to_aspect_ratio=True, interpolation="bicubic"),
    ],
)
def test_resizing_aspect_ratio(kwargs):
    assert_layer_parity(keras.layers.Resizing(**kwargs), (7, 9, 3))


def test_resizing_area_is_unsupported():
    inputs = keras.Input((7, 9, 3))
    model = keras.Model(inputs, keras.layers.Resizing(3, 4, interpolation="area")(inputs))
    with pytest.raises(UnsupportedError, match="interpolation='area'"):
        kgen.convert(model)


@pytest.mark.parametrize(
    "height, width, shape",
    [
        (4, 6, (7, 9, 3)),  # plain crop
        (7, 2, (7, 9, 3)),
        (8, 4, (7, 9, 3)),  # taller than the input: crop to the aspect ratio, resize
        (10, 12, (7, 9, 3)),  # larger than the input
    ],
)
def test_center_crop(height, width, shape):
    assert_layer_parity(keras.layers.CenterCrop(height, width), shape)


@pytest.mark.parametrize("padding", [(1, 2, 0), ((0, 1), (2, 0), (1, 1))])
def test_zero_padding3d(padding):
    assert_layer_parity(keras.layers.ZeroPadding3D(padding), (3, 4, 2, 2))


@pytest.mark.parametrize("cropping", [(1, 0, 2), ((0, 1), (2, 0), (1, 1))])
def test_cropping3d(cropping):
    assert_layer_parity(keras.layers.Cropping3D(cropping), (4, 5, 6, 2))


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda L: L.UpSampling2D((2, 3), interpolation="bilinear"), (4, 5, 3)),
        (lambda L: L.UpSampling3D(2), (3, 4, 2, 2)),
        (lambda L: L.Resizing(5, 4, interpolation="bicubic", crop_to_aspect_ratio=True), (7, 9, 3)),
        (lambda L: L.CenterCrop(8, 4), (7, 9, 3)),
    ],
    ids=["upsampling2d", "upsampling3d", "resizing", "center-crop"],
)
def test_resampling_tf_keras(make, shape):
    tf_keras_layer_parity(make, shape)
