"""The traced graph: plain data that everything after the tracer works on.

A traced model is a :class:`networkx.DiGraph`.  It imports nothing from Keras, so
codegen and its tests run without TensorFlow.

Graph attributes (``G.graph``):

``name``            the Keras model name (untrusted text)
``class_name``      ``"Functional"`` or ``"Sequential"``
``source``          ``"keras3"`` or ``"tf_keras"``: which Keras built it
``inputs``          list of :class:`InputSpec`, in Keras order
``input_structure`` ``"single"``, ``"list"`` or ``"dict"``
``outputs``         nested list/dict/:class:`Ref` structure, as Keras returns it

Node attributes (one node per *call*; a shared layer has several nodes):

``kind``            ``"input"``, ``"layer"``, ``"op"`` (Keras 3 Operation) or ``"model"``
``class_name``      e.g. ``"Conv2D"``; ops share class names with layers, so
                    dispatch on ``(kind, class_name)``
``name``            the Keras layer/op name (untrusted text)
``call_index``      0 for the first call of a layer, 1 for the second, ...
``config``          the layer's ``get_config()``, plain Python/numpy values
``weights``         ``{keras_weight_name: np.ndarray}`` in the layer's own order
``args``/``kwargs`` the call arguments with symbolic tensors replaced by :class:`Ref`
``input_shapes``    shapes of the tensor arguments, in flattened argument order
``output_shapes``   shapes of the node's outputs (batch dim ``None``)
``order``           position in Keras's own execution order
``subgraph``        for ``kind == "model"``: the nested model's traced graph

Edge attribute ``uses``: list of ``(argument_path, output_index)`` pairs saying
where the source's output feeds the destination's arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # networkx is a conversion dependency; these types are plain data
    import networkx as nx

__all__ = ["Dim", "InputSpec", "Ref", "iter_refs", "map_refs", "topological_nodes"]


@dataclass(frozen=True)
class Ref:
    """A symbolic tensor: output ``index`` of graph node ``node``."""

    node: str
    index: int = 0


@dataclass(frozen=True)
class Dim:
    """A size known only when the module runs: ``num / den`` times the product of
    ``ref``'s size along ``axis`` for each ``(ref, axis)`` in ``sizes`` (graph inputs).

    A traced custom layer that reads ``ops.shape(x)`` of a ``None`` dimension (the
    batch, a sequence length) gets one of these in place of the number it saw.
    """

    sizes: tuple  # ((Ref, axis), ...)
    num: int = 1
    den: int = 1


@dataclass(frozen=True)
class InputSpec:
    name: str
    node: str
    shape: tuple  # includes the batch dim (usually None)
    dtype: str = "float32"


def iter_refs(value: Any, path: tuple = ()):
    """Yield ``(path, ref)`` for every :class:`Ref` inside a nested structure."""
    if isinstance(value, Ref):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from iter_refs(v, path + (i,))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_refs(v, path + (k,))
    elif isinstance(value, slice):
        for i, v in enumerate((value.start, value.stop, value.step)):
            yield from iter_refs(v, path + (i,))


def map_refs(value: Any, fn):
    """Rebuild a nested structure, replacing each :class:`Ref` by ``fn(ref)``."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, Dim):
        return Dim(tuple((map_refs(r, fn), a) for r, a in value.sizes), value.num, value.den)
    if isinstance(value, tuple):
        return tuple(map_refs(v, fn) for v in value)
    if isinstance(value, list):
        return [map_refs(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_refs(v, fn) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(map_refs(value.start, fn), map_refs(value.stop, fn), map_refs(value.step, fn))
    return value


def topological_nodes(graph: nx.DiGraph) -> list[str]:
    """Nodes in a dependency order that is stable: ties follow Keras's own order."""
    import networkx as nx

    return list(nx.lexicographical_topological_sort(graph, key=lambda n: graph.nodes[n]["order"]))
