"""`kgen emit NAME --weights FILE` for every application: FILE is a Keras weights file
saved from a model whose every variable was randomised; the written module, loaded with
its written safetensors, must match that Keras model.

MobileNet runs in the default suite (tests/test_cli.py covers it too); every other
application is a ``catalog`` test: ``pytest -m catalog tests/test_emit_weights.py``.
"""

import json

import numpy as np
import pytest
from helpers import import_file, run_cli

from kgen.runtime import load_variables
from kgen.tracer.catalog import APPLICATIONS, build
from kgen.verify import compare, randomize

PARAMS = [
    pytest.param(name, marks=() if name == "MobileNet" else pytest.mark.catalog)
    for name in APPLICATIONS
]


@pytest.mark.parametrize("name", PARAMS)
def test_emit_with_weights_file_matches_keras(name, tmp_path):
    app = APPLICATIONS[name]
    model = build(app, weights=None, classifier_activation=None)
    randomize(model, seed=7)
    # tf.keras applications take legacy .h5 weights; Keras 3 ones a .weights.h5 file.
    weights = tmp_path / ("w.h5" if app.source == "tf_keras" else "w.weights.h5")
    model.save_weights(str(weights))

    out = tmp_path / "out"
    result = run_cli(
        "emit", name, "--weights", weights, "--classifier-activation", "none", "-o", out, "--json"
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout.strip().splitlines()[-1])
    module = import_file(info["module"])
    net = getattr(module, info["class"])()
    variables = load_variables(info["weights"], module=net)

    size = app.input_size
    low, high = (0.0, 255.0) if app.preprocess == "none" else (-1.0, 1.0)
    x = np.random.default_rng(1).uniform(low, high, size=(2, size, size, 3)).astype("float32")
    report = compare(np.asarray(model(x, training=False)), net.apply(variables, x))
    assert report.ok, report.lines()
