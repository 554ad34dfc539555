"""Trace a Keras 3 functional or Sequential model into a networkx graph.

Walks ``model._nodes_by_depth`` deepest first, as ``keras/src/ops/function.py`` does,
so Operation nodes (``x * 0.5``, slicing, ``keras.ops.*``) that ``model.layers`` does
not list are traced too.  Each symbolic tensor names its producer through
``_keras_history = (operation, node_index, tensor_index)``.
"""

from __future__ import annotations

import keras
import networkx as nx
import numpy as np
from keras.src.models.functional import Functional

from kgen.errors import TraceError
from kgen.tracer.graph import InputSpec, Ref, iter_refs
from kgen.tracer.plain import plain as _plain

_IGNORED_CALL_KWARGS = {"mask": None, "training": None}


def _functional_of(model):
    """The Functional graph behind a model, or a clear error."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise TraceError(
                f"Sequential model {model.name!r} is not built: give it an Input or call "
                "build(input_shape) before converting"
            )
        return functional
    if isinstance(model, Functional):
        return model
    raise TraceError(
        f"model {getattr(model, 'name', model)!r} ({type(model).__name__}) is not a functional or "
        "Sequential model; kgen converts layer graphs, not subclassed call() code"
    )


def _is_graph_model(op) -> bool:
    return isinstance(op, (keras.Sequential, Functional))


def _shape(t) -> tuple:
    return tuple(None if d is None else int(d) for d in t.shape)


def _layer_weights(layer) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for v in layer.weights:
        name = v.name.split("/")[-1].split(":")[0]
        key = name if name not in out else v.path
        out[key] = np.asarray(keras.ops.convert_to_numpy(v))
    return out


class _Tracer:
    def __init__(self):
        self.graph = nx.DiGraph()
        self.ids: dict[tuple[int, int], str] = {}  # (id(op), node_index) -> node id
        self.used: set[str] = set()
        self.order = 0
        self.subgraphs: dict[int, nx.DiGraph] = {}  # id(nested model) -> its graph

    def node_id(self, op, node_index: int) -> str:
        key = (id(op), node_index)
        if key not in self.ids:
            base = op.name if node_index == 0 else f"{op.name}#{node_index}"
            nid, k = base, 1
            while nid in self.used:
                nid, k = f"{base}~{k}", k + 1
            self.used.add(nid)
            self.ids[key] = nid
        return self.ids[key]

    def ref(self, kt) -> Ref:
        op, node_index, tensor_index = kt._keras_history
        return Ref(self.node_id(op, node_index), tensor_index)

    def convert_args(self, value):
        if isinstance(value, keras.KerasTensor):
            return self.ref(value)
        if isinstance(value, tuple):
            return tuple(self.convert_args(v) for v in value)
        if isinstance(value, list):
            return [self.convert_args(v) for v in value]
        if isinstance(value, dict):
            return {k: self.convert_args(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(*(self.convert_args(v) for v in (value.start, value.stop, value.step)))
        return _plain(value)

    def trace(self, model) -> nx.DiGraph:
        fn = _functional_of(model)
        g = self.graph
        g.graph.update(
            name=str(model.name),
            class_name=type(model).__name__,
            source="keras3",
            keras_version=keras.__version__,
        )
        for depth in sorted(fn._nodes_by_depth, reverse=True):
            for node in fn._nodes_by_depth[depth]:
                self.add_node(node)

        inputs_struct = fn._inputs_struct
        if isinstance(inputs_struct, dict):
            structure, flat = "dict", list(inputs_struct.items())
        elif isinstance(inputs_struct, (list, tuple)):
            structure, flat = "list", [(kt._keras_history[0].name, kt) for kt in inputs_struct]
        else:
            structure, flat = "single", [(inputs_struct._keras_history[0].name, inputs_struct)]
        g.graph["input_structure"] = structure
        g.graph["inputs"] = [
            InputSpec(name=str(key), node=self.ref(kt).node, shape=_shape(kt), dtype=str(kt.dtype))
            for key, kt in flat
        ]
        g.graph["outputs"] = self.convert_args(fn._outputs_struct)
        return g

    def add_node(self, node) -> None:
        op = node.operation
        node_index = op._inbound_nodes.index(node)
        nid = self.node_id(op, node_index)
        if nid in self.graph:  # a mask's producer, added early by add_mask_producers
            return
        outputs = list(node.outputs)
        attrs = dict(
            name=str(op.name),
            class_name=type(op).__name__,
            module=type(op).__module__,
            call_index=node_index,
            output_shapes=[_shape(t) for t in outputs],
            output_dtypes=[str(t.dtype) for t in outputs],
            order=self.order,
            args=(),
            kwargs={},
            input_shapes=[],
            config={},
            weights={},
        )
        self.order += 1
        if node.is_input:
            attrs.update(kind="input", config=_plain(op.get_config()))
            self.graph.add_node(nid, **attrs)
            return

        args = self.convert_args(tuple(node.arguments.args))
        kwargs = {
            k: self.convert_args(v)
            for k, v in node.arguments.kwargs.items()
            if not (k in _IGNORED_CALL_KWARGS and v is _IGNORED_CALL_KWARGS[k])
        }
        if isinstance(op, keras.layers.Layer) and not _is_graph_model(op):
            for key, mask in _runtime_masks(op, node).items():
                if kwargs.get(key) is None:
                    self.add_mask_producers(mask)
                    kwargs[key] = self.convert_args(mask)
        attrs.update(args=args, kwargs=kwargs)
        attrs["input_shapes"] = [_shape(kt) for kt in node.arguments.keras_tensors]

        if _is_graph_model(op):
            if id(op) not in self.subgraphs:
                self.subgraphs[id(op)] = _Tracer().trace(op)
            attrs.update(kind="model", subgraph=self.subgraphs[id(op)])
        elif isinstance(op, keras.layers.Layer):
            attrs.update(kind="layer", config=_plain(op.get_config()), weights=_layer_weights(op))
        else:
            try:
                config = _plain(op.get_config())
            except NotImplementedError:
                config = {}
            attrs.update(kind="op", config=config)
        self.graph.add_node(nid, **attrs)

        flat = []
        _collect(args, ("args",), flat)
        _collect(kwargs, ("kwargs",), flat)
        for path, ref in flat:
            if not self.graph.has_edge(ref.node, nid):
                self.graph.add_edge(ref.node, nid, uses=[])
            self.graph.edges[ref.node, nid]["uses"].append((path, ref.index))


    def add_mask_producers(self, value) -> None:
        """Trace the op nodes computing a Keras mask that no recorded argument uses."""
        for kt in _keras_tensors(value):
            op, node_index, _ = kt._keras_history
            if self.node_id(op, node_index) in self.graph:
                continue
            knode = op._inbound_nodes[node_index]
            self.add_mask_producers(list(knode.arguments.keras_tensors))
            self.add_node(knode)


def _keras_tensors(value) -> list:
    if isinstance(value, keras.KerasTensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [kt for v in value for kt in _keras_tensors(v)]
    if isinstance(value, dict):
        return [kt for v in value.values() for kt in _keras_tensors(v)]
    return []


def _runtime_masks(layer, node) -> dict:
    """The mask arguments ``Layer.__call__`` fills in from its inputs' Keras masks.

    Keras does this on every call (``keras/src/layers/layer.py``, "Populate mask
    argument(s)"): ``mask`` for a layer with one tensor argument, ``<arg>_mask`` for
    each tensor argument otherwise.  A node keeps them only when Keras happened not to
    copy the call's kwargs (one positional tensor, no conversion), so they are
    recomputed here from the symbolic masks; without this, masks reaching
    ``MultiHeadAttention``, ``Attention`` or a layer called with extra keyword
    arguments would be invisible in the graph.
    """
    from keras.src.backend import get_keras_mask
    from keras.src.layers.layer import CallSpec

    try:
        spec = CallSpec(
            layer._call_signature, layer._call_context_args, node.arguments.args, node.arguments.kwargs
        )
    except (TypeError, ValueError):
        return {}

    def masks_of(value):
        if isinstance(value, keras.KerasTensor):
            return get_keras_mask(value)
        if isinstance(value, (list, tuple)):
            return type(value)(masks_of(v) for v in value)
        return None

    found = {}
    tensors = spec.tensor_arguments_dict
    if len(tensors) == 1:
        if "mask" in spec.argument_names and spec.arguments_dict.get("mask") is None:
            found["mask"] = masks_of(next(iter(tensors.values())))
    else:
        for name, value in tensors.items():
            key = f"{name}_mask"
            if key in spec.argument_names and spec.arguments_dict.get(key) is None:
                found[key] = masks_of(value)
    return {k: v for k, v in found.items() if _keras_tensors(v)}


def _collect(value, path, out):
    out.extend(iter_refs(value, path))


def trace_keras3(model) -> nx.DiGraph:
    return _Tracer().trace(model)
