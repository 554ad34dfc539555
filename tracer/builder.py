"""What the Keras 3 and tf.keras tracers share: node ids, symbolic references, the
node record and its edges.  Keras-free: each tracer says what a symbolic tensor is."""

from __future__ import annotations

import networkx as nx

from kgen.tracer.graph import InputSpec, Ref, iter_refs
from kgen.tracer.plain import plain

__all__ = ["GraphBuilder"]


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
        return self.record(
            str(layer.name),
            type(layer).__name__,
            type(layer).__module__,
            node_index,
            output_shapes,
            output_dtypes,
        )

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
