"""Sequence layers: Embedding, RepeatVector, TimeDistributed, Masking.

Keras masks (``Masking``, ``Embedding(mask_zero=True)``) are not values of these layers:
Keras passes them to the later layers whose ``call`` takes a ``mask``, where they arrive
as a ``mask`` call argument.  Layers whose lowering does not declare ``"mask"`` in
``handles`` are refused there (``kgen.codegen.lower``), so a mask is never dropped
silently.
"""

from __future__ import annotations

from kgen.codegen.ir import SELF, BinOp, Call, Index, Lowered, Module, Node, Sym
from kgen.codegen.registry import Unsupported, lookup, register

# Keras layers whose call() takes a `mask` (TimeDistributed passes it on per step).
_MASK_CONSUMERS = {
    "GlobalAveragePooling1D",
    "Softmax",
    "BatchNormalization",
    "LSTM",
    "GRU",
    "SimpleRNN",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "ConvLSTM3D",
    "RNN",
    "Bidirectional",
    "TimeDistributed",
    "Attention",
    "AdditiveAttention",
    "MultiHeadAttention",
    "GroupedQueryAttention",
    "Lambda",
}


@register(
    "Embedding",
    family="sequence",
    handles={"input_dim", "output_dim", "mask_zero"},
    requires={"lora_rank": None, "lora_alpha": None, "quantization_config": None},
    notes="mask_zero: layers reached by the mask need mask support",
)
def lower_embedding(node: Node) -> Lowered:
    """``nn.Embed`` on the inputs cast to int32, as Keras casts non-integer inputs
    (float tokens truncate).  ``mask_zero`` only matters to the layers after it: each
    tracer records the mask where Keras passes it on."""
    c = node.config
    table = node.weight("embeddings")
    tokens = Call(Sym("jnp.asarray"), (node.input,), {"dtype": Sym("jnp.int32")})
    return Lowered(
        Call(SELF, (tokens,)),
        module=Module(Sym("nn.Embed"), (int(c["input_dim"]), int(c["output_dim"]))),
        variables={"params": {"embedding": table}},
    )


@register(
    "ReversibleEmbedding",
    family="sequence",
    handles={"input_dim", "output_dim", "mask_zero", "tie_weights", "logit_soft_cap"},
    requires={
        "lora_rank": None,
        "lora_alpha": None,
        "quantization_config": None,
        "reverse_dtype": None,
    },
    sources=("keras3",),
    notes="reverse=True projects onto the vocabulary with the same (or the reverse) table",
)
def lower_reversible_embedding(node: Node) -> Lowered:
    """``rt.ReversibleEmbedding``: one module for both directions, so a layer called
    forward and in reverse shares its table, as in Keras."""
    c = node.config
    kwargs = {}
    if not c.get("tie_weights", True):
        kwargs["tie_weights"] = False
    if c.get("logit_soft_cap") is not None:
        kwargs["logit_soft_cap"] = float(c["logit_soft_cap"])
    reverse = node.kwargs.get("reverse", node.args[1] if len(node.args) > 1 else False)
    if not isinstance(reverse, bool):
        raise Unsupported("reverse", reverse, "True or False")
    variables = {"embedding": node.weight("embeddings")}
    if "reverse_embeddings" in node.weights:
        variables["reverse_embeddings"] = node.weight("reverse_embeddings")
    return Lowered(
        Call(SELF, (node.input,), {"reverse": True} if reverse else {}),
        module=Module(
            Sym("rt.ReversibleEmbedding"), (int(c["input_dim"]), int(c["output_dim"])), kwargs
        ),
        variables={"params": variables},
    )


@register("RepeatVector", family="sequence", handles={"n"})
def lower_repeat_vector(node: Node) -> Lowered:
    """(batch, features) -> (batch, n, features)."""
    expanded = Index(node.input, (slice(None), None))
    return Lowered(Call(Sym("jnp.repeat"), (expanded, int(node.config["n"])), {"axis": 1}))


@register(
    "Masking",
    family="sequence",
    handles={"mask_value"},
    notes="layers reached by the mask need mask support",
)
def lower_masking(node: Node) -> Lowered:
    """Keras zeroes the steps whose features all equal ``mask_value`` (an identity for
    ``mask_value=0``); the mask itself only matters to the layers after it."""
    value = node.config.get("mask_value", 0.0)
    if not isinstance(value, (int, float)):
        raise Unsupported("mask_value", value, "a number")
    if float(value) == 0.0:
        return Lowered(node.input, comment="Masking(0.0): an identity on values")
    kept = Call(
        Sym("jnp.any"), (BinOp("!=", node.input, float(value)),), {"axis": -1, "keepdims": True}
    )
    return Lowered(Call(Sym("jnp.where"), (kept, node.input, 0.0)))


@register(
    "TimeDistributed",
    family="sequence",
    handles={"layer", "mask"},
    notes="wraps any supported layer; BatchNormalization's training statistics span all steps",
)
def lower_time_distributed(node: Node) -> Lowered:
    """The wrapped layer's own lowering applied to ``(batch * steps, ...)``, reshaped back.

    Keras calls the layer once per step; for layers that treat batch rows independently
    that is the same thing.  The exception is training-mode ``BatchNormalization``, whose
    batch statistics are per step in Keras and over all steps here.
    """
    inner_config = node.config.get("layer")
    if not isinstance(inner_config, dict) or "class_name" not in inner_config:
        raise Unsupported("layer", inner_config, "a serialised Keras layer")
    cls = str(inner_config["class_name"])
    spec = lookup("layer", cls)
    if spec is None or node.source not in spec.sources:
        raise Unsupported("layer", cls, "a layer class kgen supports")
    config = inner_config.get("config") or {}
    problems = spec.check_config(config)
    if problems:
        raise Unsupported("layer", f"{cls} with {'; '.join(problems)}", "a supported config")
    if node.kwargs.get("mask") is not None and cls in _MASK_CONSUMERS:
        raise Unsupported("mask", f"passed on to {cls}", "no mask")
    steps = node.input_shape[1]
    if steps is None:
        raise Unsupported("input shape", node.input_shape, "a known number of steps")
    flat = Call(Sym("einops.rearrange"), (node.input, "b t ... -> (b t) ..."))
    inner = Node(
        id=node.id,
        kind="layer",
        class_name=cls,
        name=node.name,
        config=config,
        weights=node.weights,
        args=(flat,),
        kwargs={k: v for k, v in node.kwargs.items() if k == "training"},
        input_shapes=[(None, *node.input_shape[2:])],
        output_shapes=[(None, *node.output_shape[2:])],
        source=node.source,
        call_index=node.call_index,
    )
    lowered = spec.fn(inner)
    lowered.expr = Call(
        Sym("einops.rearrange"), (lowered.expr, "(b t) ... -> b t ..."), {"t": int(steps)}
    )
    return lowered
