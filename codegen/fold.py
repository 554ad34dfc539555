"""Block folding: find the repeated blocks of a lowered graph, between lower and render.

A *block* is a run of nodes with one tensor in and one tensor out: a residual block,
an inverted-residual or MBConv block, a dense layer, an Inception cell.  The pass finds
them from the graph's structure and the model's own layer names:

1. **Cut points.**  Walking the nodes in order, a point where exactly one tensor is
   still needed later (the *live* set has one member) cuts the graph.  Between two cuts
   lies a *segment* with one entry and one exit.  A branching block (a shortcut, a
   squeeze-excite gate, a dense layer's concatenation) is one segment; a plain chain is
   a segment per layer.
2. **Names as the hint for boundaries.**  A segment of several layers belongs to the
   block named by their common Keras prefix (``conv2_block1``); a one-layer segment to
   its name's longest prefix that ends in a number-bearing word (``block_1_expand_BN``
   belongs to ``block_1``).  Consecutive segments of one prefix are one block.  A
   branching segment whose layers share no prefix (InceptionV3's ``mixed0``) is a block
   named after its output layer.
3. **Units.**  Inside every block and in the model itself, a chain of layers Keras
   named itself (``conv2d_5 -> batch_normalization_5 -> activation_5``), each feeding
   only the next, that starts with a layer with a kernel, goes on with a normalisation
   and ends with an activation, is a *unit*: InceptionV3's ``conv2d_bn``.  Units carry
   no name prefix, so structure alone finds them; a unit is named after its first
   layer, and its layers inside it follow Keras's own scheme (``conv2d``,
   ``batch_normalization``, ``activation``).

Each block becomes a child :class:`~kgen.codegen.lower.LoweredGraph` with
:attr:`~kgen.codegen.lower.LoweredGraph.block` set, and one ``block`` node that calls
it in the parent.  Whether a block is *kept* is decided by render: blocks whose code
comes out alike (up to literal hyper-parameters) share one ``nn.Module`` class, and a
block no other block is like is written inline again, as if never folded.  Numerics do
not change: a block runs the same lowered nodes, in the same order (a unit's nodes move
up to its first one, which only reorders independent branches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kgen.codegen import ir
from kgen.codegen.lower import LoweredGraph, LoweredNode
from kgen.tracer.graph import Dim, Ref, iter_refs

__all__ = ["Block", "expr_refs", "fold"]


@dataclass
class Block:
    """What makes a :class:`LoweredGraph` a folded block of its parent."""

    prefix: str  # the block's Keras name: its submodule name in the parent
    entry: Ref  # the one tensor it takes
    exit: Ref  # the one tensor it returns
    names: dict  # inner layer name -> its name inside the block (submodule and local)
    parent: LoweredGraph | None = None
    unit: str = ""  # a unit (see the module doc): its class name stem, as ``ConvBN``


def expr_refs(value):
    """Every :class:`Ref` an IR value reads, in order (a ``Dim``'s too)."""
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, Dim):
        for ref, _ in value.sizes:
            yield from expr_refs(ref)
    elif isinstance(value, (ir.Call, ir.Module)):
        yield from expr_refs(value.fn)
        yield from expr_refs(value.args)
        yield from expr_refs(value.kwargs)
    elif isinstance(value, ir.BinOp):
        yield from expr_refs(value.left)
        yield from expr_refs(value.right)
    elif isinstance(value, ir.Neg):
        yield from expr_refs(value.value)
    elif isinstance(value, ir.Index):
        yield from expr_refs(value.value)
        yield from expr_refs(value.key)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from expr_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from expr_refs(v)
    elif isinstance(value, slice):
        yield from expr_refs((value.start, value.stop, value.step))


def _reads(lnode: LoweredNode) -> set[Ref]:
    low = lnode.lowered
    if low is None:
        return set()
    return set(expr_refs(low.expr)) | set(expr_refs(low.module))


def fold(lg: LoweredGraph) -> LoweredGraph:
    """Fold ``lg`` and its nested model classes in place; returns ``lg``."""
    for child in lg.children:
        if not child.graph.graph.get("traced") and child.block is None:
            fold(child)
    if lg.graph.graph.get("traced") or lg.block is not None:
        return lg
    lg.folded = True
    segments = _segments(lg)
    outputs = {ref for _, ref in iter_refs(lg.graph.graph["outputs"])}
    blocks = _blocks(segments, outputs)
    if blocks:
        _replace(lg, blocks)
    for child in [c for c in lg.children if c.block is not None]:
        _fold_units(child, {child.block.exit})
    _fold_units(lg, outputs)
    return lg


def _replace(lg: LoweredGraph, blocks: list[tuple]) -> None:
    """Put one call node in place of each block's nodes (where its first node was)."""
    nodes: list[LoweredNode] = []
    in_block = {id(n): b for b in blocks for n in b[1]}
    done = set()
    for lnode in lg.nodes:
        key = in_block.get(id(lnode))
        if key is None:
            nodes.append(lnode)
            continue
        if id(key) in done:
            continue
        done.add(id(key))
        nodes.append(_block_node(lg, *key))
    lg.nodes = nodes


#: Layers a unit starts with (they hold a kernel), by Keras class name, with the stem
#: of the unit's class name.
_UNIT_HEADS = {
    "Conv1D": "Conv",
    "Conv2D": "Conv",
    "Conv3D": "Conv",
    "Conv1DTranspose": "ConvTranspose",
    "Conv2DTranspose": "ConvTranspose",
    "Conv3DTranspose": "ConvTranspose",
    "DepthwiseConv1D": "DepthwiseConv",
    "DepthwiseConv2D": "DepthwiseConv",
    "SeparableConv1D": "SeparableConv",
    "SeparableConv2D": "SeparableConv",
    "Dense": "Dense",
}
#: Layers a unit goes on with, and what they add to its class name.
_UNIT_FOLLOWERS = {
    "BatchNormalization": "BN",
    "LayerNormalization": "LN",
    "GroupNormalization": "GN",
    "Activation": "",
    "ReLU": "",
    "LeakyReLU": "",
    "ELU": "",
    "Softmax": "",
}


def _fold_units(lg: LoweredGraph, outputs: set) -> None:
    """Fold the units of ``lg`` (see the module doc); ``outputs``: what the graph gives
    back, which may end a unit but never sit inside one."""
    reads = {id(lnode): _reads(lnode) for lnode in lg.nodes}
    readers: dict[Ref, int] = {}
    by_ref = {}  # a tensor -> the first node that reads it and nothing else
    for lnode in lg.nodes:
        for ref in reads[id(lnode)]:
            readers[ref] = readers.get(ref, 0) + 1
        if len(reads[id(lnode)]) == 1:
            by_ref.setdefault(next(iter(reads[id(lnode)])), lnode)
    units = []
    for lnode in lg.nodes:
        if not _unit_member(lnode, _UNIT_HEADS) or len(reads[id(lnode)]) != 1:
            continue
        chain = [lnode]
        while True:
            out = Ref(chain[-1].id, 0)
            nxt = by_ref.get(out)
            if out in outputs or readers.get(out) != 1 or nxt is None:
                break
            if not _unit_member(nxt, _UNIT_FOLLOWERS):
                break
            chain.append(nxt)
        kinds = [_UNIT_FOLLOWERS[n.node.class_name] for n in chain[1:]]
        if not any(kinds) or kinds[-1]:  # a conv-BN-activation unit, at the least
            continue
        (entry,) = reads[id(lnode)]
        stem = _UNIT_HEADS[lnode.node.class_name] + "".join(kinds)
        units.append(("", chain, entry, Ref(chain[-1].id, 0), lnode.node.name, stem))
    if units:
        _replace(lg, units)


def _unit_member(lnode: LoweredNode, classes: dict) -> bool:
    node = lnode.node
    return (
        node.kind == "layer"
        and node.builtin
        and node.class_name in classes
        and lnode.n_outputs == 1
        and _foldable(lnode)
        and lnode.subclass is None
        and _auto_named(node)
    )


def _segments(lg: LoweredGraph) -> list[tuple[Ref, list[LoweredNode], Ref]]:
    """``(entry, nodes, exit)`` for every stretch between two single-tensor cuts."""
    order = lg.nodes
    last_use: dict[Ref, int] = {}
    for i, lnode in enumerate(order):
        for ref in _reads(lnode):
            last_use[ref] = i
    # a model output (a verify tap, a feature map) must come out of no block but as its
    # exit; it does not keep a cut from happening later (the parent keeps it in a name)
    made_at = {lnode.id: i for i, lnode in enumerate(order)}
    for _, ref in iter_refs(lg.graph.graph["outputs"]):
        last_use[ref] = max(last_use.get(ref, -1), made_at.get(ref.node, -1))
    live: set[Ref] = set()
    segments, current, entry = [], [], None
    for i, lnode in enumerate(order):
        live = {r for r in live if last_use.get(r, -1) > i}
        for k in range(lnode.n_outputs):
            ref = Ref(lnode.id, k)
            if last_use.get(ref, -1) > i:
                live.add(ref)
        if lnode.lowered is not None:
            current.append(lnode)
        if len(live) == 1:
            (cut,) = live
            if current and entry is not None:
                segments.append((entry, current, cut))
            current, entry = [], cut
        elif lnode.lowered is None:  # an input that is not alone: nothing folds across it
            current, entry = [], None
    return segments


def _foldable(lnode: LoweredNode) -> bool:
    low = lnode.lowered
    if low is None or isinstance(low.expr, ir.Param):
        return False
    return lnode.calls_of_layer == 1  # a shared layer's variables must stay in one place


def _words(name: str) -> list[str]:
    return str(name).split("_")


def _common_prefix(names: list[str]) -> str:
    """The longest ``_``-word prefix that is a proper prefix of every name."""
    words = [_words(n) for n in names]
    common = []
    for column in zip(*words):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    while common and any(len(w) <= len(common) for w in words):
        common.pop()
    return "_".join(common)


def _auto_named(node) -> bool:
    """Whether a layer has the name Keras makes up for an unnamed one (``add_5`` for
    ``inputs + x``): no hint of the block it is in.  Keras's own ``to_snake_case``."""
    base = re.sub(r"\W+", "", str(node.class_name))
    base = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", base)
    base = re.sub(r"([a-z])([A-Z])", r"\1_\2", base).lower()
    return re.fullmatch(rf"{re.escape(base)}(_\d+)?", str(node.name)) is not None


def _chain_prefix(name: str) -> str:
    """The block a one-layer segment belongs to: the longest proper prefix of its name
    whose last word holds a digit, unless what is left is only a number (``conv2d_3``
    is Keras's third ``conv2d``, not layer ``3`` of block ``conv2d``)."""
    words = _words(name)
    for k in range(len(words) - 1, 0, -1):
        rest = words[k:]
        if re.search(r"\d", words[k - 1]) and not (len(rest) == 1 and rest[0].isdigit()):
            return "_".join(words[:k])
    return ""


def _same_block(a: str, b: str) -> bool:
    """One prefix is the other, or the other's start: ``block2a`` and ``block2a_se``."""
    return a == b or a.startswith(b + "_") or b.startswith(a + "_")


def _blocks(segments, outputs: set) -> list[tuple]:
    """Merge segments into ``(prefix, nodes, entry, exit)`` blocks of two layers or more.
    A model output inside a segment keeps it unfolded; one at a segment's exit ends its
    block there."""
    made_outputs = {ref.node for ref in outputs}
    blocks: list[tuple] = []
    run: tuple | None = None  # (prefix, nodes, entry, exit)

    def close():
        if run is not None and len(run[1]) >= 2:
            blocks.append(run)

    for entry, nodes, exit_ in segments:
        hides_output = any(n.id in made_outputs and n.id != exit_.node for n in nodes)
        if hides_output or not all(_foldable(n) for n in nodes):
            close()
            run = None
            continue
        names = [n.node.name for n in nodes if not _auto_named(n.node)]
        if len(names) > 1:
            prefix = _common_prefix(names)
        else:  # one named layer (or one layer): the block its name says it is in
            prefix = _chain_prefix(names[0] if names else nodes[0].node.name)
        if prefix and run is not None and _same_block(run[0], prefix):
            # block2a's squeeze-excite (block2a_se_*) is part of block2a
            run = (min(run[0], prefix, key=len), run[1] + nodes, run[2], exit_)
        else:
            close()
            run = (prefix, list(nodes), entry, exit_) if prefix else None
            # branching, no common prefix: named after its output (InceptionV3's mixed0)
            if not prefix and len(nodes) > 1 and nodes[-1].id == exit_.node:
                blocks.append(("", list(nodes), entry, exit_))
        if exit_ in outputs:  # the parent needs it: the block ends here
            close()
            run = None
    close()
    return blocks


def _inner_names(prefix: str, nodes: list[LoweredNode]) -> dict[str, str]:
    """Each layer's name inside its block: the rest of its Keras name after the block's
    prefix; in a block without one, Keras's own scheme (``conv2d``, ``conv2d_1``...)
    counted from the block's start, so alike blocks get alike names."""
    names, counts = {}, {}
    for lnode in nodes:
        name = lnode.node.name
        if name in names:
            continue
        if prefix and name.startswith(prefix + "_"):
            names[name] = name[len(prefix) + 1 :]
            continue
        base = re.sub(r"_?\d+$", "", name) or "layer"
        k = counts.get(base, 0)
        counts[base] = k + 1
        names[name] = base if k == 0 else f"{base}_{k}"
    return names


def _block_node(
    lg: LoweredGraph, prefix, nodes, entry, exit_, name: str = "", unit: str = ""
) -> LoweredNode:
    """``name``: the block's name where it has no prefix (else its last layer's);
    ``unit``: a unit's class name stem."""
    name = prefix or name or nodes[-1].node.name
    taken = {c.block.prefix for c in lg.children if c.block is not None}
    base, k = name, 1
    while name in taken:  # a prefix that comes back later (block4a ... block4a_add)
        name, k = f"{base}_{k}", k + 1
    inner = LoweredGraph(lg.graph, nodes=list(nodes))
    inner.children = [n.subclass for n in nodes if n.subclass is not None]
    inner.block = Block(name, entry, exit_, _inner_names(prefix, nodes), parent=lg, unit=unit)
    inner.folded = True
    lg.children.append(inner)
    first = nodes[0].node
    node = ir.Node(
        id=f"block:{name}",
        kind="block",
        class_name="Block",
        name=name,
        config={},
        weights={},
        args=(entry,),
        kwargs={},
        input_shapes=list(first.input_shapes[:1]),
        output_shapes=[],
        source=first.source,
    )
    lowered = ir.Lowered(
        expr=ir.Call(ir.SELF, (entry,), {"train": ir.TRAIN}),
        module=ir.Module(ir.LocalClass("")),  # class name filled in by render
    )
    return LoweredNode(node.id, node, lowered, 1, 1, subclass=inner, binds=[exit_])
