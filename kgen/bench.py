"""``kgen bench``: inference speed of the generated module as a ratio against Keras,
measured in the same process on the same batch (never asserted in tests)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

__all__ = ["BenchResult", "bench_model"]


@dataclass
class BenchResult:
    name: str
    batch: int
    keras_ms: float  # median per batch, Keras on TF as a tf.function graph
    flax_ms: float  # median per batch, jax.jit(module.apply), compiled beforehand
    compile_s: float  # first call of the jitted module (trace + XLA compile)
    repeats: int
    keras_xla_ms: float | None = None  # tf.function(jit_compile=True), when it compiles
    keras_compile_s: float = 0.0  # first call of the tf.function graph
    convert_s: float = 0.0  # kgen's own conversion time (trace, lower, render, format)
    init_s: float = 0.0  # rt.init of the generated module (jit-compiled init)
    spread: dict | None = None  # engine -> (min, max) ms per batch
    flat_ms: float | None = None  # the flat form (fold=False) of the same module
    flat_compile_s: float | None = None  # and its first jitted call

    @property
    def speedup(self) -> float:
        """Keras-TF graph time / Flax time: above 1 means the Flax module is faster."""
        return self.keras_ms / self.flax_ms if self.flax_ms else float("nan")

    def line(self) -> str:
        xla = "" if self.keras_xla_ms is None else f", keras xla {self.keras_xla_ms:.1f} ms"
        return (
            f"{self.name}: batch {self.batch}, keras graph {self.keras_ms:.1f} ms{xla}, "
            f"flax {self.flax_ms:.1f} ms (medians of {self.repeats}, engines alternated), "
            f"speedup x{self.speedup:.2f} vs keras graph, flax compile {self.compile_s:.1f} s, "
            f"kgen convert {self.convert_s:.1f} s, rt.init {self.init_s:.1f} s{self._flat()}"
        )

    def _flat(self) -> str:
        if self.flat_ms is None:
            return ""
        return f"; flat form (--no-fold) {self.flat_ms:.1f} ms, compile {self.flat_compile_s:.1f} s"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def bench_model(
    model, name: str, *, batch: int = 8, repeats: int = 10, seed: int = 0, flat: bool = True
) -> BenchResult:
    """Time the generated module against what Keras users run in production: the model
    as a ``tf.function`` graph (and with ``jit_compile=True``), on the same batch, one
    call of each engine in turn so machine drift hits them equally.  ``flat``: also the
    flat form (``fold=False``): its compile and run time beside the folded module's."""
    import jax
    import tensorflow as tf

    from kgen.api import convert_model as convert
    from kgen.verify import random_inputs

    start = time.perf_counter()
    conversion = convert(model)
    convert_s = time.perf_counter() - start
    inputs = random_inputs(conversion.inputs, batch=batch, seed=seed)
    feed = inputs[0] if len(inputs) == 1 else list(inputs)
    module = conversion.module
    variables = jax.device_put(conversion.variables)
    xs = [jax.device_put(x) for x in inputs]
    apply = jax.jit(lambda v, *a: module.apply(v, *a))

    start = time.perf_counter()
    jax.block_until_ready(apply(variables, *xs))
    compile_s = time.perf_counter() - start
    from kgen.runtime import init

    init_s = _timed(lambda: jax.block_until_ready(init(module, *xs))) / 1e3
    flat_compile_s = flat_apply = None
    if flat:
        flat_conversion = convert(model, fold=False)
        flat_module, flat_variables = flat_conversion.module, flat_conversion.variables
        flat_variables = jax.device_put(flat_variables)
        flat_jit = jax.jit(lambda v, *a: flat_module.apply(v, *a))
        flat_compile_s = _timed(lambda: jax.block_until_ready(flat_jit(flat_variables, *xs))) / 1e3

        def flat_apply():
            return jax.block_until_ready(flat_jit(flat_variables, *xs))

    def first(out):
        if isinstance(out, dict):
            return next(iter(out.values()))
        return out[0] if isinstance(out, (list, tuple)) else out

    tf_feed = tf.nest.map_structure(tf.constant, feed)
    graph = tf.function(lambda x: first(model(x, training=False)))
    engines = {
        "keras": lambda: graph(tf_feed).numpy(),
        "flax": lambda: jax.block_until_ready(apply(variables, *xs)),
    }
    if flat_apply is not None:
        engines["flax_flat"] = flat_apply
    keras_compile_s = _timed(engines["keras"]) / 1e3
    try:
        xla = tf.function(lambda x: first(model(x, training=False)), jit_compile=True)
        xla(tf_feed).numpy()
        engines["keras_xla"] = lambda: xla(tf_feed).numpy()
    except Exception:  # not every model compiles with XLA on TF; report it as absent
        pass
    for fn in engines.values():  # one more warm-up call each
        fn()
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(repeats):
        for key, fn in engines.items():
            times[key].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    return BenchResult(
        name,
        batch,
        med["keras"],
        med["flax"],
        compile_s,
        repeats,
        keras_xla_ms=med.get("keras_xla"),
        keras_compile_s=keras_compile_s,
        convert_s=convert_s,
        init_s=init_s,
        spread={k: (min(v), max(v)) for k, v in times.items()},
        flat_ms=med.get("flax_flat"),
        flat_compile_s=flat_compile_s,
    )
