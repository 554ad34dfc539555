"""The base install (``pip install kgen-flax``) is the runtime: no TensorFlow, Keras or
tf_keras, nor any other conversion package.  In a fresh venv with only that install, a
generated module and its weights run and match Keras (run here, in the parent), a
``kgen.load`` cache entry is served, and ``kgen emit`` says which extra to install.

The wheel is built from this checkout, and the venv installs it from the package
registry (pip's cache makes the second run quick).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

import kgen
from kgen.examples.digits import MODEL_PATH, load_split
from kgen.pipeline import CONVERT_PACKAGES

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import importlib.util, json, sys

import numpy as np

jobs = json.loads(sys.argv[1])
spec = importlib.util.spec_from_file_location("digits_cnn", jobs["module"])
generated = importlib.util.module_from_spec(spec)
sys.modules["digits_cnn"] = generated
spec.loader.exec_module(generated)
from kgen import runtime as rt
import kgen

module = generated.DigitsCnn()
variables = rt.load_variables(jobs["weights"], module=module)
x = np.load(jobs["input"])
np.save(jobs["out"], np.asarray(module.apply(variables, x)))
cached, cached_vars = kgen.load(jobs["source"])
np.save(jobs["cached_out"], np.asarray(cached.apply(cached_vars, x)))
print(json.dumps({"modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    wheel = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "dist", ROOT],
        timeout=600,
    )
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    (built,) = (root / "dist").glob("kgen_flax-*.whl")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    install = _run([python, "-m", "pip", "install", "-q", built], timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def test_base_install_runs_generated_modules_without_the_conversion_packages(
    base_venv, tmp_path, monkeypatch
):
    import keras

    listed = _run([base_venv, "-m", "pip", "list", "--format", "json"], timeout=120)
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "kgen-flax" in installed and {"jax", "flax", "safetensors"} <= installed
    conversion = {"tensorflow", "keras", "tf-keras", "h5py", "networkx", "jinja2", "ruff"}
    assert not installed & conversion, installed & conversion

    out = tmp_path / "out"
    assert run_cli("emit", MODEL_PATH, "-o", out).exit_code == 0
    cache = tmp_path / "cache"
    monkeypatch.setenv("KGEN_CACHE_DIR", str(cache))
    kgen.load(str(MODEL_PATH))  # converted here; served there
    _, _, x_test, _ = load_split()
    np.save(tmp_path / "x.npy", x_test)
    jobs = {
        "module": str(out / "digits_cnn.py"),
        "weights": str(out / "digits_cnn.safetensors"),
        "input": str(tmp_path / "x.npy"),
        "out": str(tmp_path / "y.npy"),
        "cached_out": str(tmp_path / "y_cached.npy"),
        "source": str(MODEL_PATH),
    }
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env.update(KGEN_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu")
    child = _run([base_venv, "-c", CHILD, json.dumps(jobs)], cwd=tmp_path, env=env, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert not set(report["modules"]) & set(CONVERT_PACKAGES), report["modules"]

    reference = np.asarray(
        keras.saving.load_model(MODEL_PATH, compile=False, safe_mode=True)(x_test, training=False)
    )
    for name in ("y.npy", "y_cached.npy"):
        got = np.load(tmp_path / name)
        assert np.max(np.abs(got - reference)) / np.max(np.abs(reference)) <= 1e-5

    kgen_cmd = base_venv.with_name("kgen")
    emit = _run([kgen_cmd, "emit", "MobileNet", "-o", tmp_path / "o"], env=env, timeout=120)
    assert emit.returncode == 2, emit.stderr
    assert emit.stderr.startswith("kgen: error: kgen emit needs the conversion packages (")
    assert emit.stderr.rstrip().endswith("pip install 'kgen-flax[convert]'")
    assert len(emit.stderr.splitlines()) == 1 and not (tmp_path / "o").exists()
    entries = _run([kgen_cmd, "cache", "list", "--json"], env=env, timeout=120)
    assert entries.returncode == 0, entries.stderr
    assert [json.loads(line)["class_name"] for line in entries.stdout.splitlines()] == ["DigitsCnn"]
