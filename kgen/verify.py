"""Numerical parity: randomise every Keras variable, run Keras and the generated module
on the same batch, and report the relative error ``max|delta| / max|reference|``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["TOLERANCE", "ParityReport", "compare", "random_inputs", "randomize"]

TOLERANCE = 1e-4


def _leaf_name(variable) -> str:
    name = getattr(variable, "path", None) or variable.name
    return name.split("/")[-1].split(":")[0]


def random_value(name: str, shape: tuple, dtype, rng: np.random.Generator) -> np.ndarray:
    """A random value for one variable, by its Keras name.

    Variances and gammas are positive; nothing keeps its initial value, so a swapped or
    missing weight mapping cannot hide behind zeros and ones.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return rng.integers(1, 100, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if "variance" in name or name in ("var", "moving_var"):
        v = rng.uniform(0.5, 1.5, size=shape)
    elif name in ("gamma", "scale") or name.endswith("gamma"):
        # Small but never trivial.  With gammas near 1 every residual block of a very
        # deep net (ResNetRS350/420) amplifies its branch, and under random weights the
        # net turns chaotic: Keras's own output then moves 8e-2 for a 1e-7 change of its
        # input, so no float32 reimplementation could agree to 1e-4.
        v = rng.uniform(0.1, 0.3, size=shape)
    elif "mean" in name:
        v = rng.normal(0.0, 0.3, size=shape)
    elif name in ("beta", "bias") or name.endswith("bias") or len(shape) <= 1:
        v = rng.normal(0.0, 0.2, size=shape)
    else:
        fan_in = math.prod(shape[:-1]) if len(shape) > 1 else 1
        if "depthwise" in name and len(shape) >= 3:
            fan_in = math.prod(shape[:-2])
        v = rng.normal(0.0, 1.0 / math.sqrt(max(fan_in, 1)), size=shape)
    return v.astype(dtype)


def randomize(model, seed: int = 0) -> int:
    """Set every variable of a Keras model (trainable or not) to random values.

    Returns the number of variables changed.  Works for Keras 3 and tf.keras models.
    """
    rng = np.random.default_rng(seed)
    # Keras 3 names a DepthwiseConv kernel plain "kernel": its fan-in is kh*kw, not
    # kh*kw*C.  Scaled as a dense kernel it shrinks the signal sqrt(C)-fold per block
    # until the output of a deep model no longer depends on its input.
    depthwise = {
        id(layer.kernel)
        for layer in model._flatten_layers(include_self=False)
        if type(layer).__name__.startswith("DepthwiseConv") and hasattr(layer, "kernel")
    }
    n = 0
    for v in model.weights:
        shape = tuple(int(d) for d in v.shape)
        dtype = getattr(v.dtype, "as_numpy_dtype", v.dtype)
        name = "depthwise_kernel" if id(v) in depthwise else _leaf_name(v)
        v.assign(random_value(name, shape, dtype, rng))
        n += 1
    # Layers that cache values derived from their weights (Normalization's mean and
    # variance) refresh them in finalize_state(), as loading weights does.
    for layer in model._flatten_layers(include_self=False):
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()
    return n


def random_inputs(specs, batch: int = 2, seed: int = 1, low: float = -1.0, high: float = 1.0):
    """One random batch for each input spec (``None`` non-batch dims become 8)."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in specs:
        shape = (batch, *(8 if d is None else int(d) for d in spec.shape[1:]))
        if str(spec.dtype).startswith(("int", "uint")):
            out.append(rng.integers(0, 10, size=shape).astype(spec.dtype))
        else:
            out.append(rng.uniform(low, high, size=shape).astype(np.float32))
    return out


@dataclass
class OutputReport:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    top1: float | None  # fraction of rows with the same argmax (rank-2 outputs)


@dataclass
class ParityReport:
    outputs: list[OutputReport] = field(default_factory=list)
    tolerance: float = TOLERANCE

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def ok(self) -> bool:
        return all(math.isfinite(o.max_rel) and o.max_rel <= self.tolerance for o in self.outputs)

    def lines(self) -> list[str]:
        rows = []
        for o in self.outputs:
            top1 = "" if o.top1 is None else f"  top-1 agreement {o.top1:.1%}"
            rows.append(
                f"{o.name} {o.shape}: max abs {o.max_abs:.3e}  max rel {o.max_rel:.3e}{top1}"
            )
        return rows


def _flatten_outputs(value, prefix="output"):
    if isinstance(value, dict):  # by key: jax.jit returns dicts in sorted key order
        items = []
        for k, v in sorted(value.items(), key=lambda kv: str(kv[0])):
            items += _flatten_outputs(v, str(k))
        return items
    if isinstance(value, (list, tuple)):
        items = []
        for i, v in enumerate(value):
            items += _flatten_outputs(v, f"{prefix}[{i}]")
        return items
    return [(prefix, np.asarray(value))]


def compare(reference, result, tolerance: float = TOLERANCE) -> ParityReport:
    """Compare nested outputs (Keras's structure) element by element."""
    ref = _flatten_outputs(reference)
    got = _flatten_outputs(result)
    if len(ref) != len(got):
        raise AssertionError(f"{len(got)} outputs, Keras has {len(ref)}")
    report = ParityReport(tolerance=tolerance)
    for (name, r), (got_name, g) in zip(ref, got):
        if name != got_name:
            raise AssertionError(f"output {got_name!r} where Keras has {name!r}")
        r = r.astype(np.float64)
        g = np.asarray(g, dtype=np.float64)
        if r.shape != g.shape:
            raise AssertionError(f"{name}: shape {g.shape}, Keras has {r.shape}")
        diff = float(np.max(np.abs(r - g))) if r.size else 0.0
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        rel = diff / scale if scale > 0 else diff
        if not np.all(np.isfinite(g)) or not np.all(np.isfinite(r)):
            rel = math.inf
        top1 = None
        if r.ndim == 2 and r.shape[-1] > 1:
            top1 = float(np.mean(np.argmax(r, -1) == np.argmax(g, -1)))
        report.outputs.append(OutputReport(name, tuple(r.shape), diff, rel, top1))
    return report


def keras_predict(model, inputs, input_structure: str, names: list[str]):
    """Run a Keras model in inference mode on numpy inputs."""
    if input_structure == "dict":
        feed = dict(zip(names, inputs))
    elif input_structure == "list":
        feed = list(inputs)
    else:
        feed = inputs[0]
    out = model(feed, training=False)
    return _to_numpy(out)


def _to_numpy(value):
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numpy(v) for v in value)
    return np.asarray(value)


def with_taps(model, taps: int):
    """The same model with ``taps`` evenly spaced layer outputs added as outputs.

    With random weights the input's signal can fade through a deep model (EfficientNetB0's
    logits for two different images differ by ~2e-6 relative), so a bug in an early
    layer may not show in the logits; each tapped output is compared with its own scale.
    Outputs become a dict: ``output``/``output[i]``/the model's keys, then ``tap:<layer>``.
    """
    if taps <= 0 or not hasattr(model, "layers") or getattr(model, "outputs", None) is None:
        return model  # nothing to tap in a subclassed model: no layer graph
    tf_keras = type(model).__module__.startswith("tf_keras") or any(
        c.__module__.startswith("tf_keras") for c in type(model).__mro__
    )
    if tf_keras:
        import tf_keras as keras_module
    else:
        import keras as keras_module
    final = {id(t) for t in model.outputs}
    candidates = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer" or isinstance(layer, keras_module.Model):
            continue  # a nested model's ``output`` is its own graph's, not this one's
        try:
            out = layer.output
        except (AttributeError, RuntimeError, ValueError):
            continue  # shared layers have no single output
        if isinstance(out, (list, tuple, dict)) or id(out) in final:
            continue
        candidates.append((layer.name, out))
    if not candidates:
        return model
    n = len(candidates)
    chosen = [candidates[i] for i in sorted({int(n * (k + 0.5) / taps) for k in range(taps)})]
    outputs = {}
    structure = model.output
    if isinstance(structure, dict):
        outputs.update(structure)
    elif isinstance(structure, (list, tuple)):
        outputs.update({f"output[{i}]": t for i, t in enumerate(structure)})
    else:
        outputs["output"] = structure
    for name, out in chosen:
        outputs[f"tap:{name}"] = out
    return keras_module.Model(model.inputs, outputs, name=model.name)


def check_model(
    model,
    *,
    seed: int = 0,
    batch: int = 2,
    randomize_weights: bool = True,
    tolerance: float = TOLERANCE,
    conversion=None,
    inputs=None,
    taps: int = 0,
    input_shapes=None,
    fold: bool = True,
    api: str = "linen",
    packed: bool = False,
):
    """Randomise (optionally), convert and compare one model. Returns (conversion, report).

    ``taps`` > 0 also compares that many intermediate layer outputs (see :func:`with_taps`).
    ``input_shapes``: a subclassed model's (see :func:`kgen.convert`).  ``fold=False``
    checks the flat form; ``api="nnx"`` the Flax NNX module.  ``packed``: also run the
    linen module with its convolution kernels packed for these inputs
    (:func:`kgen.runtime.pack`) and compare that too, as outputs named ``packed:NAME``,
    where any kernel packs here.
    """
    import jax

    from kgen.api import convert_model as convert

    if randomize_weights:
        randomize(model, seed)
    if taps and conversion is None:
        model = with_taps(model, taps)
    if conversion is None:
        conversion = convert(model, input_shapes=input_shapes, fold=fold, api=api)
    if inputs is None:
        inputs = random_inputs(conversion.inputs, batch=batch, seed=seed + 1)
    names = [s.name for s in conversion.inputs]
    reference = keras_predict(model, inputs, conversion.input_structure, names)
    module = conversion.module
    if conversion.api == "nnx":
        from flax import nnx

        graphdef, state = nnx.split(module)
        apply = jax.jit(lambda s, *xs: nnx.merge(graphdef, s)(*xs))
        result = apply(state, *inputs)
    else:
        apply = jax.jit(lambda v, *xs: module.apply(v, *xs))
        result = apply(conversion.variables, *inputs)
    report = compare(reference, jax.device_get(result), tolerance)
    if packed and conversion.api != "nnx":
        from kgen.runtime import pack
        from kgen.runtime.conv import PACKED

        served = pack(module, conversion.variables, *inputs)
        if PACKED in served:
            again = compare(reference, jax.device_get(apply(served, *inputs)), tolerance)
            report.outputs += [replace(o, name=f"packed:{o.name}") for o in again.outputs]
    return conversion, report
