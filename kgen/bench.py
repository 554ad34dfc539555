"""``kgen bench``: inference speed of the generated module as a ratio against Keras,
measured in the same process on the same batch (never asserted in tests)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["BenchResult", "bench_model"]


@dataclass
class BenchResult:
    name: str
    batch: int
    keras_ms: float  # median per batch, Keras (model(x, training=False))
    flax_ms: float  # median per batch, jax.jit(module.apply), compiled beforehand
    compile_s: float  # first call of the jitted module (trace + XLA compile)
    repeats: int

    @property
    def speedup(self) -> float:
        """Keras time / Flax time: above 1 means the Flax module is faster."""
        return self.keras_ms / self.flax_ms if self.flax_ms else float("nan")

    def line(self) -> str:
        return (
            f"{self.name}: batch {self.batch}, keras {self.keras_ms:.1f} ms, "
            f"flax {self.flax_ms:.1f} ms (median of {self.repeats}), "
            f"speedup x{self.speedup:.2f}, flax compile {self.compile_s:.1f} s"
        )


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_model(
    model, name: str, *, batch: int = 8, repeats: int = 10, seed: int = 0
) -> BenchResult:
    import jax

    from kgen.api import convert
    from kgen.verify import random_inputs

    conversion = convert(model)
    inputs = random_inputs(conversion.inputs, batch=batch, seed=seed)
    feed = inputs[0] if len(inputs) == 1 else list(inputs)
    module = conversion.module
    variables = jax.device_put(conversion.variables)
    xs = [jax.device_put(x) for x in inputs]
    apply = jax.jit(lambda v, *a: module.apply(v, *a))

    start = time.perf_counter()
    jax.block_until_ready(apply(variables, *xs))
    compile_s = time.perf_counter() - start

    def run_keras():
        out = model(feed, training=False)
        np.asarray(
            out[0]
            if isinstance(out, (list, tuple))
            else next(iter(out.values()))
            if isinstance(out, dict)
            else out
        )

    run_keras()  # warm-up (graph building, kernel selection)
    keras_ms = _median_ms(run_keras, repeats)
    flax_ms = _median_ms(lambda: jax.block_until_ready(apply(variables, *xs)), repeats)
    return BenchResult(name, batch, keras_ms, flax_ms, compile_s, repeats)
