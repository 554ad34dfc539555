"""Trace a legacy tf.keras (Keras 2, the ``tf_keras`` package) model.

Produces the same graph format as :mod:`kgen.tracer.keras3`, with ``source="tf_keras"``
so lowerings whose semantics differ (hard_sigmoid, fused BatchNorm updates) can tell.
Keras 2's graph API: ``_nodes_by_depth``, ``node.layer``, ``node.call_args`` /
``node.call_kwargs``, and ``_keras_history = (layer, node_index, tensor_index)``.

TF calls on Keras tensors become ``TFOpLambda`` layers (``layer.symbol``, e.g.
``math.multiply``) and slicing becomes ``SlicingOpLambda`` (slices stored as
start/stop/step dicts).  Both are traced as ``kind="tfop"`` nodes whose class name is
the TF symbol, so lowerings dispatch on the symbol and the unsupported-layer report
names it.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import tensorflow as tf
import tf_keras

from kgen.errors import TraceError
from kgen.tracer.graph import InputSpec, Ref, iter_refs
from kgen.tracer.plain import plain as _plain

_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")


def _shape(t) -> tuple:
    dims = t.shape.as_list() if hasattr(t.shape, "as_list") else list(t.shape)
    return tuple(None if d is None else int(d) for d in dims)


def _is_graph_model(layer) -> bool:
    return isinstance(layer, tf_keras.Model) and getattr(layer, "_is_graph_network", False)


def _weights(layer) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for v in layer.weights:
        name = v.name.split("/")[-1].split(":")[0]
        key = name if name not in out else v.name.split(":")[0]
        out[key] = np.asarray(v.numpy())
    return out


def _config(layer) -> dict:
    """``get_config()``, plus what it leaves out but inference or training depends on.

    A BatchNormalization's ``fused`` flag is resolved at build time (rank-4/5 input,
    channel axis first or last, no renorm) and not serialised; the fused kernel updates
    the moving variance with the unbiased batch variance, the other path with the biased.
    """
    config = _plain(layer.get_config())
    if isinstance(layer, tf_keras.layers.BatchNormalization) and isinstance(layer.fused, bool):
        config["fused"] = layer.fused
    return config


def _slice_dict(value):
    """SlicingOpLambda stores slices as {'start','stop','step'} dicts."""
    if isinstance(value, dict) and set(value) == {"start", "stop", "step"}:
        return slice(value["start"], value["stop"], value["step"])
    if isinstance(value, (list, tuple)):
        return type(value)(_slice_dict(v) for v in value)
    return value


class _Tracer:
    def __init__(self):
        self.graph = nx.DiGraph()
        self.ids: dict[tuple[int, int], str] = {}
        self.used: set[str] = set()
        self.order = 0
        self.subgraphs: dict[int, nx.DiGraph] = {}

    def node_id(self, layer, node_index: int) -> str:
        key = (id(layer), node_index)
        if key not in self.ids:
            base = layer.name if node_index == 0 else f"{layer.name}#{node_index}"
            nid, k = base, 1
            while nid in self.used:
                nid, k = f"{base}~{k}", k + 1
            self.used.add(nid)
            self.ids[key] = nid
        return self.ids[key]

    def ref(self, kt) -> Ref:
        layer, node_index, tensor_index = kt._keras_history
        return Ref(self.node_id(layer, node_index), tensor_index)

    def convert(self, value):
        if _is_keras_tensor(value):
            return self.ref(value)
        if isinstance(value, tuple):
            return tuple(self.convert(v) for v in value)
        if isinstance(value, list):
            return [self.convert(v) for v in value]
        if isinstance(value, dict):
            return {k: self.convert(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(*(self.convert(v) for v in (value.start, value.stop, value.step)))
        if isinstance(value, tf.DType):
            return value.name
        return _plain(value)

    def trace(self, model) -> nx.DiGraph:
        if not _is_graph_model(model):
            raise TraceError(
                f"tf.keras model {model.name!r} ({type(model).__name__}) is not a functional or "
                "built Sequential model; kgen converts layer graphs, not subclassed call() code"
            )
        g = self.graph
        g.graph.update(
            name=str(model.name),
            class_name=type(model).__name__,
            source="tf_keras",
            keras_version=tf_keras.__version__,
        )
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                self.add_node(node)
        nested = model._nested_inputs
        if isinstance(nested, dict):
            structure, flat = "dict", list(nested.items())
        elif isinstance(nested, (list, tuple)):
            structure, flat = "list", [(kt._keras_history[0].name, kt) for kt in nested]
        else:
            structure, flat = "single", [(nested._keras_history[0].name, nested)]
        g.graph["input_structure"] = structure
        g.graph["inputs"] = [
            InputSpec(str(k), self.ref(kt).node, _shape(kt), kt.dtype.name) for k, kt in flat
        ]
        g.graph["outputs"] = self.convert(model._nested_outputs)
        return g

    def add_node(self, node) -> None:
        layer = node.layer
        node_index = layer._inbound_nodes.index(node)
        nid = self.node_id(layer, node_index)
        outputs = tf.nest.flatten(node.outputs)
        attrs = dict(
            name=str(layer.name),
            class_name=type(layer).__name__,
            module=type(layer).__module__,
            call_index=node_index,
            output_shapes=[_shape(t) for t in outputs],
            output_dtypes=[t.dtype.name for t in outputs],
            order=self.order,
            args=(),
            kwargs={},
            input_shapes=[],
            config={},
            weights={},
        )
        self.order += 1
        if node.is_input:
            attrs.update(kind="input", config=_plain(layer.get_config()))
            self.graph.add_node(nid, **attrs)
            return
        call_args = tuple(node.call_args)
        call_kwargs = dict(node.call_kwargs)
        cls = type(layer).__name__
        if cls in _OP_LAYERS:
            call_kwargs.pop("name", None)
            if cls == "SlicingOpLambda":
                call_args = _slice_dict(call_args)
                call_kwargs = {k: _slice_dict(v) for k, v in call_kwargs.items()}
        for key in ("training", "mask"):
            if call_kwargs.get(key, 0) is None:
                call_kwargs.pop(key)
        args = self.convert(call_args)
        kwargs = {k: self.convert(v) for k, v in call_kwargs.items()}
        attrs.update(args=args, kwargs=kwargs)
        attrs["input_shapes"] = [_shape(t) for t in tf.nest.flatten(node.keras_inputs)]
        if _is_graph_model(layer):
            if id(layer) not in self.subgraphs:
                self.subgraphs[id(layer)] = _Tracer().trace(layer)
            attrs.update(kind="model", subgraph=self.subgraphs[id(layer)])
        elif cls in _OP_LAYERS:
            attrs.update(kind="tfop", class_name=str(layer.symbol), config={})
        else:
            attrs.update(kind="layer", config=_config(layer), weights=_weights(layer))
        self.graph.add_node(nid, **attrs)
        for part, value in (("args", args), ("kwargs", kwargs)):
            for path, ref in iter_refs(value, (part,)):
                if not self.graph.has_edge(ref.node, nid):
                    self.graph.add_edge(ref.node, nid, uses=[])
                self.graph.edges[ref.node, nid]["uses"].append((path, ref.index))


def _is_keras_tensor(value) -> bool:
    return type(value).__name__ == "KerasTensor" and hasattr(value, "_keras_history")


def trace_tf_keras(model) -> nx.DiGraph:
    return _Tracer().trace(model)
