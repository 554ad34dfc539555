"""docs/layers.md is generated from the lowering registry and must not go stale."""

from pathlib import Path

from kgen.layer_table import layer_table_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "layers.md"


def test_layer_table_is_current():
    expected = layer_table_markdown()
    assert DOC.exists(), "docs/layers.md is missing: run `kgen layers --markdown docs/layers.md`"
    assert DOC.read_text(encoding="utf-8") == expected, (
        "docs/layers.md is stale: run `kgen layers --markdown docs/layers.md`"
    )


def test_layer_table_lists_registered_classes():
    text = layer_table_markdown()
    for name in ("Conv2D", "BatchNormalization", "DepthwiseConv2D", "Concatenate"):
        assert f"| `{name}` |" in text
