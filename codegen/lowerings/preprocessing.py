"""Preprocessing layers computed inside the model: CategoryEncoding, Discretization.

Dense outputs only (``sparse=False``), as Keras's TensorFlow backend computes them
(``rt.encode_categorical``, ``rt.discretize``).
"""

from __future__ import annotations

from kgen.codegen.ir import Call, Lowered, Node, Sym
from kgen.codegen.registry import Unsupported, register

_MODES = ("one_hot", "multi_hot", "count")


def _encode(node: Node, x, depth: int, mode: str) -> Lowered:
    if mode == "binary":  # Keras's old name
        mode = "multi_hot"
    if mode not in _MODES:
        raise Unsupported("output_mode", mode, ", ".join(repr(m) for m in _MODES))
    # Keras's TF backend encodes multi_hot / count per row with bincount, which it only
    # does for inputs of rank <= 2; higher ranks take a different path (sums over axis 1).
    if mode != "one_hot" and node.rank > 2:
        raise Unsupported("input rank", node.rank, f"1 or 2 with output_mode={mode!r}")
    return Lowered(Call(Sym("rt.encode_categorical"), (x, depth, mode)))


@register(
    "CategoryEncoding",
    family="preprocessing",
    handles={"num_tokens", "output_mode"},
    requires={"sparse": False},
    sources=("keras3",),
    notes="integer inputs; no `count_weights`",
)
def lower_category_encoding(node: Node) -> Lowered:
    if node.kwargs.get("count_weights") is not None or len(node.args) > 1:
        raise Unsupported("count_weights", "a tensor", "None")
    c = node.config
    return _encode(node, node.input, int(c["num_tokens"]), c.get("output_mode", "multi_hot"))


@register(
    "Discretization",
    family="preprocessing",
    handles={"bin_boundaries", "num_bins", "epsilon", "output_mode"},
    requires={"sparse": False},
    sources=("keras3",),
    notes="with `bin_boundaries` (given or adapted)",
)
def lower_discretization(node: Node) -> Lowered:
    c = node.config
    boundaries = c.get("bin_boundaries")
    if boundaries is None:
        raise Unsupported("bin_boundaries", None, "a list of boundaries (given or adapted)")
    boundaries = tuple(float(b) for b in boundaries)
    buckets = Call(Sym("rt.discretize"), (node.input, boundaries))
    mode = c.get("output_mode", "int")
    if mode == "int":
        return Lowered(buckets)
    return _encode(node, buckets, len(boundaries) + 1, mode)
