"""Training-mode parity with Keras: outputs, BatchNorm moving statistics and gradients.

``check_training(model)`` randomises every variable, turns dropout off (rate 0, so the
comparison is deterministic; dropout itself is checked statistically in the tests),
converts the model, and runs one training step's forward and backward pass on each
side on the same batch:

* Keras: ``model(x, training=True)`` under ``tf.GradientTape`` (Keras 3 on the
  TensorFlow backend, or tf.keras), ``loss = sum(output * cotangent)`` with a fixed
  random cotangent per output, so every output element gets a gradient of its own;
* Flax: ``module.apply(variables, x, train=True, mutable=[...])`` under ``jax.grad``
  of the same loss.

Keras variables and Flax leaves are paired by their values: each variable was set to
distinct random values, and a lowering only moves a variable's entries around
(transposes, reshapes) or copies them, so a Flax leaf holding the same multiset of
values is that variable, and sorting both gives the entry-by-entry correspondence.
Gradients and updated statistics are compared through it, each tensor at its own
scale.  A Flax leaf that matches no variable is reported, never skipped silently.

A gradient that is zero in exact arithmetic (a bias just before a training-mode
BatchNorm, whose batch mean removes it; an attention key bias, which softmax ignores)
is float32 rounding noise on both sides and has no scale of its own.  So the Flax
gradient is also computed in float64: a tensor whose float64 gradient is below
:data:`ZERO` times the model's largest gradient is zero, and passes when kgen's float32
gradient is below 1e-4 of the largest too (Keras's own noise there is about 1e-6).
The report names those tensors.

``dtype="float64"`` runs both sides in float64 instead: a float64 copy of the Keras
model (every layer rebuilt with a float64 dtype policy, the same weights) against the
module applied to float64 variables and inputs under ``jax`` x64.  Use it where the
float32 gradients are not a well-posed target: ReLU-like activations have a
discontinuous derivative, and in a deep net trained on a small batch some
pre-activation can lie closer to a kink than float32 rounding of the forward pass
(about 1e-5 relative after training-mode BatchNorm over a few values per channel), so
each float32 implementation picks its own side of the kink for that element and the
gradients upstream of it differ by that element's whole contribution (31% of one
BatchNorm beta gradient in MobileNetV2 at 64x64, batch 2).  In float64 the two sides
agree to about 1e-13 there; ``docs/training.md`` lists what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kgen.verify import TOLERANCE, ParityReport, compare, random_inputs, randomize

__all__ = ["ZERO", "TrainingReport", "check_training"]

#: A float64 gradient below this fraction of the model's largest gradient is zero.
ZERO = 1e-9


@dataclass
class TrainingReport:
    outputs: ParityReport  # training-mode outputs
    gradients: ParityReport  # one entry per trainable Flax leaf
    statistics: ParityReport  # one entry per updated non-trainable leaf (BatchNorm)
    unmatched: list[str] = field(default_factory=list)  # Flax leaves no variable matched
    # leaf path -> (Keras's, kgen's) relative distance from the float64 gradient
    exact_errors: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outputs.ok and self.gradients.ok and self.statistics.ok and not self.unmatched

    def lines(self) -> list[str]:
        rows = [f"train output {line}" for line in self.outputs.lines()]
        rows += self.gradients.lines() + self.statistics.lines()
        rows += [f"unmatched Flax leaf {path}" for path in self.unmatched]
        return rows


def _zero_dropout(model) -> int:
    n = 0
    for layer in model._flatten_layers(include_self=False):
        if type(layer).__name__.endswith("Dropout") and hasattr(layer, "rate"):
            layer.rate = 0.0
            n += 1
    return n


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, (*prefix, str(k)))
    else:
        yield "/".join(prefix), np.asarray(tree)


def _key(values: np.ndarray) -> bytes:
    return np.sort(values.astype(np.float32).ravel()).tobytes()


def check_training(
    model,
    *,
    seed: int = 0,
    batch: int = 4,
    inputs=None,
    tolerance: float = TOLERANCE,
    dtype: str = "float32",
    api: str = "linen",
) -> TrainingReport:
    """One training step of ``model`` against its conversion (see the module doc);
    ``api="nnx"`` checks the Flax NNX module, called through
    :func:`kgen.runtime.nnx.functional`."""
    import jax
    import jax.numpy as jnp
    import tensorflow as tf

    from kgen.api import convert_model as convert

    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
    wide = dtype == "float64"
    randomize(model, seed)
    _zero_dropout(model)
    conversion = convert(model, api=api)
    if inputs is None:
        inputs = random_inputs(conversion.inputs, batch=batch, seed=seed + 1)
    if wide:  # the same model and batch, in float64 on both sides
        model = _float64_copy(model)
        inputs = [_widen(x) for x in inputs]
    trainable = [v for v in model.trainable_variables if "float" in str(v.dtype)]
    frozen = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]
    before = {
        id(v): np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in trainable + frozen
    }

    # Keras: one forward/backward pass in training mode.
    structure = conversion.input_structure
    names = [s.name for s in conversion.inputs]
    tensors = [tf.constant(x) for x in inputs]
    feed = (
        dict(zip(names, tensors))
        if structure == "dict"
        else (list(tensors) if structure == "list" else tensors[0])
    )
    rng = np.random.default_rng(seed + 2)
    with tf.GradientTape() as tape:
        out = model(feed, training=True)
        flat = tf.nest.flatten(out)
        cotangents = [rng.normal(size=tuple(o.shape)).astype(np.float32) for o in flat]
        cotangents = [c.astype(dtype) for c in cotangents]
        loss = tf.add_n([tf.reduce_sum(tf.cast(o, dtype) * c) for o, c in zip(flat, cotangents)])
    keras_grads = tape.gradient(loss, trainable)
    keras_out = tf.nest.map_structure(np.asarray, out)
    after = {id(v): np.asarray(v.numpy()) for v in frozen}

    # Flax: the same pass.
    module = conversion.module
    variables = conversion.variables
    mutable = [c for c in variables if c != "params"]
    if conversion.api == "nnx":
        from kgen.runtime.nnx import functional

        nnx_apply = functional(module)

        def apply(variables, *xs, train, mutable, rngs):
            out, new = nnx_apply(variables, *xs, train=train)
            return out, {c: new[c] for c in mutable}
    else:
        apply = module.apply
    if wide:
        variables = jax.tree_util.tree_map(_widen, variables)

    def loss_fn(params):
        result, updates = apply(
            {**variables, "params": params},
            *inputs,
            train=True,
            mutable=mutable,
            rngs={"dropout": jax.random.PRNGKey(0)},
        )
        leaves = jax.tree_util.tree_leaves(result)
        total = sum(jnp.sum(o.astype(dtype) * c) for o, c in zip(leaves, cotangents))
        return total, (result, updates)

    grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True))
    if wide:
        with _x64():
            flax_grads, (flax_out, updates) = jax.device_get(grad_fn(variables["params"]))
        exact = {path: np.asarray(g, np.float64) for path, g in _leaves(flax_grads)}
    else:
        flax_grads, (flax_out, updates) = jax.device_get(grad_fn(variables["params"]))
        exact = _float64_gradients(loss_fn, variables["params"])
    largest = max((float(np.max(np.abs(g), initial=0.0)) for g in exact.values()), default=0.0)

    report = TrainingReport(
        outputs=compare(keras_out, flax_out, tolerance),
        gradients=ParityReport(tolerance=tolerance),
        statistics=ParityReport(tolerance=tolerance),
    )
    by_value = {_key(before[id(v)]): v for v in trainable + frozen}
    grads_by_id = {id(v): g for v, g in zip(trainable, keras_grads)}
    flax_grad = dict(_leaves(flax_grads))
    for path, value in _leaves(variables["params"]):
        var = by_value.get(_key(value))
        if var is None or id(var) not in grads_by_id:
            report.unmatched.append(f"params/{path}")
            continue
        ref = _permuted(before[id(var)], value, np.asarray(grads_by_id[id(var)]))
        entry = compare(ref, flax_grad[path], tolerance).outputs[0]
        entry.name = f"grad {path}"
        if path in exact:  # how far each side is from the float64 gradient
            scale = max(float(np.max(np.abs(exact[path]), initial=0.0)), 1e-30)
            report.exact_errors[path] = (
                float(np.max(np.abs(ref - exact[path]))) / scale,
                float(np.max(np.abs(flax_grad[path] - exact[path]))) / scale,
            )
        if path in exact and np.max(np.abs(exact[path]), initial=0.0) <= ZERO * largest:
            noise = float(np.max(np.abs(flax_grad[path]), initial=0.0)) / largest
            entry.name += " (zero in exact arithmetic; max rel = kgen's noise / largest gradient)"
            entry.max_rel = noise
        report.gradients.outputs.append(entry)
    new = {c: dict(_leaves(updates.get(c, {}))) for c in mutable}
    for collection in mutable:
        for path, value in _leaves(variables[collection]):
            var = by_value.get(_key(value))
            if var is None or id(var) not in after:
                report.unmatched.append(f"{collection}/{path}")
                continue
            ref = _permuted(before[id(var)], value, after[id(var)])
            got = new[collection].get(path, value)  # a leaf the step did not update
            entry = compare(ref, got, tolerance).outputs[0]
            moved = float(np.max(np.abs(ref - value), initial=0.0))
            entry.name = f"{collection} {path}" + ("" if moved > 0 else " (unchanged by Keras)")
            report.statistics.outputs.append(entry)
    return report


def _x64():
    """A context in which jax computes in float64."""
    import jax

    try:  # jax < 0.8
        from jax.experimental import enable_x64

        return enable_x64()
    except ImportError:
        return jax.enable_x64(True)


def _widen(value):
    """A float array as float64; anything else unchanged."""
    value = np.asarray(value)
    return value.astype(np.float64) if value.dtype.kind == "f" else value


def _float64_copy(model):
    """The Keras model rebuilt with every layer in float64, holding the same weights.

    ``clone_model`` (Keras 3 or tf.keras, whichever built ``model``) recreates each
    layer from its config with ``dtype="float64"``; the weights are copied by position
    (the clone creates them in the same order) and checked by shape.
    """
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as lib

        if any(getattr(layer, "fused", False) for layer in model._flatten_layers()):
            # Its float64 copy would run the unfused kernel, which updates the moving
            # variance with the biased batch variance: another reference.
            raise ValueError(
                "tf.keras's fused BatchNormalization has no float64 kernel; "
                "compare this model with dtype='float32'"
            )
    else:
        import keras as lib

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, lib.layers.Layer):  # not an op node (keras.ops.add...),
            config["dtype"] = "float64"  # which computes in its inputs' dtype
        return layer.__class__.from_config(config)

    copy = lib.models.clone_model(model, clone_function=clone)
    if len(copy.weights) != len(model.weights):
        raise ValueError("the float64 copy of the model has other variables than the model")
    for source, target in zip(model.weights, copy.weights):
        value = np.asarray(source.numpy())
        if tuple(value.shape) != tuple(int(d) for d in target.shape):
            raise ValueError(f"the float64 copy holds {target.name} in another shape")
        target.assign(_widen(value) if "float" in str(target.dtype) else value)
    for layer in copy._flatten_layers(include_self=False):
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()
    _zero_dropout(copy)
    return copy


def _float64_gradients(loss_fn, params) -> dict:
    """The Flax gradients computed in float64 (the exact reference), by leaf path."""
    import jax

    with _x64():
        params64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
        grads = jax.grad(lambda p: loss_fn(p)[0])(params64)
        return {path: np.asarray(g, np.float64) for path, g in _leaves(jax.device_get(grads))}


def _permuted(keras_value: np.ndarray, flax_value: np.ndarray, keras_tensor: np.ndarray):
    """``keras_tensor`` (laid out like ``keras_value``) in ``flax_value``'s layout: the
    entry of the Keras variable that each Flax entry holds."""
    k_order = np.argsort(keras_value.ravel(), kind="stable")
    f_order = np.argsort(flax_value.ravel(), kind="stable")
    out = np.empty(flax_value.size, dtype=np.float64)
    out[f_order] = np.asarray(keras_tensor, dtype=np.float64).ravel()[k_order]
    return out.reshape(flax_value.shape)
