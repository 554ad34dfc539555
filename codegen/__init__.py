"""Codegen: lower a traced graph to Flax source and variables, without Keras.

``generate(graph)`` runs lower -> fold -> render -> format.  The lowering API (``register`` and
the IR types) is public: it is how built-in layers are converted, and how users plug in
their own layer classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kgen.codegen.fold import fold as fold_blocks
from kgen.codegen.format import check_source, format_source
from kgen.codegen.ir import (
    NOT_TRAIN,
    SELF,
    TRAIN,
    BinOp,
    Call,
    Index,
    Lowered,
    Module,
    Neg,
    Node,
    Ref,
    Sym,
)
from kgen.codegen.lower import lower
from kgen.codegen.partition import annotate, has_attention
from kgen.codegen.registry import Unsupported, register, registered
from kgen.codegen.render import render
from kgen.errors import KgenError

__all__ = [
    "NOT_TRAIN",
    "SELF",
    "TRAIN",
    "BinOp",
    "Call",
    "Generated",
    "Index",
    "Lowered",
    "Module",
    "Neg",
    "Node",
    "Ref",
    "Sym",
    "Unsupported",
    "check_source",
    "generate",
    "register",
    "registered",
]


@dataclass
class Generated:
    source: str  # formatted Python source of the module
    class_name: str  # the top-level nn.Module class
    variables: dict  # {collection: nested dict of numpy arrays}
    seconds: dict = field(default_factory=dict)  # {"lower": s, "fold": s, "render": s, ...}
    layer_paths: dict = field(default_factory=dict)  # submodule path -> Keras layer name


def generate(
    graph,
    *,
    class_name: str | None = None,
    regenerate: str = "",
    metadata: dict | None = None,
    fold: bool = True,
    api: str = "linen",
    logical_axes: bool | None = None,
) -> Generated:
    """trace output -> formatted Flax module source and its variables.

    lower -> fold -> render -> format.  ``fold=False`` keeps the flat form: one
    statement per Keras layer, no block classes (see ``codegen/fold.py``).
    ``metadata``: optional ``{"preprocess": mode, "input_size": n}`` (see ``render``).
    ``api="nnx"`` writes Flax NNX classes instead of linen ones (``codegen/nnx.py``).
    ``logical_axes``: name the kernels' axes for tensor parallelism
    (``codegen/partition.py``); None (the default) does so for linen modules of models
    with attention layers.
    """
    clock = time.perf_counter
    start = clock()
    lowered = lower(graph)
    if logical_axes is None:
        logical_axes = api == "linen" and has_attention(lowered)
    if logical_axes:
        if api != "linen":
            raise KgenError("logical axis names are written for linen modules only (--api linen)")
        annotate(lowered)
    lowered_at = clock()
    if fold:
        fold_blocks(lowered)
    folded_at = clock()
    rendered = render(
        lowered, class_name=class_name, regenerate=regenerate, metadata=metadata, api=api
    )
    rendered_at = clock()
    source = format_source(rendered.source)
    seconds = {
        "lower": lowered_at - start,
        "fold": folded_at - lowered_at,
        "render": rendered_at - folded_at,
        "format": clock() - rendered_at,
    }
    return Generated(source, rendered.class_name, rendered.variables, seconds, rendered.layer_paths)
