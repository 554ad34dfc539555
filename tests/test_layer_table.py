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


def test_each_class_exists_in_the_kerases_it_is_lowered_for():
    """The table's Keras 3 / tf.keras columns name real classes of that Keras."""
    import keras
    import tf_keras
    from tf_keras.layers import experimental

    from kgen.codegen.registry import registered

    extra_keras3 = {"CustomScaleLayer", "LayerScale"}  # applications' own layers
    for spec in registered():
        if spec.kind != "layer":
            continue
        if "keras3" in spec.sources and spec.class_name not in extra_keras3:
            assert hasattr(keras.layers, spec.class_name), f"keras.layers.{spec.class_name}"
        if "tf_keras" in spec.sources:
            assert hasattr(tf_keras.layers, spec.class_name) or hasattr(
                experimental, spec.class_name
            ), f"tf_keras.layers.{spec.class_name}"
