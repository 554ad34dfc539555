"""Recurrent layers: SimpleRNN, LSTM, GRU and Bidirectional, as ``rt.<Layer>`` modules
(``runtime/recurrent.py``) holding the Keras weights in Keras layout.

Handled: ``return_sequences``, ``return_state`` (the node then has one output per
state), ``go_backwards``, ``initial_state`` passed at call time, Keras masks
(``Embedding(mask_zero=True)``, ``Masking``) exactly as Keras's ``rnn`` loop applies
them, activations without parameters, and dropout / recurrent dropout (identities at
inference).  ``stateful=True`` is refused: its state lives outside the model.
"""

from __future__ import annotations

from kgen.codegen.ir import SELF, Call, Lowered, Module, Node, Sym
from kgen.codegen.lowerings.activations import activation_name, apply_activation
from kgen.codegen.registry import Unsupported, lookup, register

_COMMON = {
    "units",
    "activation",
    "use_bias",
    "return_sequences",
    "return_state",
    "go_backwards",
    "unroll",  # an unrolled loop computes the same thing
    "zero_output_for_mask",
    "dropout",
    "recurrent_dropout",
    "implementation",  # Keras's two implementations share one formula
    "use_cudnn",
    "mask",
}
_REQUIRES = {"stateful": False}

# class -> (runtime module, activation defaults, extra fields)
_LAYERS = {
    "SimpleRNN": ("rt.SimpleRNN", {"activation": "tanh"}, set()),
    "LSTM": (
        "rt.LSTM",
        {"activation": "tanh", "recurrent_activation": "sigmoid"},
        {"recurrent_activation", "unit_forget_bias"},
    ),
    "GRU": (
        "rt.GRU",
        {"activation": "tanh", "recurrent_activation": "sigmoid"},
        {"recurrent_activation", "reset_after"},
    ),
}
_N_STATES = {"SimpleRNN": 1, "LSTM": 2, "GRU": 1}


class _Marker:
    pass


def _activation(config: dict, field: str, source: str):
    """The activation as a function symbol (None for linear)."""
    value = config.get(field)
    if activation_name(value) == "linear":
        return None
    try:
        call = apply_activation(_Marker(), value, source)
    except Unsupported as exc:
        raise Unsupported(field, exc.value, exc.supported) from None
    if call.kwargs:
        raise Unsupported(field, activation_name(value), "activations without parameters")
    return call.fn


def _layer_kwargs(cls: str, config: dict, source: str) -> dict:
    """Constructor keywords of ``rt.<cls>`` for a Keras config (defaults left out)."""
    _, activations, _ = _LAYERS[cls]
    kwargs = {"units": int(config["units"])}
    for field, default in activations.items():
        fn = _activation(config, field, source)
        if fn != _activation({field: default}, field, source):
            kwargs[field] = fn
    flags = {
        "use_bias": True,
        "return_sequences": False,
        "return_state": False,
        "go_backwards": False,
        "zero_output_for_mask": False,
    }
    if cls == "GRU":
        flags["reset_after"] = True
    for field, default in flags.items():
        value = bool(config.get(field, default))
        if value != default:
            kwargs[field] = value
    return kwargs


def _layer_params(cls: str, config: dict, weights: list) -> dict:
    names = ["kernel", "recurrent_kernel"] + (["bias"] if config.get("use_bias", True) else [])
    if len(weights) != len(names):
        raise Unsupported("weights", f"{len(weights)} arrays", f"{names} for {cls}")
    return dict(zip(names, weights))


def _n_weights(config: dict) -> int:
    return 3 if config.get("use_bias", True) else 2


def _mask(node: Node):
    mask = node.kwargs.get("mask")
    if isinstance(mask, (list, tuple)):
        mask = next((m for m in mask if m is not None), None)
    return mask


def _initial_state(node: Node):
    state = node.kwargs.get("initial_state")
    if state is None and len(node.args) > 1:
        state = node.args[1]
    if state is not None and not isinstance(state, (list, tuple)):
        state = [state]
    return list(state) if state is not None else None


def _call(node: Node) -> Call:
    args = (node.input,)
    kwargs = {}
    state = _initial_state(node)
    if state is not None:
        kwargs["initial_state"] = state
    mask = _mask(node)
    if mask is not None:
        kwargs["mask"] = mask
    return Call(SELF, args, kwargs)


def _weights(node: Node) -> list:
    return [node.weight(k) for k in node.weights]


def _lower_rnn(node: Node) -> Lowered:
    cls = node.class_name
    kwargs = _layer_kwargs(cls, node.config, node.source)
    units = kwargs.pop("units")
    module = Module(Sym(_LAYERS[cls][0]), (units,), kwargs)
    params = _layer_params(cls, node.config, _weights(node))
    return Lowered(_call(node), module=module, variables={"params": params})


for _cls, (_, _defaults, _extra) in _LAYERS.items():
    register(
        _cls,
        family="recurrent",
        handles=_COMMON | _extra,
        requires=_REQUIRES,
    )(_lower_rnn)


def _inner(config, field: str, source: str) -> tuple[str, dict]:
    """The class name and config of a layer serialised in a Bidirectional config."""
    if not isinstance(config, dict) or config.get("class_name") not in _LAYERS:
        name = config.get("class_name") if isinstance(config, dict) else config
        raise Unsupported(field, name, ", ".join(sorted(_LAYERS)))
    cls = config["class_name"]
    inner = config.get("config") or {}
    problems = lookup("layer", cls).check_config(inner)
    if problems:
        raise Unsupported(field, f"{cls} with {'; '.join(problems)}", "a supported config")
    return cls, inner


@register(
    "Bidirectional",
    family="recurrent",
    handles={"layer", "backward_layer", "merge_mode", "mask"},
)
def lower_bidirectional(node: Node) -> Lowered:
    c = node.config
    merge_mode = c.get("merge_mode", "concat")
    if merge_mode not in ("concat", "sum", "mul", "ave", None):
        raise Unsupported("merge_mode", merge_mode, "'concat', 'sum', 'mul', 'ave', None")
    fwd_cls, fwd_config = _inner(c.get("layer"), "layer", node.source)
    fwd_kwargs = _layer_kwargs(fwd_cls, fwd_config, node.source)
    weights = _weights(node)
    n_fwd = _n_weights(fwd_config)
    params = {"forward_layer": _layer_params(fwd_cls, fwd_config, weights[:n_fwd])}
    module_kwargs = {}
    if c.get("backward_layer") is not None:
        bwd_cls, bwd_config = _inner(c["backward_layer"], "backward_layer", node.source)
    else:  # a config written without it: Keras copies the forward layer
        bwd_cls, bwd_config = (
            fwd_cls,
            dict(fwd_config, go_backwards=not fwd_config.get("go_backwards", False)),
        )
    bwd_kwargs = _layer_kwargs(bwd_cls, bwd_config, node.source)
    params["backward_layer"] = _layer_params(bwd_cls, bwd_config, weights[n_fwd:])
    flipped = dict(fwd_kwargs, go_backwards=not fwd_kwargs.get("go_backwards", False))
    flipped = {k: v for k, v in flipped.items() if not (k == "go_backwards" and v is False)}
    if bwd_cls != fwd_cls:
        module_kwargs["backward_layer"] = Sym(_LAYERS[bwd_cls][0])
        module_kwargs["backward_kwargs"] = bwd_kwargs
    elif bwd_kwargs != flipped:
        module_kwargs["backward_kwargs"] = bwd_kwargs
    if merge_mode != "concat":
        module_kwargs["merge_mode"] = merge_mode
    module = Module(Sym("rt.Bidirectional"), (Sym(_LAYERS[fwd_cls][0]), fwd_kwargs), module_kwargs)
    return Lowered(_call(node), module=module, variables={"params": params})
