"""Flax-reserved submodule names, and ``load_variables``'s dtype and key-structure checks.

A Keras layer named ``params`` would become a submodule named ``params``, so the
variables would hold ``variables["params"]["params"]``, which flax's ``apply`` refuses
as a doubly wrapped dict (``ApplyScopeInvalidVariablesStructureError``).  The
submodule gets another name, with a comment naming the Keras layer.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.errors import ApplyScopeInvalidVariablesStructureError
from helpers import assert_parity, import_file, rand, run_cli
from safetensors.numpy import load_file, save_file

import kgen
from kgen import WeightsError
from kgen.codegen.names import FLAX_RESERVED, Namespace, submodule_namespace
from kgen.runtime import check_variables, load_variables
from kgen.runtime.variables import unflatten
from kgen.verify import compare, randomize

#: Names flax could plausibly treat specially: collections, rng streams, Module
#: attributes and methods.  Only FLAX_RESERVED ones break a module.
CANDIDATES = [
    "params",
    "batch_stats",
    "cache",
    "intermediates",
    "dropout",
    "losses",
    "perturbations",
    "spectral_stats",
    "parent",
    "name",
    "scope",
    "variables",
    "init",
    "apply",
    "setup",
    "bind",
    "path",
    "param",
    "variable",
    "sow",
    "make_rng",
    "kernel",
    "bias",
]


class _Named(nn.Module):
    """A Dense and a BatchNorm-like submodule (params + batch_stats) under given names."""

    dense: str
    norm: str

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(3, name=self.dense)(x)
        return nn.BatchNorm(use_running_average=not train, name=self.norm)(x)


@pytest.mark.parametrize("name", CANDIDATES)
def test_flax_reserved_names_are_exactly_the_breaking_ones(name):
    """Guards FLAX_RESERVED against a flax upgrade: every candidate name works as a
    submodule name except the reserved ones, which fail in ``apply``."""
    x = jnp.ones((2, 4))
    for module in (_Named(dense=name, norm="norm"), _Named(dense="dense", norm=name)):
        variables = module.init(jax.random.PRNGKey(0), x)
        if name in FLAX_RESERVED:
            with pytest.raises(ApplyScopeInvalidVariablesStructureError):
                module.apply(variables, x)
            continue
        module.apply(variables, x)
        _, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
        assert set(updates) == {"batch_stats"}


def test_submodule_namespace_suffixes_reserved_names_deterministically():
    for _ in range(2):  # a fresh namespace gives the same names
        ns = submodule_namespace()
        assert ns.create("params") == "params_"
        assert ns.create("params_") == "params__1"  # sanitises to params too
        assert ns.create("params.") == "params__2"
        assert ns.create("batch_stats") == "batch_stats"
        assert ns.create("dropout") == "dropout"
    # Plain namespaces (locals, class names) keep ``params``.
    assert Namespace().create("params") == "params"


def _reserved_names_model():
    """Layers named like flax collections, at the top and inside a nested model (with a
    shared layer named ``params`` there), and a nested model named ``params``."""
    import keras

    shared = keras.layers.Dense(5, name="params")
    inner_in = keras.Input((5,))
    h = shared(inner_in)
    h = keras.layers.BatchNormalization(name="batch_stats")(h)
    inner = keras.Model(inner_in, shared(h), name="intermediates")
    other = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(5, name="params")], name="params_model"
    )
    x = keras.Input((4,))
    h = keras.layers.Dense(5, activation="tanh", name="params")(x)
    h = keras.layers.BatchNormalization(name="batch_stats")(h)
    h = keras.layers.Dropout(0.3, name="dropout")(h)
    h = keras.layers.Dense(5, name="cache")(h)
    h = inner(h)
    return keras.Model(x, other(h), name="reserved")


def _nested_model_named_params():
    import keras

    nested = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="params")], name="params"
    )
    x = keras.Input((4,))
    return keras.Model(x, nested(keras.layers.Dense(4, name="cache")(x)), name="outer")


def _submodule_names(source: str) -> list[str]:
    import ast

    return [
        kw.value.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "name"
    ]


def test_layers_named_like_collections_convert_and_match_keras():
    model = _reserved_names_model()
    conversion, _ = assert_parity(model, tolerance=1e-4)
    source = conversion.source
    names = _submodule_names(source)
    assert "params" not in names
    assert names.count("params_") == 3  # top level, nested model, Sequential
    assert {"batch_stats", "dropout", "cache", "intermediates"} <= set(names)
    assert source.count("# Keras layer 'params': flax reserves the submodule name params") == 3
    variables = conversion.variables
    assert "params" not in variables["params"]
    assert set(variables["params"]["intermediates"]) == {"params_", "batch_stats"}
    assert set(variables["batch_stats"]) == {"batch_stats", "intermediates"}

    # Training mode: batch statistics update under the same names, dropout draws its rng.
    x = rand(3, 4, seed=4)
    _, updates = conversion.module.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
    )
    assert set(updates["batch_stats"]) == {"batch_stats", "intermediates"}


def test_nested_model_named_params():
    conversion, _ = assert_parity(_nested_model_named_params(), tolerance=1e-4)
    assert "params_" in _submodule_names(conversion.source)
    assert set(conversion.variables["params"]) == {"cache", "params_"}


def _sequential_reserved_names_model():
    """Reserved names at the top and in a nested Sequential (no nested functional model,
    whose output ``kgen verify``'s default taps cannot tap, see the test below)."""
    import keras

    inner = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(5, name="params")], name="batch_stats"
    )
    x = keras.Input((4,))
    h = keras.layers.Dense(5, activation="tanh", name="params")(x)
    h = keras.layers.BatchNormalization(name="batch_stats_bn")(h)
    h = keras.layers.Dense(5, name="cache")(h)
    return keras.Model(x, inner(h), name="reserved_seq")


def test_cli_verify_with_taps_a_file_with_reserved_names(tmp_path):
    model = _sequential_reserved_names_model()
    path = tmp_path / "reserved_seq.keras"
    model.save(path)
    result = run_cli("verify", path)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


def test_cli_verify_and_emit_a_file_with_reserved_names(tmp_path):
    model = _reserved_names_model()
    randomize(model, seed=3)
    path = tmp_path / "reserved.keras"
    model.save(path)

    # With the default taps too: a nested functional model is not tapped (its
    # ``.output`` belongs to its own graph, which used to make verify exit 3).
    result = run_cli("verify", path)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output

    out = tmp_path / "out"
    result = run_cli("emit", path, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    net = getattr(import_file(info["module"]), info["class"])()
    variables = load_variables(info["weights"], module=net)
    x = rand(4, 4, seed=5)
    report = compare(np.asarray(model(x, training=False)), jax.device_get(net.apply(variables, x)))
    assert report.ok, report.lines()


# ---------------------------------------------------------------------------------------
# load_variables: dtypes and key structure


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomised Dense -> BatchNorm -> Dense model, converted and written once."""
    import keras

    x = keras.Input((6,))
    h = keras.layers.Dense(4, name="d1")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(x, keras.layers.Dense(3, name="d2")(h), name="tiny")
    randomize(model, seed=2)
    conversion = kgen.convert(model)
    py_path, st_path = conversion.write(tmp_path_factory.mktemp("tiny"))
    x = rand(4, 6, seed=1)
    return {
        "net": import_file(py_path).Tiny(),
        "flat": load_file(str(st_path)),
        "x": x,
        "reference": np.asarray(model(x, training=False)),
    }


def _write(tmp_path, flat, name="w.safetensors"):
    path = tmp_path / name
    save_file(flat, str(path))
    return path


KERNEL = "params/d1/kernel"


@pytest.mark.parametrize("dtype", ["float16", "float64", "int32", "bool"])
def test_wrong_dtype_is_a_weights_error(tiny, tmp_path, dtype):
    flat = dict(tiny["flat"])
    flat[KERNEL] = flat[KERNEL].astype(dtype)
    path = _write(tmp_path, flat)
    with pytest.raises(WeightsError) as info:
        load_variables(path, module=tiny["net"])
    message = str(info.value)
    assert f"{KERNEL}: file has dtype {dtype}, module expects float32" in message
    assert "cast=True" in message
    assert "\n" not in message
    # Without a module nothing is checked (as for shapes).
    assert set(load_variables(path)) == {"params", "batch_stats"}


@pytest.mark.parametrize("dtype", ["float16", "float64", "int32", "bool"])
def test_cast_gives_float32_arrays(tiny, tmp_path, dtype):
    flat = {k: v.astype(dtype) if k.startswith("params/d2") else v for k, v in tiny["flat"].items()}
    variables = load_variables(_write(tmp_path, flat), module=tiny["net"], cast=True)
    for leaf in jax.tree_util.tree_leaves(variables):
        assert leaf.dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["d2"]["kernel"]),
        flat["params/d2/kernel"].astype(np.float32),
    )
    check_variables(tiny["net"], variables)


def test_cast_float64_applies_like_keras(tiny, tmp_path):
    flat = {k: v.astype(np.float64) for k, v in tiny["flat"].items()}
    path = _write(tmp_path, flat)
    with pytest.raises(WeightsError, match="file has dtype float64"):
        load_variables(path, module=tiny["net"])
    variables = load_variables(path, module=tiny["net"], cast=True)
    report = compare(tiny["reference"], jax.device_get(tiny["net"].apply(variables, tiny["x"])))
    assert report.ok, report.lines()


def test_cast_keeps_the_shape_check(tiny, tmp_path):
    flat = dict(tiny["flat"])
    flat[KERNEL] = np.zeros((6, 5), np.float64)
    with pytest.raises(WeightsError) as info:
        load_variables(_write(tmp_path, flat), module=tiny["net"], cast=True)
    assert "params/d1/kernel: file has shape (6, 5), module expects (6, 4)" in str(info.value)


def test_cast_needs_a_module(tiny, tmp_path):
    with pytest.raises(ValueError, match="needs module"):
        load_variables(_write(tmp_path, dict(tiny["flat"])), cast=True)


def test_check_variables_checks_dtypes(tiny):
    variables = jax.tree_util.tree_map(np.asarray, unflatten(dict(tiny["flat"])))
    check_variables(tiny["net"], variables)
    variables["batch_stats"]["bn"]["mean"] = variables["batch_stats"]["bn"]["mean"].astype(int)
    with pytest.raises(WeightsError, match=r"batch_stats/bn/mean: file has dtype int64") as info:
        check_variables(tiny["net"], variables)
    assert "module expects float32" in str(info.value)


@pytest.mark.parametrize("with_module", [False, True])
@pytest.mark.parametrize(
    ("extra", "leaf"),
    [
        ("params/d1", "params/d1"),  # a leaf above existing keys
        ("params/d1/kernel/x", "params/d1/kernel"),  # a key below an existing leaf
        ("params", "params"),
    ],
)
def test_leaf_and_prefix_is_a_weights_error(tiny, tmp_path, with_module, extra, leaf):
    flat = dict(tiny["flat"])
    flat[extra] = np.zeros((2,), np.float32)
    path = _write(tmp_path, flat)
    with pytest.raises(WeightsError) as info:
        load_variables(path, module=tiny["net"] if with_module else None)
    message = str(info.value)
    assert str(path) in message
    assert f"key {leaf} is both a tensor and a prefix of key " in message
    assert message.split("prefix of key ")[1].startswith(leaf + "/")
    assert "\n" not in message


@pytest.mark.parametrize("order", ["leaf first", "prefix first"])
def test_unflatten_finds_the_conflict_in_either_order(order):
    pairs = [("a/b", np.zeros(1)), ("a/b/c", np.zeros(1))]
    flat = dict(pairs if order == "leaf first" else pairs[::-1])
    with pytest.raises(WeightsError, match="key a/b is both a tensor and a prefix of key a/b/c"):
        unflatten(flat)


@pytest.mark.parametrize(
    "key", ["params//kernel", "/params/d1/x", "params/d1/x/", "", "/", "params/\n//x"]
)
def test_empty_path_component_is_a_weights_error(tiny, tmp_path, key):
    flat = dict(tiny["flat"])
    flat[key] = np.zeros((2,), np.float32)
    path = _write(tmp_path, flat)
    for module in (None, tiny["net"]):
        with pytest.raises(WeightsError, match="has an empty path component") as info:
            load_variables(path, module=module)
        assert ascii(key) in str(info.value) or key in str(info.value)
        assert "\n" not in str(info.value)


def test_unexpected_key_with_odd_characters_stays_one_line(tiny, tmp_path):
    flat = dict(tiny["flat"])
    flat["params/d1\nx/kernel"] = np.zeros((2,), np.float32)
    with pytest.raises(WeightsError) as info:
        load_variables(_write(tmp_path, flat), module=tiny["net"])
    message = str(info.value)
    assert "'params/d1\\nx/kernel': unexpected (file has shape (2,))" in message
    assert "\n" not in message
