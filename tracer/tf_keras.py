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

tf.keras hands Keras masks from layer to layer outside the graph; the tracer rebuilds
each mask that reaches a layer as TF-op nodes (see ``_Tracer.implicit_masks``).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import tensorflow as tf
import tf_keras

from kgen.errors import TraceError
from kgen.tracer.builder import GraphBuilder
from kgen.tracer.custom import CallTraceMixin
from kgen.tracer.graph import Ref
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


def _complete_config(layer, config: dict) -> dict:
    """A layer's config plus what ``get_config()`` leaves out but inference or training
    depends on.

    A BatchNormalization's ``fused`` flag is resolved at build time (rank-4/5 input,
    channel axis first or last, no renorm) and not serialised; the fused kernel updates
    the moving variance with the unbiased batch variance, the other path with the biased.
    """
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
    builtin_prefix = "tf_keras.src."
    activation_prefixes = ("tf_keras.", "tensorflow.")
    source = "tf_keras"

    def __init__(self, has_lowering=None):
        super().__init__()
        self.has_lowering = has_lowering
        self.masks: dict[tuple[int, int, int], Ref | None] = {}  # traced Keras masks

    def is_symbolic(self, value) -> bool:
        return _is_keras_tensor(value)

    def registered_name(self, cls) -> str | None:
        return tf_keras.saving.get_registered_name(cls)

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
        implicit_masks = self.implicit_masks(layer, call_args, call_kwargs)
        if _packs_states(layer, call_args):
            # tf.keras's RNN.__call__ calls the layer on [inputs, *initial_state] when the
            # states are Keras tensors; record Keras 3's form, inputs plus initial_state=.
            call_kwargs["initial_state"] = list(call_args[0][1:])
            call_args = (call_args[0][0], *call_args[1:])
        args = self.convert(call_args)
        kwargs = {k: self.convert(v) for k, v in call_kwargs.items()}
        kwargs.update(implicit_masks)
        attrs.update(args=args, kwargs=kwargs)
        attrs["input_shapes"] = [_shape(t) for t in tf.nest.flatten(node.keras_inputs)]
        if _is_graph_model(layer):
            if id(layer) not in self.subgraphs:
                self.subgraphs[id(layer)] = _Tracer(self.has_lowering).trace(layer)
            attrs.update(kind="model", subgraph=self.subgraphs[id(layer)])
        elif cls in _OP_LAYERS:
            attrs.update(kind="tfop", class_name=str(layer.symbol), config={})
        elif self.should_trace(layer):
            self.trace_into(layer, call_args, call_kwargs, implicit_masks, attrs)
        else:
            config, skipped = self.layer_config(layer, "layer", self.has_lowering)
            attrs.update(kind="layer", config=_complete_config(layer, config))
            attrs.update(config_skipped=skipped, weights=_weights(layer))
        self.add(nid, attrs)

    # -- tracing into layers kgen has no lowering for (tracer/custom.py) ----------------
    def trace_into(self, layer, call_args, call_kwargs, implicit_masks, attrs) -> None:
        from kgen.tracer.custom import TraceFailure, trace_call

        try:
            if implicit_masks:
                raise TraceFailure("a Keras mask reaches it, which kgen does not trace in tf.keras")
            sub, tensors = trace_call(
                layer,
                call_args,
                call_kwargs,
                lambda: _CallTracer(self.has_lowering),
                framework=_TfKeras,
            )
        except TraceFailure as exc:
            self.untraceable(attrs, exc)
            return
        attrs.update(kind="traced", subgraph=sub, traced_inputs=[self.ref(t) for t in tensors])

    # -- masks ---------------------------------------------------------------------------
    # tf.keras hands masks from layer to layer outside the layer graph: each output tensor
    # carries ``_keras_mask`` (computed by its layer's ``compute_mask``), and
    # ``Layer.__call__`` passes the masks of a call's ``inputs`` as ``mask`` when ``call``
    # takes one (``base_layer.py``, ``_get_input_masks``).  The tracer rebuilds each mask
    # that reaches such a call as graph nodes of TF ops (what tf.keras's compute_mask
    # runs), so the mask is an ordinary traced argument, as in Keras 3's graph.

    def implicit_masks(self, layer, call_args, call_kwargs) -> dict:
        """The mask arguments tf.keras fills in for this call, as Refs."""
        cls = type(layer).__name__
        if _is_graph_model(layer):
            inputs = [t for t in tf.nest.flatten((call_args, call_kwargs)) if _is_keras_tensor(t)]
            masked = [t for t in inputs if getattr(t, "_keras_mask", None) is not None]
            if masked:
                raise TraceError(
                    f"a Keras mask reaches nested model {layer.name!r}; kgen traces masks "
                    "across the layers of one tf.keras model only"
                )
            return {}
        if cls == "MultiHeadAttention":  # reads its inputs' _keras_mask itself
            names = ("query", "value", "key")
            bound = dict(zip(names, call_args))
            bound.update({k: v for k, v in call_kwargs.items() if k in names})
            return {
                f"{name}_mask": mask
                for name, t in bound.items()
                if (mask := self.mask_ref(t)) is not None
            }
        if not getattr(layer, "_expects_mask_arg", False) or "mask" in call_kwargs:
            return {}
        inputs = call_args[0] if call_args else call_kwargs.get("inputs")
        if isinstance(inputs, (list, tuple)):
            masks = [self.mask_ref(t) for t in inputs]
            return {"mask": masks} if any(m is not None for m in masks) else {}
        mask = self.mask_ref(inputs)
        return {} if mask is None else {"mask": mask}

    def mask_ref(self, tensor):
        """A Ref to graph nodes computing ``tensor``'s Keras mask; None without one."""
        if not _is_keras_tensor(tensor) or getattr(tensor, "_keras_mask", None) is None:
            return None
        layer, node_index, index = tensor._keras_history
        key = (id(layer), node_index, index)
        if key not in self.masks:
            self.masks[key] = self._mask_ref(tensor, layer, node_index, index)
        return self.masks[key]

    def _mask_ref(self, tensor, layer, node_index: int, index: int):
        knode = layer._inbound_nodes[node_index]
        cls = type(layer).__name__
        first = tf.nest.flatten(knode.call_args[0] if knode.call_args else knode.keras_inputs)
        nid = self.node_id(layer, node_index)
        shape = _shape(tensor._keras_mask)
        if cls == "Embedding" and index == 0:
            return self.mask_op(nid, "math.not_equal", (self.ref(first[0]), 0), shape)
        if cls == "Masking" and index == 0:
            value = float(layer.mask_value)
            kept = self.mask_op(
                nid, "math.not_equal", (self.ref(first[0]), value), _shape(first[0])
            )
            return self.mask_op(nid, "math.reduce_any", (kept,), shape, {"axis": -1})
        if cls in _SEQUENCE_MASKED and layer.return_sequences:
            outputs = 2 if cls == "Bidirectional" and not layer.merge_mode else 1
            if index < outputs:
                return self.mask_ref(first[0])
        if cls in ("Attention", "AdditiveAttention") and index == 0:
            # BaseDenseAttention.compute_mask: the query's mask, as passed or implicit
            explicit = knode.call_kwargs.get("mask")
            if explicit is not None:
                return self.ref(explicit[0]) if _is_keras_tensor(explicit[0]) else None
            return self.mask_ref(first[0])
        if cls == "Concatenate" and index == 0:
            return self.concatenate_mask(nid, layer, first, shape)
        if (
            cls == "TimeDistributed"
            and index == 0
            and type(layer.layer).compute_mask is _BASE_COMPUTE_MASK
            and len(shape) == 2
        ):  # the inner layer keeps (or drops) the per-step mask: the input's
            return self.mask_ref(first[0])
        if cls in _MERGE_MASKS:  # _Merge.compute_mask: all masks, ANDed
            masks = [m for m in (self.mask_ref(t) for t in first) if m is not None]
            out = masks[0]
            for m in masks[1:]:
                out = self.mask_op(nid, "math.logical_and", (out, m), shape)
            return out
        if (
            layer.supports_masking
            and type(layer).compute_mask is _BASE_COMPUTE_MASK
            and not getattr(layer, "_compute_output_and_mask_jointly", False)
            and index < len(first)
        ):  # Layer.compute_mask: the input masks, carried over
            return self.mask_ref(first[index])
        raise TraceError(
            f"a Keras mask comes out of layer {layer.name!r} ({cls}) and is used later; "
            f"kgen does not know how {cls} computes its mask in tf.keras"
        )

    def concatenate_mask(self, nid: str, layer, inputs: list, shape: tuple) -> Ref:
        """Concatenate.compute_mask: each input's mask (all True without one), widened
        to the input's rank, concatenated on the layer's axis, then ANDed over the last
        axis (``merging/concatenate.py``)."""
        parts, shapes = [], []
        for t in inputs:
            mask, part_shape = self.mask_ref(t), _shape(t)
            if mask is None:
                mask = self.mask_op(nid, "ones_like", (self.ref(t),), part_shape, {"dtype": "bool"})
            elif len(_shape(t._keras_mask)) < len(part_shape):
                part_shape = part_shape[:-1] + (1,)
                mask = self.mask_op(nid, "expand_dims", (mask, -1), part_shape)
            else:
                part_shape = _shape(t._keras_mask)
            parts.append(mask)
            shapes.append(part_shape)
        axis = int(layer.axis) % len(shapes[0])
        sizes = [s[axis] for s in shapes]
        joined_shape = list(shapes[0])
        joined_shape[axis] = None if None in sizes else sum(sizes)
        joined = self.mask_op(nid, "concat", (parts, int(layer.axis)), tuple(joined_shape))
        return self.mask_op(nid, "math.reduce_all", (joined,), shape, {"axis": -1})

    def mask_op(self, producer: str, symbol: str, args: tuple, shape: tuple, kwargs=None):
        """Add one TF-op node computing (part of) a mask; return its Ref."""
        nid = self.unique_id(f"{producer}_mask", "_")
        attrs = self.record(nid, symbol, "tf_keras.mask", 0, [shape], ["bool"])
        attrs.update(kind="tfop", args=args, kwargs=dict(kwargs or {}))
        self.add(nid, attrs)
        return Ref(nid, 0)


_SEQUENCE_MASKED = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional")
_MERGE_MASKS = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
_BASE_COMPUTE_MASK = tf_keras.layers.Layer.compute_mask


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


class _TfKeras:
    """What tracing needs of tf.keras (see ``Keras3`` in tracer/custom.py)."""

    @staticmethod
    def is_tensor(value) -> bool:
        return _is_keras_tensor(value)

    @staticmethod
    def shape(t) -> tuple:
        return _shape(t)

    @staticmethod
    def make_input(shape: tuple, dtype):
        return tf_keras.Input(batch_shape=shape, dtype=dtype)

    @staticmethod
    def own_variables(layer) -> list:
        return list(layer._trainable_weights) + list(layer._non_trainable_weights)

    @staticmethod
    def graph(inputs: list, outputs):
        from kgen.tracer.custom import TracedGraph

        model = tf_keras.Model(inputs, outputs)
        return TracedGraph(model._nodes_by_depth, model._nested_outputs)

    @staticmethod
    def patches(layer) -> list:
        return []


class _CallTracer(CallTraceMixin, _Tracer):
    """Builds the sub-graph of one traced tf.keras ``call()`` (see tracer/custom.py)."""

    layer_class = tf_keras.layers.Layer

    def op_of(self, node):
        return node.layer

    def is_op(self, op) -> bool:
        return type(op).__name__ in _OP_LAYERS

    def op_base_name(self, op) -> str:
        return str(op.symbol).split(".")[-1] if type(op).__name__ == "TFOpLambda" else "getitem"

    def outputs_of(self, node) -> list:
        return tf.nest.flatten(node.outputs)

    def tensor_shape(self, t) -> tuple:
        return _shape(t)

    def tensor_dtype(self, t) -> str:
        return t.dtype.name

    def variable_value(self, v):
        return np.asarray(v.numpy())

    def add_node(self, node) -> None:
        if not self.add_variable_node(node):
            super().add_node(node)


def trace_tf_keras(model, has_lowering=None) -> nx.DiGraph:
    return _Tracer(has_lowering).trace(model)
