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
from kgen.tracer.builder import GraphBuilder
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


class _Tracer(GraphBuilder):
    def is_symbolic(self, value) -> bool:
        return _is_keras_tensor(value)

    def constant(self, value):
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
        self.set_io(model._nested_inputs, model._nested_outputs, _shape, lambda t: t.dtype.name)
        return g

    def add_node(self, node) -> None:
        layer = node.layer
        node_index = layer._inbound_nodes.index(node)
        nid = self.node_id(layer, node_index)
        outputs = tf.nest.flatten(node.outputs)
        attrs = self.node_attrs(
            layer, node_index, [_shape(t) for t in outputs], [t.dtype.name for t in outputs]
        )
        if node.is_input:
            attrs.update(kind="input", config=_plain(layer.get_config()))
            self.add(nid, attrs)
            return
        call_args = tuple(node.call_args)
        call_kwargs = dict(node.call_kwargs)
        cls = type(layer).__name__
        if cls in _OP_LAYERS:
            call_kwargs.pop("name", None)
            if cls == "SlicingOpLambda":
                call_args = _slice_dict(call_args)
                call_kwargs = {k: _slice_dict(v) for k, v in call_kwargs.items()}
        for key in ("training", "mask", "initial_state", "constants"):
            if call_kwargs.get(key, 0) is None:
                call_kwargs.pop(key)
        if _packs_states(layer, call_args):
            # tf.keras's RNN.__call__ calls the layer on [inputs, *initial_state] when the
            # states are Keras tensors; record Keras 3's form, inputs plus initial_state=.
            call_kwargs["initial_state"] = list(call_args[0][1:])
            call_args = (call_args[0][0], *call_args[1:])
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
        self.add(nid, attrs)


def _packs_states(layer, call_args) -> bool:
    """Whether a recurrent layer's node holds ``[inputs, *initial_state]`` as its input
    (``tf_keras/src/layers/rnn/base_rnn.py`` and ``bidirectional.py``, ``__call__``)."""
    from tf_keras.src.layers.rnn.base_rnn import RNN
    from tf_keras.src.layers.rnn.bidirectional import Bidirectional

    return (
        isinstance(layer, (RNN, Bidirectional))
        and not getattr(layer, "_num_constants", 0)
        and len(call_args) >= 1
        and isinstance(call_args[0], (list, tuple))
        and len(call_args[0]) > 1
    )


def _is_keras_tensor(value) -> bool:
    return type(value).__name__ == "KerasTensor" and hasattr(value, "_keras_history")


def trace_tf_keras(model) -> nx.DiGraph:
    return _Tracer().trace(model)
