"""Lower a traced graph: every node becomes a :class:`~kgen.codegen.ir.Lowered`.

Unsupported classes and configs are collected across the whole graph (nested models
included) and raised together in one :class:`~kgen.errors.UnsupportedError`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from kgen.codegen import ir
from kgen.codegen.registry import SOURCE_NAMES, Unsupported, lookup, lookup_class
from kgen.errors import UnsupportedError
from kgen.tracer.graph import topological_nodes

__all__ = ["LoweredGraph", "LoweredNode", "lower"]


@dataclass
class LoweredNode:
    id: str
    node: ir.Node
    lowered: ir.Lowered | None  # None for input nodes
    n_outputs: int
    calls_of_layer: int  # how many nodes share this node's layer
    subclass: LoweredGraph | None = None
    binds: list | None = None  # a folded block: the refs its outputs stand for


@dataclass
class LoweredGraph:
    graph: nx.DiGraph
    nodes: list[LoweredNode] = field(default_factory=list)
    children: list[LoweredGraph] = field(default_factory=list)  # nested model classes
    block: Any = None  # a folded block of its parent (codegen.fold.Block), else None
    folded: bool = False  # passed through codegen.fold: write it as folded code reads

    @property
    def name(self) -> str:
        return self.block.prefix if self.block is not None else self.graph.graph["name"]


def walk(lowered: LoweredGraph):
    """Every node of ``lowered`` and of the graphs under it (nested models, traced
    layers, folded blocks), each graph once."""
    seen: set[int] = set()

    def visit(lg):
        if id(lg) in seen:
            return
        seen.add(id(lg))
        for lnode in lg.nodes:
            yield lnode
            if lnode.subclass is not None:
                yield from visit(lnode.subclass)
        for child in lg.children:
            yield from visit(child)

    return visit(lowered)


class _Problems:
    def __init__(self):
        self.unsupported: dict[str, list[str]] = defaultdict(list)  # class -> layer names
        self.untraceable: dict[str, str] = {}  # class -> why tracing its call() failed
        self.configs: list[str] = []

    def raise_if_any(self) -> None:
        if not self.unsupported and not self.configs:
            return
        lines = []
        if self.unsupported:
            total = sum(len(v) for v in self.unsupported.values())
            lines.append(
                f"{total} layer(s) of {len(self.unsupported)} unsupported class(es): "
                + "; ".join(
                    f"{cls} x{len(names)} ({_names(names)})"
                    + (
                        f", whose call() kgen could not trace ({self.untraceable[cls]})"
                        if cls in self.untraceable
                        else ""
                    )
                    for cls, names in sorted(self.unsupported.items())
                )
            )
        if self.configs:
            lines.append(f"{len(self.configs)} unsupported config(s): " + "; ".join(self.configs))
        if "Lambda" in self.unsupported:
            lines.append(
                "a Lambda is traced only in kgen.convert on a live model; from a file kgen "
                "never runs its code: move it into a layer class (see README, 'Custom layers')"
            )
        lines.append(
            "To convert a layer kgen lacks, register a lowering for its class with "
            "@kgen.codegen.register in a module of yours and pass it with --plugin MODULE "
            "(see README, 'Custom layers')"
        )
        raise UnsupportedError(" | ".join(lines))


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def _display_class(node: ir.Node) -> str:
    if node.kind == "op":
        return f"keras.ops {node.class_name}"
    if node.kind == "tfop":
        return f"TFOpLambda tf.{node.class_name}"
    if not node.builtin and lookup(node.kind, node.class_name) is not None:
        # Same name as a Keras class kgen lowers, but not that class (or it wraps a
        # class that is not Keras's own): say so, the bare name would read as a bug.
        own = node.module.startswith(("keras.", "tf_keras."))
        what = "wraps a layer that is not Keras's own" if own else f"from {node.module}"
        return f"{node.class_name} ({what})"
    return node.class_name


def lower(graph: nx.DiGraph) -> LoweredGraph:
    problems = _Problems()
    result = _lower(graph, problems)
    problems.raise_if_any()
    return result


def _lower(graph: nx.DiGraph, problems: _Problems) -> LoweredGraph:
    out = LoweredGraph(graph)
    children: dict[str, LoweredGraph] = {}  # nested model name -> its class
    calls = defaultdict(int)
    for nid in graph.nodes:
        calls[graph.nodes[nid]["name"]] += 1
    for nid in topological_nodes(graph):
        data = graph.nodes[nid]
        node = ir.Node.from_graph(graph, nid)
        n_out = len(data["output_shapes"])
        lnode = LoweredNode(nid, node, None, n_out, calls[node.name])
        out.nodes.append(lnode)
        if node.kind == "input":
            continue
        if node.kind in ("model", "traced"):
            sub = data["subgraph"]
            # A nested model is one class however often it is called; each traced call
            # is lowered on its own, and render shares the classes that come out alike.
            key = node.name if node.kind == "model" else nid
            if key not in children:
                children[key] = _lower(sub, problems)
                out.children.append(children[key])
            lnode.subclass = children[key]
            args = (
                _model_call_args(sub, node)
                if node.kind == "model"
                else tuple(data["traced_inputs"])
            )
            lnode.lowered = ir.Lowered(
                expr=ir.Call(ir.SELF, args, {"train": ir.TRAIN}),
                module=ir.Module(ir.LocalClass("")),  # class name filled in by render
            )
            continue
        if node.kind == "variable":
            (array,) = node.weights.values()
            lnode.lowered = ir.Lowered(
                expr=ir.Param(
                    node.name,
                    tuple(array.shape),
                    str(array.dtype),
                    trainable=data.get("trainable", True),
                ),
                variables={"": array},  # render files it under the param's name
            )
            continue
        spec = lookup_class(
            node.kind,
            node.class_name,
            builtin=node.builtin,
            module=node.module,
            registered_name=node.registered_name,
        )
        if spec is None:
            shown = _display_class(node)
            problems.unsupported[shown].append(node.name)
            if data.get("trace_error"):
                problems.untraceable.setdefault(shown, data["trace_error"])
            continue
        if node.config_skipped:  # a plug-in's class whose get_config() raised
            problems.configs.append(
                f"{node.name!r} ({node.class_name}): {node.config_skipped}, so its config "
                "cannot be read"
            )
            continue
        if node.source not in spec.sources:
            only = " and ".join(SOURCE_NAMES.get(s, s) for s in spec.sources)
            problems.configs.append(
                f"{node.name!r} ({node.class_name}): kgen lowers this class for {only} models only"
            )
            continue
        config_problems = spec.check_config(node.config) if node.call_index == 0 else []
        if config_problems:
            problems.configs.extend(
                f"{node.name!r} ({node.class_name}): {p}" for p in config_problems
            )
            continue
        if node.kwargs.get("mask") is not None and "mask" not in spec.handles:
            # Keras passes a mask (Masking, Embedding(mask_zero=True)) to layers whose
            # call takes one; a lowering that ignores it would silently differ.
            problems.configs.append(
                f"{node.name!r} ({node.class_name}): a Keras mask reaches this layer, "
                "which kgen lowers without mask support"
            )
            continue
        try:
            lnode.lowered = spec.fn(node)
        except Unsupported as exc:
            problems.configs.append(f"{node.name!r} ({node.class_name}): {exc.describe()}")
    return out


def _model_call_args(sub: nx.DiGraph, node: ir.Node) -> tuple:
    """Flatten a nested model's call argument into its inputs, in Keras order."""
    specs = sub.graph["inputs"]
    value = node.args[0] if node.args else next(iter(node.kwargs.values()))
    if sub.graph["input_structure"] == "dict" and isinstance(value, dict):
        return tuple(value[s.name] for s in specs)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)
