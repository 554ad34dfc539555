"""``kgen bench``: inference speed of the generated module beside the engines Keras users
run in production, on the same batch, engines alternated (numbers are reported, never
asserted in tests).

Every engine runs in a process of its own (spawned, so none inherits another's
framework): Keras on TensorFlow as a ``tf.function`` graph and with ``jit_compile=True``,
Keras on JAX (``model.stateless_call`` under ``jax.jit``, ``KERAS_BACKEND=jax``), ONNX
Runtime on a tf2onnx export (the ``bench`` extra), and the generated module under
``jax.jit``, folded and flat, served as kgen's README says: its convolution kernels packed
for the batch size by ``kgen.runtime.pack`` (as a server would once, and as TensorFlow's
oneDNN kernels keep their reordered filters; ``pack_s`` in ``--json``), and, unless
``keep_memory=False``, in a process that keeps the buffers XLA frees for the next call
(``kgen.runtime.keep_memory``, called before JAX starts: malloc keeps large blocks, and
calls run on the worker's main thread, as TensorFlow's allocator keeps its memory; the
other engines' processes are left as they start).  The parent process
loads the model once, converts it (kgen's own time), writes the generated modules and the
ONNX file, and then drives the workers over pipes: each worker builds its engine from the same
:class:`Source` (never a pickled model), warms it up, and times the calls each request asks for.
The parent asks each engine in turn, starting each round with the next one, so machine
drift hits them equally; the idle workers wait on their pipes and do not compete for the
CPU.

Peak memory is each worker's own high-water mark of resident memory (``VmHWM`` in
``/proc/self/status`` on Linux, ``ru_maxrss`` elsewhere): the framework, the model,
compiled code and buffers, the most its process ever held at once; ``import_rss_mb`` is
its resident memory just after the framework was imported, before the model.  The
parent (which loads, converts and exports) is not counted.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

__all__ = [
    "BASELINE",
    "ENGINES",
    "ModelBench",
    "bench_source",
    "family_representatives",
    "machine_description",
    "markdown_report",
]

#: engine -> what it is, in the order the table shows them.
ENGINES = {
    "keras_tf": "Keras on TF, tf.function graph",
    "keras_tf_xla": "Keras on TF, tf.function(jit_compile=True)",
    "keras_jax": "Keras on JAX, stateless_call under jax.jit",
    "onnxruntime": "ONNX Runtime (CPU) on a tf2onnx export",
    "kgen": "generated module under jax.jit, rt.pack, rt.keep_memory",
    "kgen_flat": "generated module, flat (--no-fold), under jax.jit, rt.pack, rt.keep_memory",
}
BASELINE = "keras_tf"
ONNX_INSTALL = "pip install 'kgen-flax[bench]'"
MEMORY_NOTE = (
    "peak_rss_mb: the high-water mark of resident memory of the engine's own process "
    "(VmHWM in /proc/self/status): framework, model, compiled code and buffers; "
    "import_rss_mb: its resident memory just after importing the framework (VmRSS)"
)


@dataclass
class BatchTiming:
    batch: int
    warmup_s: float  # first call at this batch size: tracing and compiling included
    times_ms: list[float]  # steady state: calls right after a call of the same engine
    idle_ms: list[float] = field(default_factory=list)  # each round's first call, after the pause
    pack_s: float | None = None  # kgen engines: rt.pack of the variables for this batch size

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def idle_median_ms(self) -> float | None:
        return statistics.median(self.idle_ms) if self.idle_ms else None

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median_ms * 1e3


@dataclass
class EngineResult:
    engine: str
    reason: str = ""  # why the engine is absent ("" when it ran)
    import_s: float | None = None  # importing its framework in its own process
    load_s: float | None = None  # building or loading the model there
    init_s: float | None = None  # kgen engines: rt.init of the module (jit-compiled)
    keep_memory: bool | None = None  # kgen engines: rt.keep_memory() took effect
    import_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    batches: dict[int, BatchTiming] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return not self.reason


@dataclass
class ModelBench:
    name: str
    source: object  # kgen.pipeline.Source
    batches: list[int]
    repeats: int
    calls: int = 1  # calls per engine and round, back to back after the pause
    keep_memory: bool = True  # the kgen engines' processes call rt.keep_memory()
    convert_s: float | None = None  # kgen's conversion (trace, lower, render, format)
    convert_flat_s: float | None = None
    onnx_export_s: float | None = None
    engines: dict[str, EngineResult] = field(default_factory=dict)
    error: str = ""  # the model itself could not be loaded or converted

    def ratio(self, engine: str, batch: int, idle: bool = False) -> float | None:
        """Throughput of ``engine`` divided by Keras-TF graph's, in steady state (or, with
        ``idle``, of the first call after each pause): above 1 is faster."""
        base, this = self.engines.get(BASELINE), self.engines.get(engine)
        if base is None or this is None or batch not in base.batches or batch not in this.batches:
            return None
        b, t = base.batches[batch], this.batches[batch]
        b, t = (b.idle_median_ms, t.idle_median_ms) if idle else (b.median_ms, t.median_ms)
        return None if b is None or t is None else b / t

    def to_dict(self) -> dict:
        engines = {}
        for key, e in self.engines.items():
            per_batch = {}
            for b, t in e.batches.items():
                per_batch[str(b)] = {
                    "warmup_s": t.warmup_s,
                    "pack_s": t.pack_s,
                    "median_ms": t.median_ms,
                    "min_ms": min(t.times_ms),
                    "max_ms": max(t.times_ms),
                    "images_per_s": t.images_per_s,
                    "ratio_to_keras_tf": self.ratio(key, b),
                    "times_ms": t.times_ms,
                    "idle_median_ms": t.idle_median_ms,
                    "idle_ratio_to_keras_tf": self.ratio(key, b, idle=True),
                    "idle_ms": t.idle_ms,
                }
            engines[key] = {
                "description": ENGINES[key],
                "available": e.available,
                "reason": e.reason or None,
                "import_s": e.import_s,
                "load_s": e.load_s,
                "init_s": e.init_s,
                "import_rss_mb": e.import_rss_mb,
                "keep_memory": e.keep_memory,
                "peak_rss_mb": e.peak_rss_mb,
                "batches": per_batch,
            }
        return {
            "model": self.name,
            "source": self.source.spec,
            "options": dict(self.source.options),
            "batches": self.batches,
            "repeats": self.repeats,
            "calls": self.calls,
            "keep_memory": self.keep_memory,
            "baseline": BASELINE,
            "convert_s": self.convert_s,
            "convert_flat_s": self.convert_flat_s,
            "init_s": self.engines["kgen"].init_s if "kgen" in self.engines else None,
            "onnx_export_s": self.onnx_export_s,
            "memory": MEMORY_NOTE,
            "error": self.error or None,
            "engines": engines,
        }

    def lines(self) -> list[str]:
        """The plain-text report: one line per engine and batch."""
        if self.error:
            return [f"{self.name}: {self.error}"]
        head = f"{self.name}: kgen convert {_s(self.convert_s)}"
        if self.convert_flat_s is not None:
            head += f" (flat {_s(self.convert_flat_s)})"
        kgen = self.engines.get("kgen")
        if kgen is not None and kgen.init_s is not None:
            head += f", rt.init {_s(kgen.init_s)}"
        if self.onnx_export_s is not None:
            head += f", ONNX export {_s(self.onnx_export_s)}"
        out = [
            head + f"; {self.repeats} rounds of {self.calls} calls, engines alternated, "
            "one process each; steady state, then the first call after the pause",
        ]
        for b in self.batches:
            out.append(f"  batch {b}:")
            for key, e in self.engines.items():
                if not e.available:
                    out.append(f"    {key:13} absent: {e.reason}")
                    continue
                t = e.batches[b]
                ratio, idle = self.ratio(key, b), self.ratio(key, b, idle=True)
                shown = "" if ratio is None else f" x{ratio:.2f}"
                after = "" if idle is None else f" x{idle:.2f}"
                out.append(
                    f"    {key:13} {t.median_ms:9.2f} ms [{min(t.times_ms):.2f}-"
                    f"{max(t.times_ms):.2f}] {t.images_per_s:8.1f} img/s{shown:7} "
                    f"after idle {t.idle_median_ms:.2f} ms{after}, "
                    f"warm-up {t.warmup_s:.2f} s, peak RSS {_mb(e.peak_rss_mb)}"
                )
        return out


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 200 else text[:197] + "..."


def _rss_mb(key: str = "VmHWM") -> float:
    """This process's peak resident memory in MB (``VmRSS``: the current one).

    On Linux from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` is no use in a
    spawned worker, as Linux carries the parent's high-water mark over the fork and
    exec that start it.  Elsewhere ``ru_maxrss`` (the peak, whatever ``key``)."""
    import resource

    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii") as status,
    ):
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


# --- the worker side: one engine in its own process ----------------------------------


def _first_output(out):
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0] if isinstance(out, (list, tuple)) else out


def _keras_tf(job, xla: bool):
    import tensorflow as tf

    from kgen import pipeline

    model = pipeline.load(job["source"], logits=True).model
    fn = tf.function(lambda x: model(x, training=False), jit_compile=xla)

    def call(xs):
        feed = [tf.constant(x) for x in xs]
        out = fn(feed[0] if len(feed) == 1 else feed)
        return tf.nest.map_structure(lambda t: t.numpy(), out)

    return call


def _keras_jax(job):
    import jax
    import keras

    from kgen import pipeline

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras came up on {keras.backend.backend()}, not jax")
    model = pipeline.load(job["source"], logits=True).model
    if not hasattr(model, "stateless_call"):
        raise RuntimeError("a tf.keras (Keras 2) model: Keras on JAX runs Keras 3 models only")
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    fn = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])

    def call(xs):
        return jax.block_until_ready(fn(trainable, frozen, xs[0] if len(xs) == 1 else list(xs)))

    return call


def _onnxruntime(job):
    import onnxruntime as ort

    session = ort.InferenceSession(job["onnx"], providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def call(xs):
        return session.run(None, dict(zip(names, xs)))

    return call


def _kgen(job):
    import importlib.util

    import jax

    from kgen.runtime import init, load_variables, pack

    spec = importlib.util.spec_from_file_location(f"kgen_bench_{os.getpid()}", job["module"])
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    module = getattr(generated, job["class_name"])()
    variables = jax.device_put(load_variables(job["weights"]))
    fn = jax.jit(lambda v, *xs: module.apply(v, *xs))
    state = {"init": None, "pack": None}
    packed = {"shapes": None, "variables": variables}

    def call(xs):
        if state["init"] is None:  # the first call: time rt.init before compiling apply
            jax.block_until_ready(jax.numpy.zeros(1) + 1)  # jax's own first-use costs
            start = time.perf_counter()
            jax.block_until_ready(init(module, *xs))
            state["init"] = time.perf_counter() - start
        shapes = [x.shape for x in xs]
        if shapes != packed["shapes"]:  # a new batch size: kernels packed for it, as served
            start = time.perf_counter()
            packed["variables"] = jax.block_until_ready(pack(module, variables, *xs))
            packed["shapes"] = shapes
            state["pack"] = time.perf_counter() - start
        return jax.block_until_ready(fn(packed["variables"], *xs))

    return call, state


_FRAMEWORK = {
    "keras_tf": "tensorflow",
    "keras_tf_xla": "tensorflow",
    "keras_jax": "keras",
    "onnxruntime": "onnxruntime",
    "kgen": "jax",
    "kgen_flat": "jax",
}


def _worker(engine: str, job: dict, connection) -> None:
    """In the spawned process: build ``engine``, then answer the parent's requests:
    ``("batch", inputs)`` warms up at a new batch size, ``("run", n)`` times ``n`` calls
    back to back, ``("stop",)`` reports the peak memory and exits."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # Keras's and TensorFlow's own prints
    os.dup2(null, 2)
    try:
        import importlib
        import warnings

        warnings.filterwarnings("ignore")
        start = time.perf_counter()
        importlib.import_module(_FRAMEWORK[engine])
        imported = time.perf_counter()
        import_rss = _rss_mb("VmRSS")
        kept = None
        if job.get("keep_memory"):  # kgen's serving recipe, before JAX starts its backend
            from kgen.runtime import keep_memory

            kept = keep_memory()
        state = {}
        if engine in ("keras_tf", "keras_tf_xla"):
            call = _keras_tf(job, xla=engine == "keras_tf_xla")
        elif engine == "keras_jax":
            call = _keras_jax(job)
        elif engine == "onnxruntime":
            call = _onnxruntime(job)
        else:
            call, state = _kgen(job)
        ready = {
            "import_s": imported - start,
            "load_s": time.perf_counter() - imported,
            "import_rss_mb": import_rss,
            "keep_memory": kept,
        }
        connection.send(("ready", ready))
        inputs = None
        while True:
            request = connection.recv()
            if request[0] == "batch":
                inputs = request[1]
                before = state.get("init")  # kgen: rt.init is timed once, at the first batch
                state["pack"] = None  # kgen: rt.pack, at each batch size
                begin = time.perf_counter()
                call(inputs)
                init = state.get("init") if before is None else None
                packing = state.get("pack")
                warmup = time.perf_counter() - begin - (init or 0.0) - (packing or 0.0)
                call(inputs)  # one more, untimed: caches and allocators settle
                connection.send(("ok", {"warmup_s": warmup, "init_s": init, "pack_s": packing}))
            elif request[0] == "run":
                times = []
                for _ in range(request[1]):
                    begin = time.perf_counter()
                    call(inputs)
                    times.append((time.perf_counter() - begin) * 1e3)
                connection.send(("ok", times))
            else:
                connection.send(("ok", {"peak_rss_mb": _rss_mb()}))
                return
    except BaseException as exc:
        with contextlib.suppress(Exception):
            connection.send(("error", _one_line(exc)))
    finally:
        connection.close()


# --- the parent side ------------------------------------------------------------------


class _EngineGone(Exception):
    pass


class _Engine:
    """A worker process for one engine and the pipe that drives it."""

    def __init__(self, engine: str, job: dict, timeout: float):
        import multiprocessing

        self.engine = engine
        self.timeout = timeout
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(engine, job, child), daemon=True)
        env = {"KERAS_BACKEND": "jax" if engine == "keras_jax" else "tensorflow"}
        with _environment(env):
            self.process.start()
        child.close()

    def ask(self, *request):
        if request:
            self.connection.send(request)
        if not self.connection.poll(self.timeout):
            raise _EngineGone(f"no answer in {self.timeout:.0f} s")
        try:
            kind, value = self.connection.recv()
        except EOFError:
            self.process.join(5)
            raise _EngineGone(f"its process exited with code {self.process.exitcode}") from None
        if kind == "error":
            raise _EngineGone(value)
        return value

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


@contextlib.contextmanager
def _environment(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _inputs(loaded, conversion, batch: int, seed: int):
    from kgen.pipeline import _app_inputs
    from kgen.verify import random_inputs

    found = _app_inputs(loaded, batch, seed)
    if found is None:
        found = random_inputs(conversion.inputs, batch=batch, seed=seed)
    return [x.copy() for x in found]


def _onnx_export(model, inputs, path: str) -> str:
    """Export ``model`` with tf2onnx to ``path``; "" on success, else why not.
    ``inputs``: an example array (or ``(shape, dtype)`` with the batch) per input."""
    import importlib.util

    missing = [m for m in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed ({ONNX_INSTALL})"
    try:
        import tensorflow as tf
        import tf2onnx

        shapes = [(x.shape, x.dtype) if hasattr(x, "shape") else x for x in inputs]
        specs = [
            tf.TensorSpec((None, *shape[1:]), dtype, name=f"input_{i}")
            for i, (shape, dtype) in enumerate(shapes)
        ]
        if len(specs) == 1:
            fn = tf.function(lambda x: model(x, training=False))
        else:
            fn = tf.function(lambda *xs: model(list(xs), training=False))
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            tf2onnx.convert.from_function(fn, input_signature=specs, output_path=path)
    except Exception as exc:
        return f"tf2onnx export failed: {_one_line(exc)}"
    return ""


def _export_worker(source, shapes, path: str, connection) -> None:
    """In a spawned process: build ``source`` and export it to ONNX; sends back
    ``(reason, seconds)`` (reason "" on success; seconds: the export alone)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        import warnings

        warnings.filterwarnings("ignore")
        from kgen import pipeline

        model = pipeline.load(source, logits=True).model
        start = time.perf_counter()
        reason = _onnx_export(model, shapes, path)
        connection.send((reason, time.perf_counter() - start))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            connection.send((f"tf2onnx export failed: {_one_line(exc)}", None))
    finally:
        connection.close()


def _onnx_export_process(source, inputs, path: str, timeout: float) -> tuple[str, float | None]:
    """:func:`_onnx_export` in a process of its own: tf2onnx can need many times the
    model's size in memory (VGG16's export grew past 20 GB here), and a process the
    system kills for it takes only the ONNX column with it."""
    import importlib.util
    import multiprocessing

    missing = [m for m in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed ({ONNX_INSTALL})", None
    shapes = [(x.shape, str(x.dtype)) for x in inputs]
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_export_worker, args=(source, shapes, path, send), daemon=True)
    with _environment({"KERAS_BACKEND": "tensorflow"}):
        process.start()
    send.close()
    answer, timed_out = None, False
    try:
        if receive.poll(timeout):
            with contextlib.suppress(EOFError):
                answer = receive.recv()
        else:
            timed_out = True
    finally:
        receive.close()
        process.join(0 if timed_out else 5)
        if process.is_alive():
            process.kill()
            process.join()
    if answer is None:
        if timed_out:
            why = f"gave no answer in {timeout:.0f} s"
        elif process.exitcode == -9:
            why = "was killed (SIGKILL: out of memory?)"
        else:
            why = f"exited with code {process.exitcode}"
        return f"tf2onnx export process {why}", None
    return answer


#: Seconds between one engine's timed calls and the next engine's.  An engine's worker
#: threads spin for a while after a call before they sleep (ONNX Runtime's intra-op
#: threads, TensorFlow's and XLA's pools), and on a 2-core machine that took CPU from the
#: call after it: ResNet50's generated module at batch 1 measured 50.7 ms right after the
#: other engines' calls and 40.8 ms after a 0.5 s pause.
SETTLE_S = 0.5
#: Timed calls per engine and round, back to back after the pause: the first is the
#: call after idle time, the others the steady state the throughput comes from.
CALLS = 4


def bench_source(
    source,
    *,
    name: str | None = None,
    batches=(8,),
    repeats: int = 10,
    engines=None,
    seed: int = 0,
    timeout: float = 1800.0,
    progress=None,
    settle_s: float = SETTLE_S,
    calls: int = CALLS,
    keep_memory: bool = True,
) -> ModelBench:
    """Benchmark ``source`` (a :class:`kgen.pipeline.Source`) on every engine in
    ``engines`` (default: all of :data:`ENGINES`), at each batch size in ``batches``:
    ``repeats`` rounds, engines alternated, and in each round every engine makes ``calls``
    timed calls back to back, starting ``settle_s`` seconds after the last engine's
    (see :data:`SETTLE_S`).  The first call of each round is the call after idle time
    (``idle_ms``), the others the steady state (``times_ms``, which with ``calls=1`` holds
    the calls after idle time).  An engine that cannot run (a package missing, an export
    that fails, a worker that crashes) is reported absent with its reason; the others go
    on.  With ``keep_memory`` (the default) the kgen engines' processes call
    :func:`kgen.runtime.keep_memory` first, as kgen's serving recipe does."""
    from kgen import pipeline

    wanted = list(ENGINES) if engines is None else [e for e in ENGINES if e in engines]
    batches = list(dict.fromkeys(int(b) for b in batches))
    result = ModelBench(name or source.spec, source, batches, repeats, calls, keep_memory)
    say = progress or (lambda text: None)
    with tempfile.TemporaryDirectory(prefix="kgen-bench-") as tmp:
        say(f"{result.name}: loading and converting")
        try:
            loaded = pipeline.load(source, logits=True)
            start = time.perf_counter()
            conversion = pipeline.convert(source, loaded=loaded)
            result.convert_s = time.perf_counter() - start
            py, st = conversion.write(os.path.join(tmp, "folded"))
            jobs = {"kgen": {"module": str(py), "weights": str(st)}}
            if "kgen_flat" in wanted:
                start = time.perf_counter()
                flat = pipeline.convert(source, loaded=loaded, fold=False)
                result.convert_flat_s = time.perf_counter() - start
                py, st = flat.write(os.path.join(tmp, "flat"))
                jobs["kgen_flat"] = {"module": str(py), "weights": str(st)}
            inputs = {b: _inputs(loaded, conversion, b, seed) for b in batches}
        except Exception as exc:
            result.error = _one_line(exc)
            return result
        for key in ("kgen", "kgen_flat"):
            if key in jobs:
                jobs[key]["class_name"] = conversion.class_name
                jobs[key]["keep_memory"] = keep_memory
        for key in ("keras_tf", "keras_tf_xla", "keras_jax"):
            jobs[key] = {"source": source}
        absent = {}
        if "onnxruntime" in wanted:
            say(f"{result.name}: exporting to ONNX")
            path = os.path.join(tmp, "model.onnx")
            reason, seconds = _onnx_export_process(source, inputs[batches[0]], path, timeout)
            absent["onnxruntime"] = reason
            if not reason:
                result.onnx_export_s = seconds
            jobs["onnxruntime"] = {"onnx": path}
        del loaded
        _run_engines(result, wanted, jobs, absent, inputs, timeout, say, settle_s)
    return result


def _run_engines(result, wanted, jobs, absent, inputs, timeout, say, settle_s) -> None:
    running: dict[str, _Engine] = {}

    def drop(key, exc):
        result.engines[key].reason = str(exc) or type(exc).__name__
        running.pop(key).close()

    try:
        for key in wanted:  # started one at a time: compile times are not contended
            result.engines[key] = EngineResult(key, reason=absent.get(key, ""))
            if result.engines[key].reason:
                continue
            say(f"{result.name}: starting {key}")
            running[key] = _Engine(key, jobs[key], timeout)
            try:
                ready = running[key].ask()
            except _EngineGone as exc:
                drop(key, exc)
                continue
            for attr, value in ready.items():
                setattr(result.engines[key], attr, value)
        for batch in result.batches:
            say(f"{result.name}: batch {batch}, warming up")
            for key in list(running):
                try:
                    warm = running[key].ask("batch", inputs[batch])
                except _EngineGone as exc:
                    drop(key, exc)
                    continue
                if warm["init_s"] is not None:
                    result.engines[key].init_s = warm["init_s"]
                timing = BatchTiming(batch, warm["warmup_s"], [], pack_s=warm.get("pack_s"))
                result.engines[key].batches[batch] = timing
            say(f"{result.name}: batch {batch}, {result.repeats} rounds")
            for round_ in range(result.repeats):
                order = list(running)
                shift = round_ % len(order) if order else 0
                for key in order[shift:] + order[:shift]:
                    if key not in running:
                        continue
                    time.sleep(settle_s)  # the last engine's spinning threads go idle
                    try:
                        ms = running[key].ask("run", result.calls)
                    except _EngineGone as exc:
                        drop(key, exc)
                        continue
                    timing = result.engines[key].batches[batch]
                    timing.idle_ms.append(ms[0])
                    timing.times_ms += ms[1:] or ms[:1]
        for key in list(running):
            with contextlib.suppress(_EngineGone):
                result.engines[key].peak_rss_mb = running[key].ask("stop")["peak_rss_mb"]
    finally:
        for engine in running.values():
            engine.close()
    for e in result.engines.values():  # an engine that died part-way has no full row
        if e.available and set(e.batches) != set(result.batches):
            e.reason = e.reason or "did not finish"
        if not e.available:
            e.batches = {}


def family_representatives() -> list[str]:
    """The first (smallest) application of each family in the catalog."""
    from kgen.tracer.catalog import APPLICATIONS

    seen = {}
    for name, app in APPLICATIONS.items():
        seen.setdefault(app.family, name)
    return list(seen.values())


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None or not math.isfinite(value) else format(value, fmt)


#: Environment variables that change what a run measures, named in its report when set.
TIMING_ENVIRONMENT = (
    "GLIBC_TUNABLES",
    "XLA_FLAGS",
    "TF_ENABLE_ONEDNN_OPTS",
    "OMP_NUM_THREADS",
    "KGEN_CONV",
    "KGEN_DEPTHWISE",
    "KGEN_POOL",
    "KGEN_SOFTMAX",
)


def machine_description() -> str:
    """What a run ran on, in one line: the CPU (``/proc/cpuinfo``'s model name, else
    ``platform.processor()``), its logical cores, the versions of the frameworks timed,
    and those of :data:`TIMING_ENVIRONMENT` that are set.  Ratios measured on one CPU do
    not carry over to another (docs/performance.md, Runs 5 and 6)."""
    import importlib.metadata
    import platform

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if "model name" in line), "")
    parts = [f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"]
    versions = []
    for package in ("jax", "jaxlib", "tensorflow", "keras", "onnxruntime"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    parts.append(", ".join(versions))
    set_vars = [f"{k}={os.environ[k]}" for k in TIMING_ENVIRONMENT if os.environ.get(k)]
    parts.append(
        "environment: "
        + (", ".join(set_vars) if set_vars else "none of " + ", ".join(TIMING_ENVIRONMENT))
    )
    return "; ".join(parts)


def _batch_rows(results: list[ModelBench], keys: list[str], cell) -> list[str]:
    """One Markdown row per model and batch size, ``cell(result, engine, batch, timing)``
    per engine that ran (empty for an absent one)."""
    rows = []
    for r in results:
        if r.error:
            continue
        for b in r.batches:
            cells = []
            for k in keys:
                e = r.engines.get(k)
                cells.append("" if e is None or not e.available else cell(r, k, b, e.batches[b]))
            rows.append(f"| {r.name} | {b} | " + " | ".join(cells) + " |")
    return rows


def _with_ratio(text: str, ratio: float | None) -> str:
    return text if ratio is None else f"{text} ({ratio:.2f})"


def _serving_note(results: list[ModelBench]) -> str:
    kept = all(r.keep_memory for r in results)
    return (
        "The kgen engines run as kgen's README serves a module: kernels packed for the batch "
        "size (`rt.pack`), "
        + (
            "in a process that keeps what XLA frees for the next call (`rt.keep_memory()`, "
            "called before JAX starts: malloc keeps large blocks, and calls run on the main "
            "thread); the other engines' processes are left as they start."
            if kept
            else "with the process's malloc left as it starts (`--no-keep-memory`)."
        )
    )


def markdown_report(results: list[ModelBench], command: str, pending=()) -> str:
    """The ``--all`` tables: steady-state throughput and ratio per engine and batch,
    start-up costs and memory, the spread of the steady-state calls, and the calls after
    idle time."""
    keys = list(ENGINES)
    header = ["| model | batch | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    lines = [
        f"Produced by `{command}`. Images/s from the median time per batch in steady",
        "state (calls right after a call of the same engine); in brackets the ratio to",
        f"`{BASELINE}` (Keras on TF, `tf.function` graph): above 1 is faster. Empty: the",
        "engine is absent (reasons below the tables). The first call after each pause is",
        "in the last table.",
        "",
        _serving_note(results),
        "",
        f"Machine: {machine_description()}.",
        "",
        *header,
        *_batch_rows(
            results,
            keys,
            lambda r, k, b, t: _with_ratio(f"{t.images_per_s:.1f}", r.ratio(k, b)),
        ),
        "",
        "Start-up and memory: kgen's conversion (folded; flat), `rt.init` of the generated",
        "module, the ONNX export, and per engine the first call at the first batch size",
        "(tracing and compiling; warm-up s) and the peak RSS of its own process (MB).",
        "",
        "| model | convert s | init s | ONNX export s | "
        + " | ".join(f"{k} warm-up s / MB" for k in keys)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(keys),
    ]
    reasons = []
    for r in results:
        if r.error:
            reasons.append(f"- {r.name}: {r.error}")
            continue
        kgen = r.engines.get("kgen")
        flat = "" if r.convert_flat_s is None else f"; {r.convert_flat_s:.1f}"
        cells = [
            _cell(r.convert_s, ".1f") + flat,
            _cell(kgen.init_s if kgen else None, ".1f"),
            _cell(r.onnx_export_s, ".1f"),
        ]
        for k in keys:
            e = r.engines.get(k)
            if e is None or not e.available:
                cells.append("")
                if e is not None:
                    reasons.append(f"- {r.name}, {k}: {e.reason}")
                continue
            first = e.batches[r.batches[0]]
            cells.append(f"{first.warmup_s:.1f} / {_cell(e.peak_rss_mb, '.0f')}")
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Spread: milliseconds per batch, median [min-max] of the steady-state calls.",
        "",
        *header,
        *_batch_rows(
            results,
            keys,
            lambda r, k, b, t: f"{t.median_ms:.1f} [{min(t.times_ms):.1f}-{max(t.times_ms):.1f}]",
        ),
        "",
        "After idle time: milliseconds per batch of each round's first call, which starts",
        "after the pause that lets the last engine's threads go idle (median; in brackets",
        f"the ratio to `{BASELINE}`'s).",
        "",
        *header,
        *_batch_rows(
            results,
            keys,
            lambda r, k, b, t: _with_ratio(f"{t.idle_median_ms:.1f}", r.ratio(k, b, idle=True)),
        ),
    ]
    if reasons:
        lines += ["", "Absent engines:", "", *reasons]
    if pending:
        lines += ["", f"Not run yet ({len(pending)}): " + ", ".join(pending)]
    return "\n".join(lines) + "\n"
