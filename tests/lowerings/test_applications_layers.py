"""One-layer parity tests for kgen/codegen/lowerings/applications.py: the layer classes
that keras.applications defines for ConvNeXt and InceptionResNetV2."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_parity, assert_parity, one_layer_model
from keras.src.applications.convnext import LayerScale
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

from kgen.api import convert


@pytest.mark.parametrize(
    ("init_values", "shape"),
    [(1e-6, (8,)), (0.5, (5, 5, 16)), (1.0, (3, 4, 6, 7))],
)
def test_layer_scale(init_values, shape):
    layer = LayerScale(init_values, shape[-1])
    conversion, _ = assert_layer_parity(layer, shape)
    (params,) = conversion.variables["params"].values()
    # randomised, so a missing mapping (zeros) or the init value cannot pass
    assert params["gamma"].shape == (shape[-1],)
    assert not np.allclose(params["gamma"], init_values)


@pytest.mark.parametrize("scale", [0.17, 0.1, 0.2, 1.0, -0.5])
def test_custom_scale_layer(scale):
    layer = CustomScaleLayer(scale)
    assert_layer_parity(layer, (5, 5, 8), (5, 5, 8))


def test_custom_scale_layer_order():
    """inputs[0] is the shortcut, inputs[1] the scaled residual: not symmetric."""
    a = np.full((1, 2, 3), 2.0, np.float32)
    b = np.full((1, 2, 3), 10.0, np.float32)
    model = one_layer_model(CustomScaleLayer(0.5), (2, 3), (2, 3))
    conversion = convert(model)
    out = conversion.module.apply({}, a, b)
    np.testing.assert_allclose(np.asarray(out), 7.0)
    assert_layer_parity(CustomScaleLayer(0.5), (2, 3), (2, 3), inputs=[a, b])


def test_same_name_other_class_is_traced_not_lowered_as_it():
    """A user class called LayerScale is not Keras's: it is traced, never lowered as it."""

    class LayerScale(keras.layers.Layer):  # the same name is the point
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    model = one_layer_model(LayerScale(3.0), (4,))
    conversion, _ = assert_parity(model)
    assert "class LayerScale(nn.Module):" in conversion.source
    assert "rt.LayerScale" not in conversion.source
