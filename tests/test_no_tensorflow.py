"""Generated modules run without TensorFlow or Keras.

The parent process converts (through the CLI) the trained digits CNN and MobileNet with a
randomised weights file; a fresh interpreter whose import system refuses ``tensorflow``,
``keras`` and ``tf_keras`` imports the generated modules and ``kgen.runtime``, loads the
safetensors and runs them; the parent compares the results with Keras.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from click.testing import CliRunner

from kgen.cli import main
from kgen.examples.digits import MODEL_PATH, load_split
from kgen.verify import TOLERANCE, randomize

CHILD = r"""
import importlib.abc, importlib.util, json, sys

BLOCKED = {"tensorflow", "keras", "tf_keras"}


class RefuseFrameworks(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"kgen test: import of {fullname} refused")
        return None


already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
if already:
    raise SystemExit(f"imported before the finder was installed: {already}")
sys.meta_path.insert(0, RefuseFrameworks())
try:
    import tensorflow  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the import blocker does not work")

import numpy as np
from kgen import runtime as rt

for job in json.loads(sys.argv[1]):
    spec = importlib.util.spec_from_file_location(job["name"], job["module"])
    generated = importlib.util.module_from_spec(spec)
    sys.modules[job["name"]] = generated
    spec.loader.exec_module(generated)
    cls = getattr(generated, job["class"])
    module = cls()
    variables = rt.load_variables(job["weights"], module)
    x = np.load(job["input"])
    if job["preprocess"]:
        x = cls.preprocess(x)
    out, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    result = {"output": np.asarray(out)}
    if job["capture"]:
        result["capture"] = np.asarray(state["intermediates"][job["capture"]]["__call__"][0])
    np.savez(job["result"], **result)

loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"frameworks_loaded": loaded}))
"""


def _rel(reference, got) -> float:
    reference = np.asarray(reference, np.float64)
    return float(
        np.max(np.abs(np.asarray(got, np.float64) - reference)) / np.max(np.abs(reference))
    )


def _emit(*args) -> dict:
    result = CliRunner().invoke(main, ["emit", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_generated_modules_run_without_tensorflow(tmp_path):
    import keras

    # 1. The trained digits CNN, on the real held-out images.
    digits_dir = tmp_path / "digits"
    digits = _emit(str(MODEL_PATH), "-o", str(digits_dir))
    _, _, x_test, y_test = load_split()
    np.save(tmp_path / "digits_x.npy", x_test)

    # 2. MobileNet with every variable randomised, given as a weights file; raw pixels in,
    #    preprocessed by the generated class's own `preprocess`.
    mobilenet = keras.applications.MobileNet(weights=None)
    randomize(mobilenet, seed=5)
    weights_file = tmp_path / "mobilenet_random.weights.h5"
    mobilenet.save_weights(weights_file)
    mobilenet_dir = tmp_path / "mobilenet"
    mobile = _emit("MobileNet", "--weights", str(weights_file), "-o", str(mobilenet_dir))
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, 224, 224, 3)).astype(np.float32)
    np.save(tmp_path / "mobilenet_x.npy", pixels)

    jobs = [
        {
            "name": "digits_cnn",
            "class": digits["class"],
            "module": digits["module"],
            "weights": digits["weights"],
            "input": str(tmp_path / "digits_x.npy"),
            "preprocess": False,
            "capture": None,
            "result": str(tmp_path / "digits_out.npz"),
        },
        {
            "name": "mobilenet",
            "class": mobile["class"],
            "module": mobile["module"],
            "weights": mobile["weights"],
            "input": str(tmp_path / "mobilenet_x.npy"),
            "preprocess": True,
            "capture": "conv_preds",
            "result": str(tmp_path / "mobilenet_out.npz"),
        },
    ]
    assert mobile["class"] == "MobileNet"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("KERAS_BACKEND", None)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(jobs)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == {"frameworks_loaded": []}

    # Keras, in this process, on the same inputs.
    digits_keras = keras.saving.load_model(MODEL_PATH, compile=False, safe_mode=True)
    digits_ref = np.asarray(digits_keras(x_test, training=False))
    digits_out = np.load(jobs[0]["result"])["output"]
    assert _rel(digits_ref, digits_out) <= 1e-5
    assert np.mean(np.argmax(digits_out, -1) == np.argmax(digits_ref, -1)) >= 0.999
    assert np.mean(np.argmax(digits_out, -1) == y_test) > 0.9

    with_logits = keras.Model(
        mobilenet.inputs, [mobilenet.output, mobilenet.get_layer("conv_preds").output]
    )
    preprocessed = keras.applications.mobilenet.preprocess_input(pixels.copy())
    probs_ref, logits_ref = (np.asarray(t) for t in with_logits(preprocessed, training=False))
    mobilenet_out = np.load(jobs[1]["result"])
    assert _rel(logits_ref, mobilenet_out["capture"]) <= TOLERANCE
    np.testing.assert_allclose(mobilenet_out["output"], probs_ref, atol=1e-5)
    assert np.array_equal(np.argmax(mobilenet_out["output"], -1), np.argmax(probs_ref, -1))
