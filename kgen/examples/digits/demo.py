"""``kgen demo``: convert the trained digits CNN and compare it with Keras on held-out data.

Everything is offline: the model ships with kgen and scikit-learn ships the data.  The
generated module is written to disk, imported from there and run with the weights read
back from its safetensors file, so the numbers cover the whole round trip.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kgen.examples.digits.data import MODEL_PATH, load_split

__all__ = ["MAX_REL", "MIN_SAME_PREDICTIONS", "DemoResult", "run"]

#: What the demo promises for a real trained model (tighter than verify's 1e-4).
MIN_SAME_PREDICTIONS = 0.999
MAX_REL = 1e-5


@dataclass
class DemoResult:
    model: str  # the .keras file converted
    module: str  # the generated .py file
    weights: str  # its .safetensors file
    class_name: str
    layers: int
    samples: int  # held-out images compared
    keras_accuracy: float
    flax_accuracy: float
    same_predictions: float  # fraction of rows with the same argmax
    max_abs: float  # max |flax - keras| over all logits
    max_rel: float  # max |flax - keras| / max |keras|

    @property
    def ok(self) -> bool:
        return self.same_predictions >= MIN_SAME_PREDICTIONS and self.max_rel <= MAX_REL

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def _import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # flax's dataclass machinery looks the module up
    spec.loader.exec_module(module)
    return module


def run(output: str | Path | None = None, *, model_path: str | Path = MODEL_PATH) -> DemoResult:
    """Convert ``model_path`` into ``output`` (a temporary directory when None) and compare."""
    if output is None:
        with tempfile.TemporaryDirectory(prefix="kgen-demo-") as tmp:
            return run(tmp, model_path=model_path)

    import jax

    from kgen.api import convert_model as convert
    from kgen.runtime import load_variables
    from kgen.tracer.load import load_model_file

    model = load_model_file(str(model_path))
    conversion = convert(model, module_name="digits_cnn", class_name="DigitsCNN")
    py_path, st_path = conversion.write(output)

    generated = _import_file(py_path, f"kgen_demo_{conversion.module_name}")
    module = getattr(generated, conversion.class_name)()
    variables = load_variables(st_path, module)  # checks every shape against the module

    _, _, x_test, y_test = load_split()
    keras_logits = np.asarray(model(x_test, training=False), dtype=np.float64)
    flax_logits = np.asarray(jax.jit(module.apply)(variables, x_test), dtype=np.float64)

    diff = float(np.max(np.abs(flax_logits - keras_logits)))
    keras_pred = np.argmax(keras_logits, -1)
    flax_pred = np.argmax(flax_logits, -1)
    return DemoResult(
        model=str(model_path),
        module=str(py_path),
        weights=str(st_path),
        class_name=conversion.class_name,
        layers=conversion.n_layers,
        samples=len(y_test),
        keras_accuracy=float(np.mean(keras_pred == y_test)),
        flax_accuracy=float(np.mean(flax_pred == y_test)),
        same_predictions=float(np.mean(keras_pred == flax_pred)),
        max_abs=diff,
        max_rel=diff / float(np.max(np.abs(keras_logits))),
    )
