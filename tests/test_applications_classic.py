"""Whole-model parity for the classic applications: InceptionV3, ResNet, ResNetV2, VGG,
DenseNet, MobileNet, MobileNetV2 and Xception.

Every variable is randomised; the logits (``classifier_activation=None``) and 8 evenly
spaced intermediate layer outputs are compared with Keras in the same test.  The
smallest model of each family runs in the default suite at a reduced input size; every
model at its default size runs under ``catalog``
(``pytest -m catalog tests/test_applications_classic.py``).
"""

import keras
import pytest

from kgen.tracer.catalog import APPLICATIONS
from kgen.verify import check_model

FAMILIES = ("inception_v3", "resnet", "resnet_v2", "vgg", "densenet", "mobilenet",
            "mobilenet_v2", "xception")  # fmt: skip
CLASSIC = [name for name, app in APPLICATIONS.items() if app.family in FAMILIES]
SMALL_INPUT = {"InceptionV3": 75, "Xception": 71}  # their minimum sizes; others take 96


def _check(name, size):
    model = getattr(keras.applications, name)(
        weights=None, classifier_activation=None, input_shape=(size, size, 3)
    )
    _, report = check_model(model, seed=0, taps=8)
    assert report.ok, "\n".join(report.lines())
    assert len(report.outputs) == 9  # the logits and 8 taps
    return report


@pytest.mark.parametrize("name", [n for n in CLASSIC if APPLICATIONS[n].smallest], ids=str)
def test_smallest_of_each_family(name):
    _check(name, SMALL_INPUT.get(name, 96))


@pytest.mark.catalog
@pytest.mark.parametrize("name", CLASSIC)
def test_every_classic_application_at_default_size(name):
    _check(name, APPLICATIONS[name].input_size)
