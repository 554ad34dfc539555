"""Logical axis names on kernels (``--logical-axes``) and the tensor-parallel example."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import keras
import numpy as np
import pytest
from helpers import run_cli
from test_user_models import tiny_transformer

import kgen
import kgen.runtime
from kgen.errors import KgenError


def _specs(conversion, *example):
    abstract = jax.eval_shape(conversion.module.init, jax.random.key(0), *example)
    return nn.get_partition_spec(abstract)["params"]


def test_attention_models_name_their_kernel_axes_by_default():
    model = tiny_transformer()
    conversion = kgen.convert(model)
    specs = _specs(conversion, np.zeros((1, 10), np.float32))
    P = jax.sharding.PartitionSpec
    assert specs["mha0"]["query"]["kernel"] == P("embed", "heads", "kv")
    assert specs["mha0"]["attention_output"]["kernel"] == P("heads", "kv", "embed")
    assert specs["ff0a"]["kernel"] == P("embed", "mlp")  # 16 -> 32: into the hidden width
    assert specs["ff0b"]["kernel"] == P("mlp", "embed")  # and back
    assert specs["tok_emb"]["embedding"] == P("vocab", "embed")
    assert "nn.with_logical_partitioning" in conversion.source
    # The weights are plain arrays, and load as before
    assert not any(isinstance(v, nn.Partitioned) for v in jax.tree_util.tree_leaves(
        conversion.variables, is_leaf=lambda v: isinstance(v, nn.Partitioned)))  # fmt: skip
    fresh = kgen.runtime.init(conversion.module, np.zeros((1, 10), np.float32))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(
        conversion.variables
    )  # plain arrays, as a weights file holds them
    plain = kgen.convert(model, logical_axes=False)
    assert "with_logical_partitioning" not in plain.source
    x = np.random.default_rng(0).integers(0, 30, (2, 10)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(conversion.module.apply(conversion.variables, x)),
        np.asarray(plain.module.apply(plain.variables, x)),
    )


def test_models_without_attention_are_unchanged_unless_asked():
    x = keras.Input((6,))
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.Dense(8)(x)))
    assert "with_logical_partitioning" not in kgen.convert(model).source
    asked = kgen.convert(model, logical_axes=True)
    specs = _specs(asked, np.zeros((1, 6), np.float32))
    assert set(specs) == {"dense", "dense_1"}
    with pytest.raises(KgenError, match="linen modules only"):
        kgen.convert(model, api="nnx", logical_axes=True)


def test_cli_flag(tmp_path):
    model = tiny_transformer()
    path = tmp_path / "t.keras"
    model.save(path)
    result = run_cli("emit", path, "--no-logical-axes", "--weights", "none", "-o", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "with_logical_partitioning" not in next((tmp_path / "a").glob("*.py")).read_text()
    result = run_cli("emit", path, "--api", "nnx", "--logical-axes", "-o", tmp_path / "b")
    assert result.exit_code == 2 and "linen modules only" in result.output
    assert not (tmp_path / "b").exists()


def test_tensor_parallel_example_matches_one_device_and_keras(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    proc = subprocess.run(
        [sys.executable, "-m", "kgen.examples.tensor_parallel"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["mesh"] == {"data": 2, "model": 2}
    # every attention projection and feed-forward kernel is split over "model"
    assert result["sharded_variables"] >= 20
    shard = result["example_shards"]["['block0']['attention']['key']['kernel']"]
    assert shard == [[32, 4, 8], [32, 2, 8]]
    assert result["logits_max_rel"] <= 1e-5 and result["logits_vs_keras_max_rel"] <= 1e-4
    assert result["stepped_params_max_rel"] <= 1e-5 and result["stepped_sharding_kept"]
    assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-5)
