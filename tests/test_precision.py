"""Mixed precision (kgen.runtime.precision): float32 variables, bfloat16 computation,
normalisation statistics in float32, as Keras's ``mixed_bfloat16`` policy.

Tolerances (documented in docs/training.md): against the float32 module, bfloat16 logits
are within 2e-2 relative error (max |delta| / max |float32|) on the trained digits CNN
and within 2e-2 on a randomised MobileNetV2; the digits predictions agree on at least
99% of the held-out set; a bfloat16 training step's gradients have a cosine similarity
of at least 0.99 with float32's, tensor by tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kgen
from kgen import runtime as rt
from kgen.examples.digits import MODEL_PATH
from kgen.examples.digits.data import load_split

keras = pytest.importorskip("keras")

DIGITS_TOL = 2e-2
MOBILENET_TOL = 2e-2
GRAD_COSINE = 0.99


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _dtypes(fn, *args) -> set[str]:
    """The dtypes of every convolution and matmul operand in ``fn``'s jaxpr."""
    seen = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                seen.update(str(v.aval.dtype) for v in eqn.invars)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return seen


def test_digits_in_bfloat16_agree_with_float32():
    module, variables = kgen.load(str(MODEL_PATH))
    _, _, x_test, y_test = load_split()
    full = jax.jit(module.apply)(variables, x_test)
    half_apply = jax.jit(rt.mixed(module.apply, jnp.bfloat16))
    half = half_apply(variables, x_test)
    assert half.dtype == jnp.bfloat16
    # the convolutions and the head really run in bfloat16
    assert _dtypes(rt.mixed(module.apply), variables, x_test[:2]) == {"bfloat16"}
    agree = float(np.mean(np.argmax(full, -1) == np.argmax(np.asarray(half, np.float32), -1)))
    accuracy = float(np.mean(np.argmax(np.asarray(half, np.float32), -1) == y_test))
    print(
        f"\nbf16 vs f32: logits rel {_rel(half, full):.2e}, top-1 agreement {agree:.4f}, "
        f"bf16 accuracy {accuracy:.4f}"
    )
    assert _rel(half, full) <= DIGITS_TOL
    assert agree >= 0.99


def test_digits_in_bfloat16_agree_with_keras_mixed_bfloat16_policy():
    """Keras itself under ``mixed_bfloat16`` (TensorFlow backend), same weights: the two
    bfloat16 runs differ by about what each differs from float32."""
    from kgen.examples.digits.train import build_model

    _, _, x_test, _ = load_split()
    reference = keras.saving.load_model(MODEL_PATH)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        keras_half = build_model()
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    keras_half.set_weights(reference.get_weights())
    assert keras_half.get_layer("conv1").compute_dtype == "bfloat16"
    keras_out = np.asarray(keras_half(x_test, training=False)).astype(np.float32)
    module, variables = kgen.load(str(MODEL_PATH))
    half = np.asarray(jax.jit(rt.mixed(module.apply))(variables, x_test), np.float32)
    keras_spread = _rel(keras_out, np.asarray(reference(x_test, training=False)))
    print(
        f"\nkgen bf16 vs Keras bf16: {_rel(half, keras_out):.2e} (Keras bf16 vs f32 "
        f"{keras_spread:.2e})"
    )
    assert _rel(half, keras_out) <= DIGITS_TOL
    assert np.mean(np.argmax(half, -1) == np.argmax(keras_out, -1)) >= 0.99


def test_mobilenetv2_in_bfloat16_agrees_with_float32():
    from kgen.verify import randomize

    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(96, 96, 3), alpha=0.35, classifier_activation=None
    )
    randomize(model, 0)
    conversion = kgen.convert(model)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 96, 96, 3)).astype(np.float32)
    module, variables = conversion.module, conversion.variables
    full = jax.jit(module.apply)(variables, x)
    half = jax.jit(rt.mixed(module.apply))(variables, x)
    keras_out = np.asarray(model(x, training=False))
    assert _rel(full, keras_out) <= 1e-4  # float32 is still exact
    print(f"\nMobileNetV2 bf16 vs f32: logits rel {_rel(half, full):.2e}")
    assert _rel(half, full) <= MOBILENET_TOL


def test_training_step_in_bfloat16_keeps_float32_variables_and_statistics():
    module, variables = kgen.load(str(MODEL_PATH))
    x_train, y_train, _, _ = load_split()
    x, y = x_train[:32], y_train[:32]

    def loss(params, apply):
        logits, updates = apply(
            {**variables, "params": params},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.PRNGKey(0)},
        )
        onehot = jax.nn.one_hot(y, 10)
        ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits.astype(jnp.float32)), -1))
        return ce, updates

    grads = {}
    stats = {}
    for name, apply in (("f32", module.apply), ("bf16", rt.mixed(module.apply))):
        (_, updates), g = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
            variables["params"], apply
        )
        grads[name], stats[name] = g, updates["batch_stats"]
    for leaf in jax.tree.leaves(grads["bf16"]) + jax.tree.leaves(stats["bf16"]):
        assert leaf.dtype == jnp.float32  # master weights and moving statistics
    for a, b in zip(jax.tree.leaves(stats["bf16"]), jax.tree.leaves(stats["f32"])):
        assert _rel(a, b) <= DIGITS_TOL
    # a bfloat16 backward pass: each gradient points the same way as float32's (its
    # largest entries differ by up to ~20% on this model: max-relative is no measure here)
    cosines = [
        float(np.vdot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
        for a, b in zip(jax.tree.leaves(grads["bf16"]), jax.tree.leaves(grads["f32"]))
    ]
    print(f"\nbf16 training step: lowest gradient cosine {min(cosines):.4f}")
    assert min(cosines) >= GRAD_COSINE


def test_cast_floating_leaves_integers_alone():
    tree = {"w": np.ones(3, np.float32), "ids": np.arange(3), "n": 3}
    out = rt.cast_floating(tree, jnp.bfloat16)
    assert out["w"].dtype == jnp.bfloat16
    assert out["ids"].dtype == np.arange(3).dtype and out["n"] == 3
