"""Fine-tuning paths: a pretrained backbone under a new head (``--classes N`` with the
ImageNet weights), feature outputs (``outputs=``), the optax fine-tuning example with a
frozen backbone, and the data-parallel example on 4 host devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import run_cli

from kgen import pipeline
from kgen.errors import SourceError
from kgen.examples.digits import MODEL_PATH
from kgen.runtime import load_variables
from kgen.verify import randomize


def _at(tree, weights_path, keras_name):
    """The variables of one Keras layer, wherever folding put them (the file says)."""
    from safetensors import safe_open

    with safe_open(str(weights_path), "np") as f:
        paths = json.loads(f.metadata()["keras_layers"])
    node = tree
    for part in {v: k for k, v in paths.items()}[keras_name].split("/"):
        node = node[part]
    return node


def test_classes_with_the_imagenet_weights_keeps_the_backbone(tmp_path, monkeypatch):
    import keras
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils import file_utils

    reference = keras.applications.MobileNet(weights=None)
    randomize(reference, seed=7)
    fake = tmp_path / "mobilenet_1_0_224_tf.h5"
    with h5py.File(fake, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: str(fake))

    out = tmp_path / "out"
    result = run_cli("emit", "MobileNet", "--classes", "10", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["class"] == "MobileNetClasses10" and info["fresh_layers"] == ["conv_preds"]
    variables = load_variables(info["weights"])
    params = variables["params"]
    # Every backbone layer carries the (stand-in) ImageNet weights; the head is new.
    np.testing.assert_array_equal(params["conv1"]["kernel"], reference.get_layer("conv1").kernel)
    np.testing.assert_array_equal(
        _at(variables["batch_stats"], info["weights"], "conv_pw_13_bn")["var"],
        reference.get_layer("conv_pw_13_bn").moving_variance,
    )
    assert params["conv_preds"]["kernel"].shape == (1, 1, 1024, 10)


def test_outputs_return_named_feature_maps_with_parity():
    source = pipeline.Source.of(str(MODEL_PATH), outputs="relu2,gap")
    assert source.options == {"outputs": ("relu2", "gap")}
    result = pipeline.verify(source, taps=0)
    assert result.report.ok, result.report.lines()
    shapes = [o.shape for o in result.report.outputs]
    assert len(shapes) == 2 and len(shapes[0]) == 4 and len(shapes[1]) == 2
    with pytest.raises(SourceError, match="no layer named 'nope'"):
        pipeline.load(pipeline.Source.of(str(MODEL_PATH), outputs=("nope",)))
    with pytest.raises(SourceError, match="do not apply to a module:factory source"):
        pipeline.Source.of("mypkg.models:make", outputs=("gap",))


def test_fine_tuning_example_freezes_the_backbone(tmp_path, monkeypatch):
    from kgen.examples import fine_tune

    monkeypatch.setenv("KGEN_CACHE_DIR", str(tmp_path / "cache"))
    result = fine_tune.run(epochs=6)
    assert result["backbone_unchanged"] and result["head_trained"]
    assert result["accuracy"] >= 0.9 > result["chance"] + 0.5, result
    assert result["restored_accuracy"] == result["accuracy"]


def test_data_parallel_example_matches_one_device(tmp_path):
    env = {**os.environ, "KGEN_CACHE_DIR": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    proc = subprocess.run(
        [sys.executable, "-m", "kgen.examples.data_parallel"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["logits_sharding"] == "P('data',)"
    assert result["logits_max_rel"] <= 1e-5
    assert result["params_max_rel"] <= 1e-5 and result["batch_stats_max_rel"] <= 1e-5
    assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-5)
