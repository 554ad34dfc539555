"""Golden record: generated code for small, explicitly named models, byte for byte.

Any change to what kgen writes shows up here as a diff to review.  After an intended
change, regenerate every golden file with one command and commit the diff::

    pytest tests/test_golden.py --update-golden

Every layer, input, op and model below is named explicitly (op nodes are created from
their Operation classes to give them names), so the output does not depend on Keras's
session-wide auto-name counters.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

import keras
import pytest
from helpers import assert_parity
from keras.src.ops import numpy as knp

from kgen.api import convert_model as convert
from kgen.codegen import check_source

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = "pytest tests/test_golden.py --update-golden"
L = keras.layers


def tiny_cnn():
    x_in = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(x_in)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.MaxPooling2D(2, name="pool1")(x)
    x = L.Conv2D(16, 3, strides=2, use_bias=False, name="conv2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(10, name="logits")(x)
    return keras.Model(x_in, x, name="tiny_cnn")


def residual_block():
    x_in = keras.Input((8, 8, 4), name="features")
    shared = L.Conv2D(4, 3, padding="same", name="shared_conv")  # called twice
    h = L.ReLU(name="relu")(shared(x_in))
    h = shared(h)
    h = L.Add(name="residual")([x_in, h])
    h = knp.Multiply(name="half")(h, 0.5)  # h * 0.5
    h = knp.GetItem(name="crop")(h, (slice(None), slice(1, 7), slice(1, 7)))  # h[:, 1:7, 1:7]
    h = knp.Mean(axis=(1, 2), name="spatial_mean")(h)  # keras.ops.mean(h, axis=(1, 2))
    h = L.Dense(3, name="head")(h)
    return keras.Model(x_in, h, name="residual_block")


def multi_io():
    image = keras.Input((8, 8, 3), name="image")
    meta = keras.Input((5,), name="meta")
    encoder = keras.Sequential(
        [
            keras.Input((8, 8, 3), name="encoder_input"),
            L.Conv2D(6, 3, strides=2, padding="same", name="encoder_conv"),
            L.ReLU(name="encoder_relu"),
            L.GlobalAveragePooling2D(name="encoder_pool"),
        ],
        name="encoder",
    )
    features = L.Concatenate(name="concat")([encoder(image), meta])
    hidden = L.Dense(8, activation="relu", name="hidden")(features)
    return keras.Model(
        {"image": image, "meta": meta},
        {
            "class_logits": L.Dense(4, name="class_logits")(hidden),
            "aux": L.Dense(2, name="aux")(meta),
        },
        name="multi_io",
    )


MODELS = {"tiny_cnn": tiny_cnn, "residual_block": residual_block, "multi_io": multi_io}


def generated_source(model) -> str:
    return convert(model, regenerate=REGENERATE).source


@pytest.mark.parametrize("name", MODELS)
def test_golden(name, update_golden):
    model = MODELS[name]()
    assert model.name == name
    conversion, _ = assert_parity(model)  # the golden code is also numerically right
    source = generated_source(model)
    assert source.replace(f"# Regenerate with: {REGENERATE}\n", "") == conversion.source
    path = GOLDEN / f"{name}.py"
    if update_golden:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(source, encoding="utf-8")
        return
    assert path.exists(), f"missing golden file {path}; create it with `{REGENERATE}`"
    expected = path.read_text(encoding="utf-8")
    if source != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                source.splitlines(keepends=True),
                f"golden/{name}.py",
                "generated now",
            )
        )
        pytest.fail(
            f"generated code for {name} differs from tests/golden/{name}.py "
            f"(if intended, run `{REGENERATE}` and commit the diff):\n{diff}"
        )


@pytest.mark.parametrize("name", MODELS)
def test_generation_is_deterministic(name):
    """One model converted twice, and a second build of it, give identical bytes.

    The second build in the same Keras session would get ``_1`` suffixes from any
    auto-generated name, so this also proves the golden models name everything.
    """
    model = MODELS[name]()
    first = generated_source(model)
    assert generated_source(model) == first
    assert generated_source(MODELS[name]()) == first


@pytest.mark.parametrize("name", MODELS)
def test_golden_source_is_clean_and_keras_free(name):
    path = GOLDEN / f"{name}.py"
    source = path.read_text(encoding="utf-8")
    assert check_source(source) == []
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported, "no imports found"
    assert not imported & {"keras", "tensorflow", "tf_keras"}, imported
    assert imported <= {"jax", "flax", "numpy", "einops", "kgen"}, imported
    assert f"# Regenerate with: {REGENERATE}" in source
