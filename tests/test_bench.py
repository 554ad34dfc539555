"""``kgen bench``: every engine runs or says why not, and the report has every number.

Structure only: no test compares or bounds a wall-clock time.
"""

import importlib.util
import json
import math
import os

import keras
import pytest
from helpers import run_cli

from kgen import bench
from kgen.pipeline import Source
from kgen.runtime import memory


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A small model file: a depthwise and a plain convolution, pooled, a dense head."""
    x = keras.Input((8, 8, 3))
    h = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
    path = tmp_path_factory.mktemp("bench") / "tiny.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_bench(tiny_file):
    """Every engine on the tiny model, two batch sizes, one round of two timed calls: one
    after the pause, one in steady state."""
    return bench.bench_source(
        Source.of(tiny_file, "none"), batches=(2, 1), repeats=1, settle_s=0.0, calls=2
    )


def test_every_engine_runs_or_says_why(tiny_bench):
    assert list(tiny_bench.engines) == list(bench.ENGINES)
    for key, engine in tiny_bench.engines.items():
        if not engine.available:
            assert engine.reason and "\n" not in engine.reason, key
            assert engine.batches == {}
            continue
        assert set(engine.batches) == {2, 1}, key
        assert engine.peak_rss_mb > 0 and engine.import_rss_mb > 0
        for batch, timing in engine.batches.items():
            assert len(timing.times_ms) == 1 and len(timing.idle_ms) == 1
            assert timing.warmup_s >= 0
            assert math.isfinite(timing.images_per_s) and timing.images_per_s > 0
            assert math.isfinite(tiny_bench.ratio(key, batch)), (key, batch)
            assert math.isfinite(tiny_bench.ratio(key, batch, idle=True)), (key, batch)
    # these run wherever kgen's tests run; Keras on JAX in its own process included
    for key in ("keras_tf", "keras_jax", "kgen", "kgen_flat"):
        assert tiny_bench.engines[key].available, tiny_bench.engines[key].reason
    assert tiny_bench.ratio("keras_tf", 2) == 1.0
    assert tiny_bench.convert_s > 0 and tiny_bench.convert_flat_s > 0
    assert tiny_bench.engines["kgen"].init_s > 0
    for key in ("kgen", "kgen_flat"):  # rt.pack ran at each batch size (0 or more kernels)
        assert all(t.pack_s > 0 for t in tiny_bench.engines[key].batches.values())
    # kgen's serving recipe: rt.keep_memory() in the kgen engines' processes only
    glibc = memory._glibc() is not None
    assert tiny_bench.keep_memory is True
    for key, engine in tiny_bench.engines.items():
        if engine.available:
            assert engine.keep_memory == (glibc if key.startswith("kgen") else None), key
    onnx = tiny_bench.engines["onnxruntime"]
    have_onnx = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime"))
    if not have_onnx:
        assert "not installed" in onnx.reason and "kgen-flax[bench]" in onnx.reason
    if onnx.available:
        assert tiny_bench.onnx_export_s > 0


def test_json_has_every_number(tiny_bench):
    data = json.loads(json.dumps(tiny_bench.to_dict(), allow_nan=False))
    assert data["baseline"] == "keras_tf" and data["batches"] == [2, 1]
    assert data["calls"] == 2
    for key in (
        "convert_s",
        "convert_flat_s",
        "init_s",
        "onnx_export_s",
        "memory",
        "repeats",
        "keep_memory",
    ):
        assert key in data
    for key, engine in data["engines"].items():
        assert {"description", "available", "reason", "peak_rss_mb", "import_s", "load_s"} <= set(
            engine
        )
        assert engine["available"] == (engine["reason"] is None), key
        for timing in engine["batches"].values():
            assert set(timing) == {
                "warmup_s",
                "pack_s",
                "median_ms",
                "min_ms",
                "max_ms",
                "images_per_s",
                "ratio_to_keras_tf",
                "times_ms",
                "idle_median_ms",
                "idle_ratio_to_keras_tf",
                "idle_ms",
            }
            assert timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]


def test_text_and_markdown_reports(tiny_bench):
    text = "\n".join(tiny_bench.lines())
    assert "kgen convert" in text and "rt.init" in text and "batch 1:" in text
    for key, engine in tiny_bench.engines.items():
        assert key in text
        if not engine.available:
            assert f"absent: {engine.reason}" in text
    table = bench.markdown_report([tiny_bench], "kgen bench --all")
    assert "Produced by `kgen bench --all`" in table
    assert f"{os.cpu_count()} logical CPUs" in table  # the machine, since ratios depend on it
    rows = [line for line in table.splitlines() if line.startswith(f"| {tiny_bench.name} |")]
    # throughput per batch, start-up, spread per batch, after idle time per batch
    assert len(rows) == 2 + 1 + 2 + 2
    assert all(row.count("|") == len(bench.ENGINES) + 3 for row in rows[:2] + rows[3:])
    assert "after idle" in text and "After idle time" in table
    assert "`rt.keep_memory()`, called before JAX starts" in table
    tiny_bench.keep_memory = False  # as --no-keep-memory reports it
    try:
        assert "malloc left as it starts (`--no-keep-memory`)" in bench.markdown_report(
            [tiny_bench], "kgen bench --all --no-keep-memory"
        )
    finally:
        tiny_bench.keep_memory = True


def test_machine_description_names_what_changes_timings(monkeypatch):
    for name in bench.TIMING_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    plain = bench.machine_description()
    assert "jax " in plain and "environment: none of GLIBC_TUNABLES" in plain
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")
    assert "environment: GLIBC_TUNABLES=glibc.malloc.mmap_max=0" in bench.machine_description()


def test_onnx_absent_without_its_packages(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a)
    )
    # tf2onnx hidden; onnxruntime may be installed or not (the reason names what is not)
    reason = bench._onnx_export(None, [], "unused.onnx")
    assert reason.startswith("tf2onnx") and "not installed" in reason, reason
    assert "kgen-flax[bench]" in reason
    reason, seconds = bench._onnx_export_process(None, [], "unused.onnx", timeout=1)
    assert reason.startswith("tf2onnx") and "not installed" in reason and seconds is None


def test_cli_json_one_engine_and_batch_lists(tiny_file):
    result = run_cli(
        "bench", tiny_file, "--batch", "2,1", "--batch", "2", "--repeats", "1", "--json",
        "--engines", "kgen", "--settle", "0", "--calls", "1", "--no-keep-memory",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["batches"] == [2, 1] and list(data["engines"]) == ["kgen"]
    assert data["keep_memory"] is False and data["engines"]["kgen"]["keep_memory"] is None
    timing = data["engines"]["kgen"]["batches"]["1"]
    assert timing["ratio_to_keras_tf"] is None  # no baseline asked for
    assert timing["times_ms"] == timing["idle_ms"] and len(timing["idle_ms"]) == 1  # --calls 1
    assert timing["images_per_s"] > 0


@pytest.mark.parametrize(
    "args, words",
    [
        (["MobileNetV2", "--batch", "0"], "batch size is at least 1"),
        (["MobileNetV2", "--batch", "8,x"], "expected batch sizes"),
        (["MobileNetV2", "--engines", "torch"], "engines are keras_tf"),
        ([], "give a SOURCE or --all"),
        (["MobileNetV2", "--all"], "either a SOURCE or --all"),
        (["--all", "--models", "MobileNetV9"], "MobileNetV9"),
        (["MobileNetV2", "--markdown", "x.md"], "go with --all"),
        (["MobileNetV2", "--settle", "-1"], "--settle"),
        (["MobileNetV2", "--calls", "0"], "--calls"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, words):
    result = run_cli("bench", *args)
    assert result.exit_code == 2, result.output
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
