"""``kgen verify --all``: check every application, one worker process per model.

Each model is verified by the library (:func:`kgen.pipeline.verify`) in its own
freshly spawned process, so TensorFlow's and JAX's memory is returned to the system
between models and one failure (or a crash) cannot take the run down.  The worker sends
its result back as data over a pipe.  Peak memory is the largest single model's, well
under 16 GB on CPU.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CatalogRow", "markdown_table", "run_catalog", "text_table"]


@dataclass
class CatalogRow:
    name: str
    source: str
    params: int | None
    layers: int | None
    seconds: float | None  # conversion time (trace + lower + render + format)
    max_rel: float | None
    top1: float | None
    ok: bool
    error: str = ""
    wall: float = 0.0  # whole verify run, Keras build and XLA compile included


def source_of(spec: str):
    """What a worker verifies: an application with no weights to fetch (every variable
    is randomised anyway: verify --all runs offline), a model file with its own."""
    from kgen import pipeline
    from kgen.tracer.catalog import APPLICATIONS

    return pipeline.Source.of(spec, "none" if spec in APPLICATIONS else None)


def _worker(spec: str, seed: int, connection) -> None:
    """In the spawned process: verify ``spec`` and send back a dict (or an error)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # Keras's and TensorFlow's own prints: the parent shows progress
    os.dup2(null, 2)
    try:
        from kgen import pipeline

        result = pipeline.verify(source_of(spec), seed=seed)
        top1 = [o.top1 for o in result.report.outputs if getattr(o, "top1", None) is not None]
        connection.send(
            {
                "params": result.params,
                "layers": result.conversion.n_layers,
                "seconds": result.conversion.seconds,
                "max_rel": result.report.max_rel,
                "top1": min(top1) if top1 else None,
                "ok": bool(result.report.ok),
            }
        )
    except BaseException as exc:
        connection.send({"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:200]})
    finally:
        connection.close()


def _verify_one(name: str, seed: int, timeout: float) -> CatalogRow:
    from kgen.tracer.catalog import APPLICATIONS

    source = APPLICATIONS[name].source if name in APPLICATIONS else "file"
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_worker, args=(name, seed, send), daemon=True)
    process.start()
    send.close()
    data = None
    try:
        if receive.poll(timeout):
            with contextlib.suppress(EOFError):
                data = receive.recv()
    finally:
        receive.close()
        process.join(5 if data is not None else 0)
        if process.is_alive():
            process.kill()
            process.join()
    wall = time.perf_counter() - start
    if data is None:
        error = "timeout" if wall >= timeout else f"worker exited with code {process.exitcode}"
        return CatalogRow(name, source, None, None, None, None, None, False, error, wall)
    if "error" in data:
        return CatalogRow(name, source, None, None, None, None, None, False, data["error"], wall)
    return CatalogRow(
        name=name,
        source=source,
        params=data["params"],
        layers=data["layers"],
        seconds=data["seconds"],
        max_rel=data["max_rel"],
        top1=data["top1"],
        ok=data["ok"],
        wall=wall,
    )


def _cost_order(names) -> list[str]:
    """Cheap models first (each family's smallest, then by input size), so an
    interrupted run has checked as many models as possible."""
    from kgen.tracer.catalog import APPLICATIONS

    position = {n: i for i, n in enumerate(names)}
    if not all(n in APPLICATIONS for n in names):
        return list(names)
    rank: dict[str, int] = {}  # position within the family: bigger models come later
    seen: dict[str, int] = {}
    for n in APPLICATIONS:
        family = APPLICATIONS[n].family
        rank[n] = seen.get(family, 0)
        seen[family] = rank[n] + 1
    return sorted(names, key=lambda n: (APPLICATIONS[n].input_size, rank[n], position[n]))


def run_catalog(
    names, *, seed: int = 0, timeout: float = 1800.0, progress=None, on_row=None
) -> list[CatalogRow]:
    """Verify ``names`` (application names, or model files) one worker process each;
    rows come back in ``names`` order.

    ``on_row(rows_so_far)`` is called after each model (e.g. to rewrite the report).
    """
    done: dict[str, CatalogRow] = {}
    for name in _cost_order(list(names)):
        if progress is not None:
            progress(name, None)
        done[name] = _verify_one(name, seed, timeout)
        if progress is not None:
            progress(name, done[name])
        if on_row is not None:
            on_row([done[n] for n in names if n in done], [n for n in names if n not in done])
    return [done[n] for n in names]


def _fmt(row: CatalogRow) -> list[str]:
    return [
        row.name,
        row.source,
        "" if row.params is None else f"{row.params / 1e6:.1f}M",
        "" if row.layers is None else str(row.layers),
        "" if row.seconds is None else f"{row.seconds:.1f}",
        "" if row.max_rel is None else f"{row.max_rel:.2e}",
        "" if row.top1 is None else f"{row.top1:.0%}",
        "pass" if row.ok else f"FAIL{': ' + row.error if row.error else ''}",
    ]


HEADER = ["model", "keras", "params", "layers", "convert s", "max rel err", "top-1", "result"]


def summary(rows: list[CatalogRow]) -> str:
    passed = sum(r.ok for r in rows)
    worst = max((r.max_rel for r in rows if r.max_rel is not None), default=float("nan"))
    return f"{passed}/{len(rows)} passed, worst relative error {worst:.2e} (tolerance 1e-4)"


def text_table(rows: list[CatalogRow]) -> str:
    table = [HEADER] + [_fmt(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ["", summary(rows)])


def markdown_table(rows: list[CatalogRow], command: str, pending=()) -> str:
    lines = [
        "# kgen catalog parity",
        "",
        f"Produced by `{command}`. Every Keras variable (BatchNorm statistics, gammas,",
        "betas and biases included) is set to random values, Keras and the generated Flax",
        "module run on the same random batch (2 images, CPU), and the relative error is",
        "`max|flax - keras| / max|keras|` over the logits (`classifier_activation=None`)",
        "and 8 evenly spaced intermediate layer outputs, each against its own scale;",
        "where XLA's oneDNN convolution runs (x86-64), all of them a second time with the",
        "convolution kernels packed for oneDNN (`rt.pack`).",
        "Normalisation gammas are drawn from U(0.1, 0.3), variances from U(0.5, 1.5),",
        "kernels from N(0, 1/fan_in) (`kgen.verify.random_value`): with gammas near 1 the",
        "deepest residual nets (ResNetRS350/420) turn chaotic under random weights, and",
        "Keras's own output then moves 8e-2 for a 1e-7 change of its input.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(r)) + " |" for r in rows]
    lines += ["", summary(rows)]
    if pending:
        lines += ["", f"Not run yet ({len(pending)}): " + ", ".join(pending)]
    return "\n".join(lines + [""])


def write_markdown(rows, path: str | os.PathLike, command: str, pending=()) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(markdown_table(rows, command, pending), encoding="utf-8")
    os.replace(tmp, path)
