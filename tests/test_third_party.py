"""Models built with third-party Keras packages (keras-hub, keras-tcn, kecam), which
convert because kgen traces into their layer classes (tracer/custom.py).

Each is built offline from its constructor with tiny hyper-parameters, every variable
randomised, saved as a file, converted with ``kgen emit FILE`` and compared with Keras
at 1e-4.  The smallest of each package runs in the default suite; the rest are behind
the ``catalog`` marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import import_file, run_cli

from kgen.runtime import load_variables
from kgen.verify import compare, randomize

keras = pytest.importorskip("keras")


def _emit(path, out):
    result = run_cli("emit", path, "-o", out)
    assert result.exit_code == 0, result.output
    (py_path,) = out.glob("*.py")
    generated = import_file(py_path)
    module = getattr(generated, generated.__all__[0])()
    return py_path.read_text(), module, load_variables(py_path.with_suffix(".safetensors"))


def _check_file_conversion(model, tmp_path, inputs):
    """Save ``model``, emit it, and compare on ``inputs`` (one array, or a dict by
    Keras input name, in the model's input order)."""
    randomize(model, seed=0)
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    source, module, variables = _emit(path, tmp_path / "out")
    reference = model(inputs)
    xs = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    result = module.apply(variables, *xs)
    report = compare(_numpy(reference), _numpy(result))
    assert report.ok, report.lines()
    return source, variables


def _numpy(value):
    if isinstance(value, dict):
        return {k: np.asarray(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [np.asarray(v) for v in value]
    return np.asarray(value)


def _tokens(batch=2, length=9, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, length)).astype("int32")
    mask = np.ones((batch, length), "int32")
    mask[0, -3:] = 0  # padding in the first sequence
    return ids, mask


# -- keras-hub ---------------------------------------------------------------------------

keras_hub = pytest.importorskip("keras_hub")


def test_keras_hub_bert_backbone(tmp_path):
    model = keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=12,
        num_segments=2,
    )
    ids, mask = _tokens()
    segments = np.random.default_rng(1).integers(0, 2, size=ids.shape).astype("int32")
    inputs = {"token_ids": ids, "segment_ids": segments, "padding_mask": mask}
    source, variables = _check_file_conversion(model, tmp_path, inputs)
    assert "class TransformerEncoder(nn.Module):" in source
    assert "class PositionEmbedding(nn.Module):" in source
    layer = variables["params"]["transformer_layer_0"]
    assert {"self_attention_layer", "feedforward_intermediate_dense"} <= set(layer)
    assert set(variables["params"]["position_embedding"]) == {"embeddings"}


@pytest.mark.catalog
def test_keras_hub_gpt2_backbone(tmp_path):
    model = keras_hub.models.GPT2Backbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=12,
    )
    ids, mask = _tokens()
    source, _ = _check_file_conversion(model, tmp_path, {"token_ids": ids, "padding_mask": mask})
    assert "class TransformerDecoder(nn.Module):" in source
    assert "jnp.arange(decoder_sequence.shape[1]" in source  # the causal mask, at run time


@pytest.mark.catalog
def test_keras_hub_vit_backbone(tmp_path):
    model = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    images = np.random.default_rng(0).uniform(-1, 1, size=(2, 16, 16, 3)).astype("float32")
    source, _ = _check_file_conversion(model, tmp_path, images)
    assert "class ViTEncoder(nn.Module):" in source or "class ViTEncoderBlock" in source


@pytest.mark.catalog
def test_keras_hub_efficientnet_backbone(tmp_path):
    model = keras_hub.models.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3, 3],
        stackwise_num_repeats=[1, 2, 1],
        stackwise_input_filters=[8, 8, 16],
        stackwise_output_filters=[8, 16, 16],
        stackwise_expansion_ratios=[1, 4, 4],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.25, 0.25],
        stackwise_strides=[1, 2, 2],
        stackwise_block_types=["fused", "fused", "unfused"],
        stackwise_force_input_filters=[0] * 3,
        stackwise_nores_option=[False] * 3,
        stackwise_width_coefficients=[1.0] * 3,
        stackwise_depth_coefficients=[1.0] * 3,
        input_shape=(32, 32, 3),
    )
    images = np.random.default_rng(0).uniform(-1, 1, size=(2, 32, 32, 3)).astype("float32")
    source, _ = _check_file_conversion(model, tmp_path, images)
    assert "class MBConvBlock(nn.Module):" in source


@pytest.mark.catalog
def test_keras_hub_mobilenet_v3_backbone(tmp_path):
    model = keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[16, 24], [32]],
        stackwise_num_blocks=[2, 1],
        stackwise_num_filters=[[8, 8], [16]],
        stackwise_kernel_size=[[3, 3], [5]],
        stackwise_num_strides=[[2, 1], [2]],
        stackwise_se_ratio=[[None, None], [0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish"]],
        stackwise_padding=[[1, 1], [2]],
        output_num_filters=32,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        last_layer_filter=48,
        squeeze_and_excite=0.5,
        image_shape=(32, 32, 3),
        input_num_filters=8,
    )
    images = np.random.default_rng(0).uniform(-1, 1, size=(2, 32, 32, 3)).astype("float32")
    source, _ = _check_file_conversion(model, tmp_path, images)
    assert "class InvertedResidualBlock(nn.Module):" in source


# -- keras-tcn ---------------------------------------------------------------------------


def test_keras_tcn_classifier(tmp_path):
    tcn = pytest.importorskip("tcn")
    x = keras.Input((12, 3), name="series")
    h = tcn.TCN(nb_filters=8, kernel_size=3, dilations=(1, 2, 4), name="tcn")(x)
    model = keras.Model(x, keras.layers.Dense(2, name="head")(h), name="tcn_classifier")
    series = np.random.default_rng(0).normal(size=(2, 12, 3)).astype("float32")
    source, variables = _check_file_conversion(model, tmp_path, series)
    assert "class TCN(nn.Module):" in source
    assert "class ResidualBlock(nn.Module):" in source
    blocks = {f"residual_blocks_{i}" for i in range(3)}  # TCN's own attribute, one per dilation
    assert set(variables["params"]["tcn"]) == blocks


# -- kecam (keras-cv-attention-models), a tf.keras package ------------------------------

_KECAM_BUILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from keras_cv_attention_models import {module}
    from kgen.verify import randomize

    model = {module}.{factory}(input_shape={shape}, pretrained=None, num_classes=10)
    randomize(model, seed=0)
    model.save(sys.argv[1])
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, *{shape})).astype("float32")
    np.savez(sys.argv[2], x=x, y=model(x).numpy())
    """
)


def _kecam(tmp_path, module: str, factory: str, shape: tuple) -> str:
    """Build, save (.h5) and convert a kecam model; returns the generated source.

    kecam needs tf.keras (it sets ``TF_USE_LEGACY_KERAS=1`` itself), so it is built and
    converted in processes of its own, ``--plugin`` importing its layer classes.
    """
    pytest.importorskip("keras_cv_attention_models")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    path, data = tmp_path / f"{factory}.h5", tmp_path / "io.npz"
    script = _KECAM_BUILD.format(module=module, factory=factory, shape=shape)
    subprocess.run([sys.executable, "-c", script, path, data], check=True, env=env)
    out = tmp_path / "out"
    cli = "from kgen.cli import main; main()"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            cli,
            "--plugin",
            "keras_cv_attention_models",
            "emit",
            path,
            "-o",
            out,
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    py_path = json.loads(result.stdout.strip().splitlines()[-1])["module"]
    generated = import_file(py_path)
    module_ = getattr(generated, generated.__all__[0])()
    variables = load_variables(py_path.replace(".py", ".safetensors"))
    io = np.load(data)
    report = compare(io["y"], np.asarray(module_.apply(variables, io["x"])))
    assert report.ok, report.lines()
    return open(py_path).read()


def test_kecam_convnext_v2_atto(tmp_path):
    source = _kecam(tmp_path, "convnext", "ConvNeXtV2Atto", (32, 32, 3))
    assert "class ChannelAffine(nn.Module):" in source


@pytest.mark.catalog
def test_kecam_mobilevit_xxs(tmp_path):
    source = _kecam(tmp_path, "mobilevit", "MobileViT_XXS", (64, 64, 3))
    assert "jnp.split" in source
