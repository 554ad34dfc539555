"""`kgen emit NAME` with the default `--weights imagenet`, offline.

Keras's download (``keras.src.utils.file_utils.get_file``, which
``keras/src/applications/mobilenet.py`` calls as ``file_utils.get_file``) is pointed at a
local legacy ``.h5`` file, written the way the real ImageNet files are, from a MobileNet
whose every variable is randomised.  The module the real CLI code path writes must match
Keras with those weights.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
from click.testing import CliRunner

from kgen.api import load_module
from kgen.cli import main
from kgen.runtime import load_variables
from kgen.verify import TOLERANCE, randomize


def _legacy_h5(model, path):
    """A Keras-2-style weights file, like mobilenet_1_0_224_tf.h5 on the Keras server."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def test_emit_imagenet_weights_through_keras_download(tmp_path, monkeypatch):
    import keras
    from keras.src.utils import file_utils

    reference = keras.applications.MobileNet(weights=None)
    randomize(reference, seed=11)
    fake = tmp_path / "cache" / "mobilenet_1_0_224_tf.h5"
    fake.parent.mkdir()
    _legacy_h5(reference, fake)

    requests = []

    def offline_get_file(fname=None, origin=None, **kwargs):
        requests.append((fname, origin, kwargs.get("cache_subdir")))
        return str(fake)

    monkeypatch.setattr(file_utils, "get_file", offline_get_file)

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["emit", "MobileNet", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])

    # Keras asked for exactly the ImageNet file of the default MobileNet, and got ours.
    assert len(requests) == 1
    fname, origin, subdir = requests[0]
    assert fname == "mobilenet_1_0_224_tf.h5" and origin.endswith(fname) and subdir == "models"

    source = (out / "mobilenet.py").read_text()
    generated = load_module(source, "mobilenet_imagenet_test")
    cls = generated.MobileNet
    assert report["class"] == "MobileNet" and report["weights"] == str(
        out / "mobilenet.safetensors"
    )
    assert cls.preprocess_mode == "tf" and cls.input_size == (224, 224)
    module = cls()
    variables = load_variables(out / "mobilenet.safetensors", module)

    pixels = np.random.default_rng(2).uniform(0, 255, size=(2, 224, 224, 3)).astype(np.float32)
    keras_input = keras.applications.mobilenet.preprocess_input(pixels.copy())
    flax_input = np.asarray(cls.preprocess(pixels))
    np.testing.assert_allclose(flax_input, keras_input, rtol=0, atol=1e-6)

    # Logits (conv_preds, before the softmax) and probabilities, against Keras with the
    # weights it loaded from the same file.
    with_logits = keras.Model(
        reference.inputs, [reference.output, reference.get_layer("conv_preds").output]
    )
    probs_ref, logits_ref = (np.asarray(t) for t in with_logits(keras_input, training=False))
    probs, state = module.apply(
        variables, flax_input, capture_intermediates=True, mutable=["intermediates"]
    )
    logits = np.asarray(state["intermediates"]["conv_preds"]["__call__"][0])
    rel = np.max(np.abs(logits - logits_ref)) / np.max(np.abs(logits_ref))
    assert rel <= TOLERANCE, rel
    np.testing.assert_allclose(np.asarray(probs), probs_ref, atol=1e-5)
    assert np.array_equal(np.argmax(probs, -1), np.argmax(probs_ref, -1))

    # And the weights really are the randomised ones, not a fresh initialisation.
    kernel = variables["params"]["conv_preds"]["kernel"]
    np.testing.assert_array_equal(
        np.asarray(kernel), reference.get_layer("conv_preds").kernel.numpy()
    )
