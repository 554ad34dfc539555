"""``kgen bench`` runs end to end (its numbers are reported, never asserted)."""

import math

import keras
from helpers import run_cli

from kgen.bench import bench_model


def test_bench_reports_every_engine():
    x = keras.Input((8, 8, 3))
    h = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
    result = bench_model(model, "tiny", batch=2, repeats=2)
    assert result.keras_ms > 0 and result.flax_ms > 0 and math.isfinite(result.speedup)
    assert set(result.spread) >= {"keras", "flax", "flax_flat"}
    assert result.flat_ms > 0 and result.flat_compile_s > 0  # folded vs flat, side by side
    assert "keras graph" in result.line() and "flat form" in result.line()


def test_bench_cli_json(tmp_path):
    result = run_cli(
        "bench",
        "MobileNet",
        "--batch",
        "1",
        "--repeats",
        "1",
        "--json",
        "--input-shape",
        "32,32,3",
        "--alpha",
        "0.25",
    )
    assert result.exit_code == 0, result.output
    assert '"speedup"' in result.stdout
