"""``docs/layers.md``: the table of supported Keras classes, generated from the registry."""

from __future__ import annotations

from collections import defaultdict

from kgen.codegen.registry import registered

__all__ = ["layer_table_markdown"]


def layer_table_markdown() -> str:
    specs = registered()
    layers = [s for s in specs if s.kind == "layer"]
    ops = [s for s in specs if s.kind == "op"]
    tfops = [s for s in specs if s.kind == "tfop"]
    lines = [
        "# Supported Keras layers and ops",
        "",
        "Generated from kgen's lowering registry by `kgen layers --markdown docs/layers.md`;",
        "a test fails when this file is stale. Every entry has one-layer parity tests",
        "against Keras (`tests/lowerings/`).",
        "",
        f"## Layers ({len(layers)} classes)",
        "",
        "| Keras class | family | Keras 3 | tf.keras | notes |",
        "|---|---|---|---|---|",
    ]
    for s in sorted(layers, key=lambda s: (s.family, s.class_name)):
        k3 = "yes" if "keras3" in s.sources else ""
        tk = "yes" if "tf_keras" in s.sources else ""
        lines.append(f"| `{s.class_name}` | {s.family} | {k3} | {tk} | {_notes(s)} |")
    lines += [
        "",
        f"## Keras 3 operations on symbolic tensors ({len(ops)})",
        "",
        "Arithmetic, indexing and `keras.ops` calls in a functional model become Operation",
        "nodes; these are converted:",
        "",
        ", ".join(f"`{s.class_name}`" for s in sorted(ops, key=lambda s: s.class_name)),
        "",
        f"## tf.keras TF operations ({len(tfops)} symbols)",
        "",
        "TF calls on Keras tensors in tf.keras models (`TFOpLambda`, `SlicingOpLambda`),",
        "by symbol:",
        "",
        ", ".join(f"`tf.{s.class_name}`" for s in sorted(tfops, key=lambda s: s.class_name)),
        "",
    ]
    return "\n".join(lines)


def _notes(spec) -> str:
    parts = []
    if spec.notes:
        parts.append(spec.notes)
    for key, value in sorted(spec.requires.items()):
        parts.append(f"only `{key}={value!r}`")
    return "; ".join(parts).replace("|", "\\|")


def family_counts() -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for s in registered():
        counts[s.family] += 1
    return dict(counts)
