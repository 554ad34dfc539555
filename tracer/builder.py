"""What the Keras 3 and tf.keras tracers share: node ids, symbolic references, the
node record and its edges.  Keras-free: each tracer says what a symbolic tensor is."""

from __future__ import annotations

import networkx as nx

from kgen.tracer.graph import InputSpec, Ref, iter_refs
from kgen.tracer.plain import plain

__all__ = ["GraphBuilder", "wrapped_layers"]

#: Attributes under which Keras wrappers hold the layers they call.
_WRAPPED = ("layer", "forward_layer", "backward_layer", "cell")


def wrapped_layers(layer) -> list:
    """The layers a wrapper (TimeDistributed, Bidirectional, RNN) calls on its own."""
    found = []
    for attr in _WRAPPED:
        inner = layer.__dict__.get(attr)
        if inner is not None and inner is not layer and hasattr(inner, "get_config"):
            found.append(inner)
    cells = layer.__dict__.get("cells")
    if isinstance(cells, (list, tuple)):
        found.extend(c for c in cells if hasattr(c, "get_config"))
    return found


class GraphBuilder:
    """Builds one traced graph; subclasses walk their Keras's node list."""

    def __init__(self):
        self.graph = nx.DiGraph()
        self.ids: dict[tuple[int, int], str] = {}  # (id(layer), node_index) -> node id
        self.used: set[str] = set()
        self.order = 0
        self.subgraphs: dict[int, nx.DiGraph] = {}  # id(nested model) -> its graph

    # -- hooks -------------------------------------------------------------------------
    def is_symbolic(self, value) -> bool:
        raise NotImplementedError

    def constant(self, value):
        """A non-symbolic call argument as plain data."""
        return plain(value)

    #: Module prefix of this Keras's own classes (``keras.src.``, ``tf_keras.src.``).
    builtin_prefix = ""

    def registered_name(self, cls) -> str | None:
        """Keras's registered name for ``cls`` (``"package>Name"`` for custom classes)."""
        return None

    #: Module prefixes of this Keras's own activation functions.
    activation_prefixes: tuple = ()
    has_lowering = None  # the lowering registry's answer, set by each tracer

    # -- tracing into layers kgen has no lowering for (tracer/custom.py) ----------------
    def should_trace(self, layer) -> bool:
        """Whether to trace ``layer.call`` instead of recording the layer as one node: a
        class with no lowering (a user's, a third-party package's), or one of Keras's
        own that :meth:`traces_builtin` says to trace."""
        if self.has_lowering is None:
            return False
        identity = self.identity(layer)
        if not identity["builtin"]:
            return not self.has_lowering("layer", type(layer).__name__, **identity)
        return self.traces_builtin(layer)

    def traces_builtin(self, layer) -> bool:
        """A Keras layer whose activation is a user function is traced with it."""
        return self.custom_activation(layer) is not None

    def untraceable(self, attrs: dict, why) -> None:
        """Record a layer whose ``call()`` could not be traced: an unsupported layer,
        reported with the reason."""
        attrs.update(kind="layer", config={}, config_skipped="no lowering", trace_error=str(why))

    def custom_activation(self, layer):
        """A layer's activation when it is a function that is not this Keras's own."""
        fn = layer.__dict__.get("activation")
        if fn is None or not callable(fn):
            return None
        module = getattr(fn, "__module__", "") or ""
        return None if module.startswith(self.activation_prefixes) else fn

    # -- class identity ------------------------------------------------------------------
    def is_builtin(self, layer) -> bool:
        """Whether ``layer`` is an instance of this Keras's own class, and so are the
        layers it wraps (TimeDistributed, Bidirectional, RNN cells): only then may kgen's
        own lowering for that class name convert it."""
        if not type(layer).__module__.startswith(self.builtin_prefix):
            return False
        return all(self.is_builtin(inner) for inner in wrapped_layers(layer))

    def identity(self, layer) -> dict:
        """What the lowering registry matches a class by: never its bare name alone."""
        cls = type(layer)
        return dict(
            builtin=self.is_builtin(layer),
            module=cls.__module__,
            registered_name=self.registered_name(cls),
        )

    def layer_config(self, layer, kind: str, has_lowering) -> tuple[dict, str | None]:
        """``(get_config(), None)``, or ``({}, why)`` for a class that has no lowering.

        Nothing kgen cannot convert has its ``get_config()`` called: some third-party
        layers raise from it, and the unsupported-class report must still come out.
        ``has_lowering(kind, class_name, **identity)`` is the lowering registry's
        question, asked by the caller (the tracer does not import codegen); without it,
        a failing ``get_config()`` of a class that is not Keras's own is recorded.
        """
        identity = self.identity(layer)
        name = type(layer).__name__
        if (
            has_lowering is not None
            and not identity["builtin"]
            and not has_lowering(kind, name, **identity)
        ):
            return {}, "no lowering"
        try:
            return plain(layer.get_config()), None
        except Exception as exc:
            if identity["builtin"]:
                raise
            return {}, f"get_config() raised {type(exc).__name__}"

    # -- shared ------------------------------------------------------------------------
    def node_id(self, layer, node_index: int) -> str:
        """A unique, stable id per call: the layer name, ``name#k`` for its k-th call."""
        key = (id(layer), node_index)
        if key not in self.ids:
            base = layer.name if node_index == 0 else f"{layer.name}#{node_index}"
            self.ids[key] = self.unique_id(base, "~")
        return self.ids[key]

    def unique_id(self, base: str, sep: str) -> str:
        """``base``, or ``base<sep>k`` for the first k that is not taken yet."""
        nid, k = base, 1
        while nid in self.used:
            nid, k = f"{base}{sep}{k}", k + 1
        self.used.add(nid)
        return nid

    def ref(self, tensor) -> Ref:
        layer, node_index, tensor_index = tensor._keras_history
        return Ref(self.node_id(layer, node_index), tensor_index)

    def convert(self, value):
        """Call arguments with symbolic tensors replaced by :class:`Ref`."""
        if self.is_symbolic(value):
            return self.ref(value)
        if isinstance(value, tuple):
            return tuple(self.convert(v) for v in value)
        if isinstance(value, list):
            return [self.convert(v) for v in value]
        if isinstance(value, dict):
            return {k: self.convert(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(*(self.convert(v) for v in (value.start, value.stop, value.step)))
        return self.constant(value)

    def node_attrs(self, layer, node_index: int, output_shapes, output_dtypes) -> dict:
        attrs = self.record(
            str(layer.name),
            type(layer).__name__,
            type(layer).__module__,
            node_index,
            output_shapes,
            output_dtypes,
        )
        attrs.update(self.identity(layer))
        return attrs

    def record(self, name, class_name, module, call_index, output_shapes, output_dtypes):
        """A node's attributes, with no arguments, config or weights yet."""
        attrs = dict(
            name=name,
            class_name=class_name,
            module=module,
            call_index=call_index,
            output_shapes=list(output_shapes),
            output_dtypes=list(output_dtypes),
            order=self.order,
            args=(),
            kwargs={},
            input_shapes=[],
            config={},
            weights={},
            builtin=True,
            registered_name=None,
        )
        self.order += 1
        return attrs

    def add(self, nid: str, attrs: dict) -> None:
        """Add a node and one edge per producer, recording where each output is used."""
        self.graph.add_node(nid, **attrs)
        for part in ("args", "kwargs"):
            for path, ref in iter_refs(attrs[part], (part,)):
                if not self.graph.has_edge(ref.node, nid):
                    self.graph.add_edge(ref.node, nid, uses=[])
                self.graph.edges[ref.node, nid]["uses"].append((path, ref.index))

    def set_io(self, inputs, outputs, shape, dtype) -> None:
        """Graph inputs (keyed like Keras's input structure) and output structure."""
        if isinstance(inputs, dict):
            structure, flat = "dict", list(inputs.items())
        elif isinstance(inputs, (list, tuple)):
            structure, flat = "list", [(t._keras_history[0].name, t) for t in inputs]
        else:
            structure, flat = "single", [(inputs._keras_history[0].name, inputs)]
        self.graph.graph["input_structure"] = structure
        self.graph.graph["inputs"] = [
            InputSpec(name=str(key), node=self.ref(t).node, shape=shape(t), dtype=dtype(t))
            for key, t in flat
        ]
        self.graph.graph["outputs"] = self.convert(outputs)
