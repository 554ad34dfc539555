"""The command line and the Python API, end to end: list, emit, verify, kgen.convert."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import import_file, rand, run_cli

import kgen
import kgen.api
import kgen.verify
from kgen.runtime import load_variables
from kgen.tracer.catalog import APPLICATIONS
from kgen.verify import compare, randomize

JSON_KEYS = {"module", "weights", "class", "layers", "fresh_layers", "seconds", "timings"}


def tiny_model(name="tiny"):
    import keras

    x = keras.Input((6,), name="features")
    h = keras.layers.Dense(4, name="d1")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("relu", name="act")(h)
    return keras.Model(x, keras.layers.Dense(3, name="d2")(h), name=name)


@pytest.fixture
def tiny_file(tmp_path):
    """A randomised tiny model saved as .keras; returns (model, path)."""
    model = tiny_model()
    randomize(model, seed=11)
    path = tmp_path / "tiny.keras"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """MobileNet (the smallest application) with every variable randomised, and the
    ``.weights.h5`` file ``model.save_weights`` writes for it."""
    import keras

    model = keras.applications.MobileNet(weights=None)
    randomize(model, seed=5)
    path = tmp_path_factory.mktemp("mobilenet") / "random.weights.h5"
    model.save_weights(path)
    return model, path


def parse_json_line(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {stdout!r}"
    return json.loads(lines[0])


def test_list_prints_application_names_one_per_line():
    result = run_cli("list")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == list(APPLICATIONS)
    assert "MobileNet" in result.stdout.splitlines()
    assert result.stderr == ""


def test_emit_application_with_weights_file(mobilenet, tmp_path):
    import keras

    model, weights = mobilenet
    out = tmp_path / "out"
    result = run_cli("emit", "MobileNet", "-o", out, "--weights", weights, "--json")
    assert result.exit_code == 0, result.stderr
    info = parse_json_line(result.stdout)
    assert set(info) == JSON_KEYS
    assert info["class"] == "MobileNet"
    assert info["module"] == str(out / "mobilenet.py")
    assert info["weights"] == str(out / "mobilenet.safetensors")
    assert info["layers"] == sum(not isinstance(la, keras.layers.InputLayer) for la in model.layers)
    assert isinstance(info["seconds"], float) and info["seconds"] > 0
    steps = ["import", "keras_load", "trace", "lower", "fold", "render", "format", "write"]
    assert list(info["timings"]) == steps and all(v >= 0 for v in info["timings"].values())
    assert sum(info["timings"].values()) <= info["seconds"] + 0.01
    assert info["fresh_layers"] == []
    assert sorted(os.listdir(out)) == ["mobilenet.py", "mobilenet.safetensors"]  # no temp files

    net = import_file(info["module"]).MobileNet()
    variables = load_variables(info["weights"], net)  # also checks every shape
    assert set(variables) == {"params", "batch_stats"}

    # Compare logits (the layer before the softmax) as well as the probabilities.
    x = rand(2, 224, 224, 3, seed=3)
    logits_model = keras.Model(model.inputs, model.get_layer("conv_preds").output)
    ref_logits, ref_probs = np.asarray(logits_model(x)), np.asarray(model(x, training=False))

    @jax.jit
    def apply(v, x):
        return net.apply(v, x, capture_intermediates=lambda mdl, method: mdl.name == "conv_preds")

    probs, state = apply(variables, x)
    logits = state["intermediates"]["conv_preds"]["__call__"][0]
    for ref, got in ((ref_logits, logits), (ref_probs, probs)):
        report = compare(ref, jax.device_get(got))
        assert report.ok, report.lines()


def test_emit_weights_none_writes_code_only(tiny_file, tmp_path):
    _, path = tiny_file
    out = tmp_path / "out"
    result = run_cli("emit", path, "-o", out, "--weights", "none", "--json")
    assert result.exit_code == 0, result.stderr
    info = parse_json_line(result.stdout)
    assert info["weights"] is None
    assert info["class"] == "Tiny" and info["layers"] == 4
    assert sorted(os.listdir(out)) == ["tiny.py"]


def test_emit_text_output_names_the_files(tiny_file, tmp_path):
    _, path = tiny_file
    result = run_cli("emit", path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"wrote {tmp_path / 'out' / 'tiny.py'} (class Tiny, 4 layers)",
        f"wrote {tmp_path / 'out' / 'tiny.safetensors'}",
    ]


def test_emit_model_file_keeps_its_weights(tiny_file, tmp_path):
    model, path = tiny_file
    result = run_cli("emit", path, "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    info = parse_json_line(result.stdout)
    net = import_file(info["module"]).Tiny()
    x = rand(5, 6, seed=2)
    report = compare(np.asarray(model(x)), net.apply(load_variables(info["weights"], net), x))
    assert report.ok, report.lines()


def test_emit_json_is_alone_on_stdout_in_a_real_process(tiny_file, tmp_path):
    """No TensorFlow/absl log lines on stderr, and exactly one JSON line on stdout, even
    without TF_CPP_MIN_LOG_LEVEL set by the caller."""
    _, path = tiny_file
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KGEN_DEBUG")}
    proc = subprocess.run(
        [sys.executable, "-m", "kgen.cli", "emit", str(path), "-o", str(tmp_path / "o"), "--json"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert set(parse_json_line(proc.stdout)) == JSON_KEYS


def test_verify_application_passes_with_every_variable_randomised():
    result = run_cli("verify", "MobileNet", "--batch", "1", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    assert info["randomized"] is True and info["ok"] is True
    assert info["max_rel"] <= info["tolerance"] == 1e-4
    outputs = {o["name"]: o for o in info["outputs"]}
    assert outputs["output"]["shape"] == [1, 1000]
    assert outputs["output"]["top1"] == 1.0
    taps = [name for name in outputs if name.startswith("tap:")]
    assert len(taps) == 8  # intermediate layer outputs are compared too (--taps 8)
    assert all(o["max_rel"] <= 1e-4 for o in outputs.values())


def test_verify_taps_can_be_turned_off():
    result = run_cli("verify", "MobileNet", "--batch", "1", "--taps", "0", "--no-pack", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert [o["name"] for o in json.loads(result.stdout)["outputs"]] == ["output"]


def test_verify_compares_packed_kernels_too():
    """Where oneDNN runs, verify compares the module a second time with its kernels packed
    (rt.pack), against Keras; MobileNet at batch 1 has convolutions that pack."""
    from kgen.runtime import onednn

    result = run_cli("verify", "MobileNet", "--batch", "1", "--taps", "0", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    expected = ["output", "packed:output"] if onednn.available() else ["output"]
    assert [o["name"] for o in outputs] == expected
    assert all(o["max_rel"] <= 1e-4 for o in outputs)


def test_verify_randomises_every_variable(tiny_file, monkeypatch):
    model, path = tiny_file
    seen = []

    def recording_randomize(m, seed=0):
        seen.append(m)
        return randomize(m, seed)

    monkeypatch.setattr(kgen.verify, "randomize", recording_randomize)
    result = run_cli("verify", path)
    assert result.exit_code == 0, result.stdout + result.stderr
    [loaded] = seen
    assert len(loaded.weights) == len(model.weights) == 8
    for saved, used in zip(model.weights, loaded.weights):
        assert not np.allclose(np.asarray(saved), np.asarray(used)), saved.path
    lines = result.stdout.splitlines()
    assert "every variable randomised" in lines[0]
    assert "max abs" in lines[1] and "max rel" in lines[1] and "top-1 agreement" in lines[1]
    assert lines[-1].startswith("PASS: max rel")


def test_verify_with_model_weights_does_not_randomise(tiny_file, monkeypatch):
    _, path = tiny_file
    monkeypatch.setattr(kgen.verify, "randomize", lambda *a, **k: pytest.fail("randomised"))
    result = run_cli("verify", path, "--weights", "model", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["randomized"] is False


@pytest.mark.parametrize("as_json", [False, True])
def test_verify_exits_1_when_parity_fails(tiny_file, monkeypatch, as_json):
    """A converter bug (here: every converted parameter shifted) makes verify fail."""
    _, path = tiny_file
    convert = kgen.api.convert_model

    def broken_convert(model, **kwargs):
        conversion = convert(model, **kwargs)
        conversion.variables["params"] = jax.tree_util.tree_map(
            lambda a: a + 0.5, conversion.variables["params"]
        )
        return conversion

    monkeypatch.setattr(kgen.api, "convert_model", broken_convert)
    result = run_cli("verify", path, *(["--json"] if as_json else []))
    assert result.exit_code == 1
    assert result.stderr == ""
    if as_json:
        info = json.loads(result.stdout)
        assert info["ok"] is False and info["max_rel"] > 1e-4
    else:
        assert result.stdout.splitlines()[-1].startswith("FAIL: max rel")


def test_python_api_convert(tiny_file):
    model, _ = tiny_file
    conversion = kgen.convert(model)
    assert isinstance(conversion, kgen.Conversion)
    assert conversion.class_name == "Tiny" and conversion.n_layers == 4
    imports = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(conversion.source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imports <= {"flax", "jax", "numpy", "einops", "kgen"}, imports
    x = rand(3, 6, seed=4)
    got = jax.jit(conversion.module.apply)(conversion.variables, x)
    report = compare(np.asarray(model(x, training=False)), jax.device_get(got))
    assert report.ok, report.lines()
