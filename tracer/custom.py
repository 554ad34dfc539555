"""Trace into a layer kgen has no lowering for: its own ``call()``, on fresh symbolic
inputs, recorded as a sub-graph of the layers and ops it uses (``keras.ops`` in Keras 3,
TF functions as ``TFOpLambda`` nodes in tf.keras; each Keras's tracer supplies a small
framework adapter, :class:`Keras3` here and ``_TfKeras`` in tracer/tf_keras.py).

A custom layer (keras-hub's ``TransformerEncoder``, a keras.io example's
``TransformerBlock``, a user's block) is usually built from Keras layers and ops that
kgen lowers.  Calling ``layer.call`` on ``keras.Input`` tensors records each sub-layer
call and op as a graph node, exactly as building a functional model does.  The result
is emitted as its own ``nn.Module`` class named after the Python class.

* **Variables the layer reads itself** (``self.add_weight`` used in ``call``: a position
  table, a class token, a scale) are swapped for symbolic inputs while tracing, so they
  become ``variable`` nodes -- params of the traced class under their Keras names --
  and are never frozen as constants.
* **Sizes known only at run time** (the batch, a ``None`` sequence length) that the
  layer reads with ``ops.shape`` are found by tracing twice with different stand-in
  sizes: a constant that changes between the two traces is a product of input sizes
  times a fixed ratio, and becomes a :class:`~kgen.tracer.graph.Dim`, read from the
  array's shape when the generated module runs.
* **Sub-layers** are named by the attribute that holds them (``self.att`` -> ``att``),
  as Keras names them in a ``.keras`` file, so instances of one class trace to the
  same code and share one generated class.
* ``training`` is left to its default, so sub-layers that act only in training
  (``Dropout``) follow the generated ``train`` flag; a Python ``if training:`` in the
  layer's own code is traced at inference.

Tracing never changes the model: attributes swapped for the trace are put back, and
the sub-layer call nodes the trace added are dropped again.  See docs/tracing.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import itertools
import re
from fractions import Fraction

import keras
import networkx as nx
import numpy as np
from keras.src import backend
from keras.src.ops.function import map_graph
from keras.src.ops.operation import Operation

from kgen.tracer.graph import Dim, InputSpec, Ref

__all__ = ["TraceFailure", "trace_call"]

#: Stand-in sizes for dimensions unknown before run time, one per such dimension, for
#: the first and the second trace (distinct primes, so products can be told apart).
_SIZES = ((5, 7, 11, 13, 17, 19, 23, 29), (6, 10, 14, 22, 26, 34, 38, 46))
_MAX_UNKNOWN = len(_SIZES[0])


class TraceFailure(Exception):
    """A layer's ``call()`` could not be traced; the message says why, in one line."""


class Keras3:
    """What tracing needs of one Keras: Keras 3 here, tf.keras in tracer/tf_keras.py."""

    @staticmethod
    def is_tensor(value) -> bool:
        return isinstance(value, keras.KerasTensor)

    @staticmethod
    def shape(t) -> tuple:
        return tuple(t.shape)

    @staticmethod
    def make_input(shape: tuple, dtype):
        return keras.Input(batch_shape=shape, dtype=dtype)

    @staticmethod
    def own_variables(layer) -> list:
        return layer._trainable_variables + layer._non_trainable_variables

    @staticmethod
    def graph(inputs: list, outputs):
        # map_graph, not Function: Function's own check runs the graph from its inputs
        # only, and a Creation node has none.
        return TracedGraph(map_graph(inputs, keras.tree.flatten(outputs))[1], outputs)

    @staticmethod
    def patches(layer) -> list:
        """Context managers held while tracing."""
        return [_output_specs_from_call(layer), _symbolic_creation()]


def trace_call(layer, args: tuple, kwargs: dict, make_tracer, *, framework=Keras3):
    """``(sub-graph, tensors)``: the graph of ``layer.call(*args, **kwargs)``, where
    ``args``/``kwargs`` hold the outer call's symbolic tensors, and those tensors (each
    once) in the order of the sub-graph's inputs.  ``make_tracer()`` gives the graph
    builder for the sub-graph."""
    fw = framework
    tensors = list({id(t): t for t in keras_tensors((args, kwargs), fw)}.values())
    unknown = [
        (i, a) for i, t in enumerate(tensors) for a, d in enumerate(fw.shape(t)) if d is None
    ]
    # Unknown sizes are first taken to be independent; if the call fails that way (a
    # padding mask must have its sequence's length), those at the same axis are equal.
    groupings = [[[k] for k in unknown]]
    by_axis = [[k for k in unknown if k[1] == a] for a in sorted({a for _, a in unknown})]
    if len(by_axis) < len(unknown):
        groupings.append(by_axis)
    failure = None
    for groups in groupings:
        if len(groups) > _MAX_UNKNOWN:
            raise TraceFailure(f"{len(groups)} sizes unknown before run time")
        try:
            graphs = []
            for sizes in _SIZES:
                stand_in = {k: size for group, size in zip(groups, sizes) for k in group}
                graphs.append(_trace_once(layer, args, kwargs, tensors, stand_in, make_tracer, fw))
            solved = {group[0]: pair for group, pair in zip(groups, zip(*_SIZES))}
            return _generalise(graphs, solved), tensors
        except TraceFailure as exc:
            failure = exc
    raise failure


def keras_tensors(value, fw=Keras3) -> list:
    """The symbolic tensors in a nested call argument, in order."""
    if fw.is_tensor(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in keras_tensors(v, fw)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in keras_tensors(v, fw)]
    return []


def _replace(value, fresh: dict):
    if id(value) in fresh:
        return fresh[id(value)]
    if isinstance(value, tuple):
        return tuple(_replace(v, fresh) for v in value)
    if isinstance(value, list):
        return [_replace(v, fresh) for v in value]
    if isinstance(value, dict):
        return {k: _replace(v, fresh) for k, v in value.items()}
    return value


def _argument_names(call, args: tuple, kwargs: dict, fw) -> dict[int, str]:
    """id(KerasTensor) -> the name of the call argument it is (``inputs``, ``mask``...)."""
    try:
        bound = inspect.signature(call).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {f"arg_{i}": a for i, a in enumerate(args)} | dict(kwargs)
    names = {}
    for key, value in bound.items():
        found = keras_tensors(value, fw)
        for i, t in enumerate(found):
            names.setdefault(id(t), key if len(found) == 1 else f"{key}_{i}")
    return names


def _own_variables(layer, fw) -> dict[str, object]:
    """The layer's own variables (not its sub-layers') that its attributes hold:
    attribute name -> variable."""
    own = {id(v): v for v in fw.own_variables(layer)}
    return {k: v for k, v in vars(layer).items() if id(v) in own}


def _trace_once(layer, args, kwargs, tensors, stand_in, make_tracer, fw) -> nx.DiGraph:
    call = layer.call
    names = _argument_names(call, args, kwargs, fw)
    fresh, inputs = {}, []
    for i, t in enumerate(tensors):
        shape = tuple(stand_in.get((i, a), d) for a, d in enumerate(fw.shape(t)))
        fresh[id(t)] = fw.make_input(shape, t.dtype)
        inputs.append((names.get(id(t), f"input_{i}"), fresh[id(t)]))
    variables = _own_variables(layer, fw)
    held = {}
    for attr, v in variables.items():
        held[attr] = fw.make_input(tuple(int(d) for d in v.shape), v.dtype)
    saved_nodes = _node_lists(layer)
    patches = contextlib.ExitStack()
    for patch in fw.patches(layer):
        patches.enter_context(patch)
    try:
        for attr, placeholder in held.items():
            object.__setattr__(layer, attr, placeholder)
        try:
            out = call(*_replace(args, fresh), **_replace(kwargs, fresh))
        except TraceFailure:
            raise
        except Exception as exc:
            raise TraceFailure(_why(exc)) from None
        if not keras_tensors(out, fw):
            raise TraceFailure("call() returns no tensor computed from its inputs")
        flat_in = [t for _, t in inputs] + list(held.values())
        try:
            function = fw.graph(flat_in, out)
        except Exception as exc:
            raise TraceFailure(_why(exc)) from None
        tracer = make_tracer()
        return tracer.trace_function(
            function,
            layer=layer,
            inputs=inputs,
            variables={attr: (variables[attr], held[attr]) for attr in held},
        )
    finally:
        for attr, v in variables.items():
            object.__setattr__(layer, attr, v)
        _restore_node_lists(saved_nodes)
        patches.close()


class Creation(Operation):
    """``keras.ops.arange`` / ``ones`` / ``zeros`` / ``full`` / ``eye`` / ``tri`` called
    on Python numbers while tracing: recorded as an op node, not run eagerly, so that a
    size read from ``ops.shape`` (a causal mask's ``arange(seq_len)``) stays a size."""

    function = ""

    def __init__(self, dtype=None, *, name=None):
        super().__init__(name=name)
        self.dtype = dtype

    def call(self, *args, **kwargs):
        return getattr(backend.numpy, self.function)(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        value = self.call(*args, **kwargs)
        return keras.KerasTensor(
            tuple(value.shape), dtype=keras.backend.standardize_dtype(value.dtype)
        )

    def get_config(self):
        return {"dtype": self.dtype}


_CREATION = {
    name: type(name.capitalize(), (Creation,), {"function": name, "__module__": __name__})
    for name in ("arange", "ones", "zeros", "full", "eye", "tri")
}


@contextlib.contextmanager
def _symbolic_creation():
    """Swap ``keras.ops``'s array-creation functions for symbolic ones while tracing."""
    from keras.src.ops import numpy as knp

    def make(name, original):
        def create(*args, **kwargs):
            if keras_tensors((args, kwargs)):
                return original(*args, **kwargs)
            value = original(*args, **kwargs)  # its dtype, as Keras resolves it
            dtype = keras.backend.standardize_dtype(value.dtype)
            kwargs = {**kwargs, "dtype": dtype}
            return _CREATION[name](dtype).symbolic_call(*args, **kwargs)

        return create

    modules = [m for m in (keras.ops, knp, getattr(keras.ops, "numpy", None)) if m is not None]
    saved = [(m, name, getattr(m, name)) for m in modules for name in _CREATION if hasattr(m, name)]
    originals = {name: getattr(knp, name) for name in _CREATION}
    try:
        for m, name, _ in saved:
            setattr(m, name, make(name, originals[name]))
        yield
    finally:
        for m, name, fn in saved:
            setattr(m, name, fn)


@contextlib.contextmanager
def _output_specs_from_call(layer):
    """Give each sub-layer that is not Keras's own a ``compute_output_spec`` that runs
    its ``call`` (Keras's default), for the trace.  Building a model never asks for it:
    Keras runs ``call`` on backend placeholders there.  A sub-class may inherit one
    that does not take its ``call``'s arguments (keras-hub's
    ``CachedMultiHeadAttention`` and ``cache``)."""
    from keras.src import backend

    patched = []
    for sub in layer._flatten_layers(include_self=False, recursive=True):
        if type(sub).__module__.startswith("keras.") or "compute_output_spec" in sub.__dict__:
            continue

        def spec(*args, _call=sub.call, **kwargs):
            return backend.compute_output_spec(_call, *args, **kwargs)

        object.__setattr__(sub, "compute_output_spec", spec)
        patched.append(sub)
    try:
        yield
    finally:
        for sub in patched:
            sub.__dict__.pop("compute_output_spec", None)


@dataclasses.dataclass
class TracedGraph:
    """What the tracer reads of a traced call's graph (as of a Keras ``Function``)."""

    _nodes_by_depth: dict
    _outputs_struct: object


def _node_lists(layer) -> list:
    """Each sub-layer's call-node lists, with their lengths, to undo the trace's calls."""
    saved = []
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        for attr in (
            "_inbound_nodes",
            "_outbound_nodes",
            "_inbound_nodes_value",
            "_outbound_nodes_value",
        ):
            nodes = sub.__dict__.get(attr)
            if isinstance(nodes, list):
                saved.append((nodes, len(nodes)))
    return saved


def _restore_node_lists(saved: list) -> None:
    for nodes, n in saved:
        del nodes[n:]


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}"


# -- sizes known at run time ---------------------------------------------------------


def _generalise(graphs: list[nx.DiGraph], sizes: dict) -> nx.DiGraph:
    """The first trace, with every constant that differs from the second trace replaced
    by the :class:`Dim` it is, and every stand-in size in a shape back to ``None``."""
    a, b = graphs
    if list(a.nodes) != list(b.nodes) or set(a.edges) != set(b.edges):
        raise TraceFailure("its graph changes with the input sizes")
    spec_nodes = [s.node for s in a.graph["inputs"]]
    # (input position, axis) -> Ref and axis of that input node, in the sub-graph.
    by_input = {key: (Ref(spec_nodes[key[0]]), key[1]) for key in sizes}
    for nid in a.nodes:
        da, db = a.nodes[nid], b.nodes[nid]
        for part in ("args", "kwargs", "config"):
            if part == "config":  # an op's auto-generated name differs in each trace
                db[part] = (
                    {**db[part], "name": da[part].get("name")} if "name" in da[part] else db[part]
                )
            da[part] = _merge(da[part], db[part], sizes, by_input, nid)
        for part in ("input_shapes", "output_shapes"):
            da[part] = [
                tuple(x if x == y else None for x, y in zip(sa, sb))
                for sa, sb in zip(da[part], db[part])
            ]
    a.graph["inputs"] = [
        dataclasses.replace(
            spec, shape=tuple(x if x == y else None for x, y in zip(spec.shape, other.shape))
        )
        for spec, other in zip(a.graph["inputs"], b.graph["inputs"])
    ]
    return a


def _merge(x, y, sizes, by_input, nid):
    if isinstance(x, Ref) or x is y:
        return x
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
        return type(x)(_merge(p, q, sizes, by_input, nid) for p, q in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict) and x.keys() == y.keys():
        return {k: _merge(x[k], y[k], sizes, by_input, nid) for k in x}
    if isinstance(x, slice) and isinstance(y, slice):
        parts = zip((x.start, x.stop, x.step), (y.start, y.stop, y.step))
        return slice(*(_merge(p, q, sizes, by_input, nid) for p, q in parts))
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        if np.shape(x) == np.shape(y) and np.array_equal(x, y):
            return x
        raise TraceFailure(f"a constant of {nid!r} depends on the input sizes")
    if x == y:
        return x
    if isinstance(x, int) and isinstance(y, int) and not isinstance(x, bool):
        dim = _solve(x, y, sizes, by_input)
        if dim is not None:
            return dim
    raise TraceFailure(
        f"a constant of {nid!r} depends on the input sizes in a way kgen cannot express"
    )


def _solve(x: int, y: int, sizes: dict, by_input: dict) -> Dim | None:
    """``x`` and ``y`` as ``ratio * product of unknown sizes``, the same in both traces."""
    keys = list(sizes)
    for n in range(1, len(keys) + 1):
        for subset in itertools.combinations(keys, n):
            pa = np.prod([sizes[k][0] for k in subset])
            pb = np.prod([sizes[k][1] for k in subset])
            ratio = Fraction(x, int(pa))
            if ratio == Fraction(y, int(pb)) and ratio != 0:
                return Dim(tuple(by_input[k] for k in subset), ratio.numerator, ratio.denominator)
    return None


def attribute_names(layer, layer_class=None) -> dict[int, str]:
    """id(sub-layer) -> the attribute of ``layer`` that holds it (``att``, ``blocks_0``),
    leading underscores dropped; public attributes first, Keras's own list last."""
    layer_class = layer_class or keras.layers.Layer
    found: dict[int, str] = {}
    items = sorted(vars(layer).items(), key=lambda kv: (kv[0] == "_layers", kv[0].startswith("_")))
    for attr, value in items:
        if attr.startswith("__") or (attr.startswith("_") and isinstance(value, dict)):
            continue  # TF's tracking tables, not the layer's own attributes
        if attr == "_layers":
            attr = "layers"
        attr = attr.lstrip("_") or "layer"
        if isinstance(value, layer_class):
            found.setdefault(id(value), attr)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, layer_class):
                    found.setdefault(id(v), f"{attr}_{i}")
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, layer_class):
                    found.setdefault(id(v), f"{attr}_{k}")
    return found


def op_name(op) -> str:
    """``GetItem`` -> ``get_item``: a traced op's name, the same in every trace."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(op).__name__).lower()


class CallTraceMixin:
    """Graph-builder methods for the sub-graph of one traced ``call()``, for either
    Keras.  Nodes read against the layer's own code: sub-layers are named by the
    attribute holding them, ops by what they compute (``add``, ``add_1``), inputs by the
    call's argument names, and variables the layer reads itself by their Keras names.
    The framework's builder supplies ``op_of``, ``is_op``, ``op_base_name``,
    ``outputs_of``, ``tensor_shape``, ``tensor_dtype`` and ``variable_value``."""

    layer_class = None  # the framework's Layer class, for attribute names

    def trace_function(self, function, *, layer, inputs, variables) -> nx.DiGraph:
        self.layer_names = attribute_names(layer, self.layer_class)
        self.input_names = {id(t._keras_history[0]): name for name, t in inputs}
        self.variable_inputs = {
            id(ph._keras_history[0]): (attr, v) for attr, (v, ph) in variables.items()
        }
        self.local_calls: dict[int, int] = collections.defaultdict(int)
        self.call_indices: dict[tuple[int, int], int] = {}
        g = self.graph
        g.graph.update(
            name=str(layer.name),
            class_name=type(layer).__name__,
            activation=self.activation_name(layer),
            module=type(layer).__module__,
            source=self.source,
            traced=True,
            hyper=hyper_parameters(layer),
        )
        for depth in sorted(function._nodes_by_depth, reverse=True):
            for node in function._nodes_by_depth[depth]:
                self.add_node(node)
        g.graph["input_structure"] = "list"
        g.graph["inputs"] = [
            InputSpec(
                name=name,
                node=self.ref(t).node,
                shape=self.tensor_shape(t),
                dtype=self.tensor_dtype(t),
            )
            for name, t in inputs
        ]
        g.graph["outputs"] = self.convert(function._outputs_struct)
        return g

    def activation_name(self, layer) -> str | None:
        """The user activation a Keras layer is traced for, if that is why."""
        fn = self.custom_activation(layer) if super().is_builtin(layer) else None
        return getattr(fn, "__name__", None)

    def local_name(self, op) -> str:
        if id(op) in self.input_names:
            return self.input_names[id(op)]
        if id(op) in self.variable_inputs:
            return self.variable_inputs[id(op)][1].name.split("/")[-1].split(":")[0]
        if self.is_op(op):
            return self.op_base_name(op)
        return self.layer_names.get(id(op), op.name)

    def node_id(self, layer, node_index: int) -> str:
        key = (id(layer), node_index)
        if key not in self.ids:
            base = self.local_name(layer)
            k = self.local_calls[id(layer)]
            self.local_calls[id(layer)] += 1
            self.call_indices[key] = k
            if self.is_op(layer):
                self.ids[key] = self.unique_id(base, "_")
            else:
                self.ids[key] = self.unique_id(base if k == 0 else f"{base}#{k}", "~")
        return self.ids[key]

    def node_attrs(self, layer, node_index: int, output_shapes, output_dtypes) -> dict:
        attrs = super().node_attrs(layer, node_index, output_shapes, output_dtypes)
        nid = self.node_id(layer, node_index)
        attrs["name"] = nid if self.is_op(layer) else self.local_name(layer)
        attrs["call_index"] = self.call_indices[(id(layer), node_index)]
        return attrs

    def add_variable_node(self, node) -> bool:
        """Record a placeholder standing for a variable the layer reads itself."""
        op = self.op_of(node)
        if id(op) not in self.variable_inputs:
            return False
        _, v = self.variable_inputs[id(op)]
        nid = self.node_id(op, 0)
        (t,) = self.outputs_of(node)
        attrs = self.node_attrs(op, 0, [self.tensor_shape(t)], [self.tensor_dtype(t)])
        attrs.update(
            kind="variable",
            class_name="Variable",
            trainable=bool(v.trainable),
            weights={attrs["name"]: self.variable_value(v)},
        )
        self.add(nid, attrs)
        return True


def hyper_parameters(layer) -> dict:
    """The layer's public attributes holding a number, string or bool (``num_heads``,
    ``dim``): render names a shared class's fields after them."""
    return {
        k: v
        for k, v in vars(layer).items()
        if not k.startswith("_")
        and k not in ("name", "trainable", "built", "supports_masking")
        and isinstance(v, (bool, int, float, str))
    }
