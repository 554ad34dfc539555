"""``kgen graph``: a real picture file of the traced graph."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import keras
import pytest
from helpers import run_cli
from keras import ops

from kgen import pipeline
from kgen.examples.digits import MODEL_PATH


def _svg_text(path) -> str:
    root = ET.parse(path).getroot()
    return " ".join(t.strip() for el in root.iter() for t in [el.text or ""] if t.strip())


def test_graph_of_a_model_file_as_svg_and_png(tmp_path):
    svg = tmp_path / "pics" / "digits.svg"
    result = run_cli("graph", MODEL_PATH, "-o", svg, "--weights", "model")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {svg}"
    text = _svg_text(svg)
    for name in ("pixels", "conv1", "BatchNormalization", "logits", "Dense"):
        assert name in text, name
    png = tmp_path / "digits.png"
    assert run_cli("graph", MODEL_PATH, "-o", png, "--weights", "model").exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.png", "pics"]  # no temporaries


class Gate(keras.layers.Layer):  # no lowering: traced, drawn as a box of its own
    def call(self, x):
        return x * ops.sigmoid(x)


def test_a_traced_custom_layer_is_drawn(tmp_path, monkeypatch):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Gate(name="gate")(keras.layers.Dense(3, name="fc")(inputs)))
    loaded = type("Loaded", (), {"model": model, "input_shapes": None, "from_code": True})()
    path = pipeline.draw(pipeline.Source("user"), tmp_path / "g.svg", loaded=loaded)
    text = _svg_text(path)
    assert "gate" in text and "Gate" in text and "fc" in text


@pytest.mark.parametrize("output", ["graph.jpg", "graph"])
def test_graph_needs_a_known_picture_suffix(tmp_path, output):
    result = run_cli("graph", MODEL_PATH, "-o", tmp_path / output)
    assert result.exit_code == 2 and "the format comes from the suffix" in result.stderr
    assert list(tmp_path.iterdir()) == []
