"""Attention layers: MultiHeadAttention, Attention, AdditiveAttention, as ``rt.<Layer>``
modules (``runtime/attention.py``) with the Keras weights in Keras layout.

Call arguments are read from the node as Keras binds them (``query``/``value``/``key``
positionally or by keyword, ``use_causal_mask``, ``return_attention_scores``,
``attention_mask``), and so are the Keras masks of the inputs (``query_mask`` etc. for
MultiHeadAttention, ``mask=[query_mask, value_mask]`` for Attention), which the tracer
records as Keras fills them in at run time.
"""

from __future__ import annotations

from kgen.codegen.ir import SELF, Call, Lowered, Module, Node, Sym
from kgen.codegen.lowerings.common import bind_args
from kgen.codegen.registry import Unsupported, register

_MHA_CALL = (
    "query",
    "value",
    "key",
    "query_mask",
    "value_mask",
    "key_mask",
    "attention_mask",
    "return_attention_scores",
    "training",
    "use_causal_mask",
)


def _flag(value, field: str) -> bool:
    if not isinstance(value, (bool, type(None))):
        raise Unsupported(field, value, "a constant True or False")
    return bool(value)


@register(
    "MultiHeadAttention",
    family="attention",
    handles={
        "num_heads",
        "key_dim",
        "value_dim",
        "dropout",  # on the attention weights, in training only
        "use_bias",
        "use_gate",
        "output_shape",
        "attention_axes",
        "sliding_window",
        "flash_attention",  # a kernel choice, same result
        # tf.keras records the shapes it was built for; they follow from the inputs
        "query_shape",
        "key_shape",
        "value_shape",
    },
)
def lower_multi_head_attention(node: Node) -> Lowered:
    c = node.config
    heads, key_dim = int(c["num_heads"]), int(c["key_dim"])
    value_dim = int(c.get("value_dim") or key_dim)
    use_bias, use_gate = bool(c.get("use_bias", True)), bool(c.get("use_gate", False))
    query_rank = len(node.input_shapes[0])
    kwargs = {}
    if value_dim != key_dim:
        kwargs["value_dim"] = value_dim
    output_shape = c.get("output_shape")
    if output_shape:
        output_shape = (
            (int(output_shape),)
            if isinstance(output_shape, int)
            else tuple(int(d) for d in output_shape)
        )
        kwargs["output_shape"] = output_shape
    axes = c.get("attention_axes")
    if axes is not None:
        axes = (int(axes),) if isinstance(axes, int) else tuple(int(a) for a in axes)
        rank = query_rank + 1  # projected: (batch, ..., heads, channels)
        axes = tuple(a if a >= 0 else (rank - 1) + a for a in axes)
        if axes != tuple(range(1, rank - 2)):
            kwargs["attention_axes"] = axes
    if not use_bias:
        kwargs["use_bias"] = False
    if use_gate:
        kwargs["use_gate"] = True
    if c.get("sliding_window") is not None:
        kwargs["sliding_window"] = int(c["sliding_window"])

    names = ["query", "key"] + (["gate"] if use_gate else []) + ["value", "attention_output"]
    per_dense = 2 if use_bias else 1
    weights = [node.weight(k) for k in node.weights]
    if len(weights) != per_dense * len(names):
        raise Unsupported("weights", f"{len(weights)} arrays", f"kernel/bias of {names}")
    params = {}
    for i, name in enumerate(names):
        group = weights[i * per_dense : (i + 1) * per_dense]
        params[name] = dict(zip(("kernel", "bias"), group))

    call = bind_args(node, _MHA_CALL)
    args = [call["query"], call["value"]]
    if call.get("key") is not None:
        args.append(call["key"])
    call_kwargs = {}
    for name in ("query_mask", "value_mask", "key_mask", "attention_mask"):
        if call.get(name) is not None:
            call_kwargs[name] = call[name]
    for name in ("use_causal_mask", "return_attention_scores"):
        if _flag(call.get(name), name):
            call_kwargs[name] = True
    module = Module(Sym("rt.MultiHeadAttention"), (heads, key_dim), kwargs)
    return Lowered(
        Call(SELF, tuple(args), call_kwargs), module=module, variables={"params": params}
    )


def _dense_attention_call(node: Node) -> Call:
    call = bind_args(
        node, ("inputs", "mask", "training", "return_attention_scores", "use_causal_mask")
    )
    inputs = list(call["inputs"])
    if not 2 <= len(inputs) <= 3:
        raise Unsupported(
            "inputs", f"{len(inputs)} tensors", "[query, value] or [query, value, key]"
        )
    kwargs = {}
    mask = call.get("mask")
    if mask is not None:
        mask = list(mask)
        for name, m in zip(("query_mask", "value_mask"), mask):
            if m is not None:
                kwargs[name] = m
    for name in ("use_causal_mask", "return_attention_scores"):
        if _flag(call.get(name), name):
            kwargs[name] = True
    return Call(SELF, tuple(inputs), kwargs)


@register(
    "Attention",
    family="attention",
    handles={"use_scale", "score_mode", "dropout", "mask"},
)
def lower_attention(node: Node) -> Lowered:
    c = node.config
    use_scale = bool(c.get("use_scale", False))
    score_mode = c.get("score_mode", "dot")
    if score_mode not in ("dot", "concat"):
        raise Unsupported("score_mode", score_mode, "'dot', 'concat'")
    kwargs, params = {}, {}
    if use_scale:
        kwargs["use_scale"] = True
        params["scale"] = node.weight("scale")
    if score_mode != "dot":
        kwargs["score_mode"] = score_mode
        params["concat_score_weight"] = node.weight("concat_score_weight")
    module = Module(Sym("rt.Attention"), (), kwargs)
    variables = {"params": params} if params else {}
    return Lowered(_dense_attention_call(node), module=module, variables=variables)


@register(
    "AdditiveAttention",
    family="attention",
    handles={"use_scale", "dropout", "mask"},
)
def lower_additive_attention(node: Node) -> Lowered:
    use_scale = bool(node.config.get("use_scale", True))
    kwargs, variables = {}, {}
    if use_scale:
        variables = {"params": {"scale": node.weight("scale")}}
    else:
        kwargs["use_scale"] = False
    module = Module(Sym("rt.AdditiveAttention"), (), kwargs)
    return Lowered(_dense_attention_call(node), module=module, variables=variables)
