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
from kgen.tracer.builder import GraphBuilder
from kgen.tracer.custom import CallTraceMixin, Creation, keras_tensors, op_name
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


class _Tracer(GraphBuilder):
    builtin_prefix = "keras.src."
    activation_prefixes = ("keras.",)

    def __init__(self, has_lowering=None, trace_lambdas=False):
        super().__init__()
        self.has_lowering = has_lowering
        self.trace_lambdas = trace_lambdas

    def is_symbolic(self, value) -> bool:
        return isinstance(value, keras.KerasTensor)

    def registered_name(self, cls) -> str | None:
        return keras.saving.get_registered_name(cls)

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

        outputs = fn._outputs_struct
        if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
            outputs = outputs[0]  # Functional.call returns unpack_singleton(outputs)
        self.set_io(fn._inputs_struct, outputs, _shape, lambda t: str(t.dtype))
        return g

    def add_node(self, node) -> None:
        op = node.operation
        node_index = op._inbound_nodes.index(node)
        nid = self.node_id(op, node_index)
        if nid in self.graph:  # a mask's producer, added early by add_mask_producers
            return
        outputs = list(node.outputs)
        attrs = self.node_attrs(
            op, node_index, [_shape(t) for t in outputs], [str(t.dtype) for t in outputs]
        )
        if node.is_input and isinstance(op, keras.layers.InputLayer):
            attrs.update(kind="input", config=_plain(op.get_config()))
            self.add(nid, attrs)
            return

        args = self.convert(tuple(node.arguments.args))
        kwargs = {
            k: self.convert(v)
            for k, v in node.arguments.kwargs.items()
            if not (k in _IGNORED_CALL_KWARGS and v is _IGNORED_CALL_KWARGS[k])
        }
        if isinstance(op, keras.layers.Layer) and not _is_graph_model(op):
            for key, mask in _runtime_masks(op, node).items():
                if kwargs.get(key) is None:
                    self.add_mask_producers(mask)
                    kwargs[key] = self.convert(mask)
        attrs.update(args=args, kwargs=kwargs)
        attrs["input_shapes"] = [_shape(kt) for kt in node.arguments.keras_tensors]

        if _is_graph_model(op):
            if id(op) not in self.subgraphs:
                self.subgraphs[id(op)] = _Tracer(self.has_lowering, self.trace_lambdas).trace(op)
            attrs.update(kind="model", subgraph=self.subgraphs[id(op)])
        elif isinstance(op, keras.layers.Layer) and self.should_trace(op):
            self.trace_into(op, node, attrs)
        elif isinstance(op, keras.layers.Layer):
            config, skipped = self.layer_config(op, "layer", self.has_lowering)
            attrs.update(kind="layer", config=config, config_skipped=skipped)
            attrs["weights"] = _layer_weights(op)
        else:
            try:
                config, skipped = self.layer_config(op, "op", self.has_lowering)
            except NotImplementedError:
                config, skipped = {}, None
            attrs.update(kind="op", config=config, config_skipped=skipped)
        self.add(nid, attrs)

    # -- tracing into layers kgen has no lowering for (tracer/custom.py) ----------------
    def traces_builtin(self, layer) -> bool:
        """An in-process Lambda, or a Keras layer whose activation is a user function."""
        if isinstance(layer, keras.layers.Lambda):
            return self.trace_lambdas
        return super().traces_builtin(layer)

    def trace_into(self, layer, node, attrs: dict) -> None:
        from kgen.tracer.custom import TraceFailure, trace_call

        args, kwargs = tuple(node.arguments.args), dict(node.arguments.kwargs)
        for key, mask in _runtime_masks(layer, node).items():
            if kwargs.get(key) is None:
                kwargs[key] = mask
        try:
            sub, tensors = trace_call(
                # Lambdas inside a layer class are that class's code, not the file's
                layer,
                args,
                kwargs,
                lambda: _CallTracer(self.has_lowering, trace_lambdas=True),
            )
        except TraceFailure as exc:
            self.untraceable(attrs, exc)
            return
        if isinstance(layer, keras.layers.Lambda):  # named after its function, if it has one
            fn_name = getattr(layer.function, "__name__", "<lambda>")
            sub.graph["activation"] = None if fn_name == "<lambda>" else fn_name
        attrs.update(kind="traced", subgraph=sub, traced_inputs=[self.ref(t) for t in tensors])

    def add_mask_producers(self, value) -> None:
        """Trace the op nodes computing a Keras mask that no recorded argument uses."""
        for kt in keras_tensors(value):
            op, node_index, _ = kt._keras_history
            if self.node_id(op, node_index) in self.graph:
                continue
            knode = op._inbound_nodes[node_index]
            self.add_mask_producers(list(knode.arguments.keras_tensors))
            self.add_node(knode)


class _CallTracer(CallTraceMixin, _Tracer):
    """Builds the sub-graph of one traced Keras 3 ``call()`` (see tracer/custom.py)."""

    source = "keras3"
    layer_class = keras.layers.Layer

    def op_of(self, node):
        return node.operation

    def is_op(self, op) -> bool:
        return not isinstance(op, keras.layers.Layer)

    def op_base_name(self, op) -> str:
        return op_name(op)

    def outputs_of(self, node) -> list:
        return list(node.outputs)

    def tensor_shape(self, t) -> tuple:
        return _shape(t)

    def tensor_dtype(self, t) -> str:
        return str(t.dtype)

    def variable_value(self, v):
        return np.asarray(keras.ops.convert_to_numpy(v))

    def is_builtin(self, layer) -> bool:
        # keras.ops.arange & co., recorded as ops while tracing (tracer/custom.py)
        return isinstance(layer, Creation) or super().is_builtin(layer)

    def add_node(self, node) -> None:
        if not self.add_variable_node(node):
            super().add_node(node)


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
            layer._call_signature,
            layer._call_context_args,
            node.arguments.args,
            node.arguments.kwargs,
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
    return {k: v for k, v in found.items() if keras_tensors(v)}


def trace_keras3(model, has_lowering=None, *, trace_lambdas=False, input_specs=None):
    if _is_graph_model(model) or not isinstance(model, keras.Model):
        return _Tracer(has_lowering, trace_lambdas).trace(model)
    return _trace_subclassed(model, has_lowering, trace_lambdas, input_specs)


def _trace_subclassed(model, has_lowering, trace_lambdas, input_specs) -> nx.DiGraph:
    """A ``keras.Model`` subclass with its own ``call()``: traced like a custom layer,
    on symbolic inputs of the given shapes."""
    from kgen.tracer.custom import TraceFailure, trace_call

    if not input_specs:
        raise TraceError(
            f"model {model.name!r} ({type(model).__name__}) is a subclassed model: "
            "give its input shapes (input_shape=, or kgen.convert(model, input_shapes=...))"
        )
    if not model.built:
        raise TraceError(f"model {model.name!r} is not built: call it once on data first")
    inputs = tuple(keras.Input(batch_shape=shape, dtype=dtype) for shape, dtype in input_specs)
    if has_lowering is None:
        from kgen.codegen.registry import has_lowering  # the tracer needs an answer here
    try:
        graph, _ = trace_call(model, inputs, {}, lambda: _CallTracer(has_lowering, trace_lambdas))
    except TraceFailure as exc:
        raise TraceError(
            f"cannot trace the call() of model {model.name!r} ({type(model).__name__}): {exc}"
        ) from None
    graph.graph.update(class_name=type(model).__name__, subclassed_model=True)
    if len(inputs) == 1:  # called on one array, not a list of one
        graph.graph["input_structure"] = "single"
    return graph
