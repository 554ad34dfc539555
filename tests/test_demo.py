"""`kgen demo`: a real trained model (the shipped digits CNN), converted and compared
with Keras on held-out data, through the CLI in-process."""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import numpy as np
from click.testing import CliRunner

from kgen.cli import main
from kgen.examples.digits import MODEL_PATH, load_split


def test_shipped_model_is_small_and_is_what_train_builds():
    import keras

    from kgen.examples.digits.train import build_model

    assert MODEL_PATH.is_file() and MODEL_PATH.stat().st_size < 400_000
    shipped = keras.saving.load_model(MODEL_PATH, compile=False, safe_mode=True)
    with zipfile.ZipFile(MODEL_PATH) as archive:  # inference copy: no optimizer state
        weights_h5 = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(weights_h5), "r") as weights:
        assert "optimizer" not in weights
    fresh = build_model()
    assert [type(layer).__name__ for layer in shipped.layers] == [
        type(layer).__name__ for layer in fresh.layers
    ]
    assert [w.shape for w in shipped.weights] == [w.shape for w in fresh.weights]
    assert shipped.layers[-1].get_config()["activation"] == "linear"  # logits


def test_demo_cli_real_weights_parity(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--json", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["ok"] is True
    assert report["samples"] == 360
    assert report["same_predictions"] >= 0.999
    assert report["max_rel"] <= 1e-5
    assert report["keras_accuracy"] > 0.9 and report["flax_accuracy"] > 0.9
    assert (tmp_path / "digits_cnn.py").is_file() and (
        tmp_path / "digits_cnn.safetensors"
    ).is_file()

    # The Keras side is the real model on the real held-out split: recompute it here.
    import keras

    model = keras.saving.load_model(MODEL_PATH, compile=False, safe_mode=True)
    _, _, x_test, y_test = load_split()
    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    assert report["keras_accuracy"] == accuracy


def test_demo_cli_text_output():
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.strip().startswith("accuracy") for line in lines)
    assert any("identical predictions" in line and "(360/360)" in line for line in lines)
    assert lines[-1].startswith("PASS")
