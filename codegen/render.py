"""Render lowered graphs to Python source through one Jinja template.

Python decides every string (names, expressions, literals); the template only places
them.  Every identifier comes from a :class:`~kgen.codegen.names.Namespace` and every
constant goes through :func:`py_literal`, so nothing read from a model file reaches
the source unescaped.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from kgen.codegen import ir
from kgen.codegen.fold import expr_refs
from kgen.codegen.lower import LoweredGraph
from kgen.codegen.names import (
    FLAX_RESERVED,
    Namespace,
    pascal_case,
    sanitize,
    submodule_namespace,
)
from kgen.codegen.nnx import check as check_nnx
from kgen.codegen.nnx import nnx_module
from kgen.tracer.graph import Dim, Ref, iter_refs, map_refs

__all__ = ["Rendered", "py_literal", "render"]

_TEMPLATES = Path(__file__).parent / "templates"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


@dataclass(frozen=True)
class _Code:
    """Already-rendered source text (a variable name or expression)."""

    text: str


def py_literal(value, used: set | None = None) -> str:
    """The one repr filter: a Python literal that evaluates back to ``value``.

    Namespaces the literal needs (``jnp`` for inf/nan, ``np`` for arrays) go into ``used``.
    """
    used = set() if used is None else used
    if isinstance(value, _Code):
        return value.text
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, (int, np.integer)):
        return repr(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            used.add("jnp")
            return "jnp.nan" if math.isnan(v) else ("jnp.inf" if v > 0 else "-jnp.inf")
        return repr(v)
    if value is Ellipsis:
        return "..."
    if isinstance(value, tuple):
        inner = ", ".join(py_literal(v, used) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v, used) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{py_literal(k, used)}: {py_literal(v, used)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, slice):
        parts = ", ".join(py_literal(v, used) for v in (value.start, value.stop, value.step))
        return f"slice({parts})"
    if isinstance(value, np.ndarray):
        dtype = np.dtype(value.dtype).name
        if dtype not in ("float32", "float64", "int32", "int64", "bool", "float16", "uint8"):
            raise TypeError(f"cannot write an array of dtype {dtype} as a literal")
        used.add("np")
        return f"np.array({py_literal(_nested_list(value), used)}, dtype=np.{dtype})"
    if isinstance(value, ir.Sym):
        used.add(value.namespace)
        return value.path
    if isinstance(value, Dim):  # refs already replaced by their variables' _Code
        text = " * ".join(f"{py_literal(r, used)}.shape[{a}]" for r, a in value.sizes)
        if value.num != 1:
            text += f" * {value.num}"
        if value.den != 1:
            text = f"({text}) // {value.den}" if " " in text else f"{text} // {value.den}"
        return text if " " not in text else f"({text})"
    raise TypeError(f"no Python literal for {type(value).__name__}")


def _nested_list(a: np.ndarray):
    if a.ndim == 0:
        return a.item()
    return [_nested_list(x) for x in a]


def _index_key(key, used: set) -> str:
    """Subscript text, with ``a:b:c`` slice syntax."""

    def one(k):
        if isinstance(k, slice):
            parts = ["" if v is None else py_literal(v, used) for v in (k.start, k.stop, k.step)]
            text = f"{parts[0]}:{parts[1]}"
            return text + (f":{parts[2]}" if parts[2] else "")
        return py_literal(k, used)

    if isinstance(key, tuple):
        return ", ".join(one(k) for k in key) if key else "()"
    return one(key)


@dataclass
class _Class:
    name: str
    doc: str
    args: list[str]
    input_shapes: str
    body: list[str]
    returns: str
    variables: dict = field(default_factory=dict)
    used: set = field(default_factory=set)
    fields: list[str] = field(default_factory=list)  # "name: type" dataclass fields
    traced: bool = False  # a custom layer's call(), traced (see tracer/custom.py)
    origin: str = ""  # the traced layer's Python class name
    hyper: dict = field(default_factory=dict)  # the traced layer's plain attributes
    block: bool = False  # a folded block (see codegen/fold.py)
    positional: bool = False  # its calls give the fields by position (else by keyword)
    layer_paths: dict = field(default_factory=dict)  # submodule path -> Keras layer name
    init: list[str] = field(default_factory=list)  # NNX: the lines of __init__
    attrs: set = field(default_factory=set)  # NNX: the submodule attribute names
    stored: list[str] = field(default_factory=list)  # NNX: fields __call__ reads


class _ClassRenderer:
    def __init__(
        self,
        lg: LoweredGraph,
        class_name: str,
        child_classes: dict,
        reserved: set,
        field_values: dict | None = None,
        residual: tuple | None = None,
        api: str = "linen",
    ):
        """``residual``: render a folded block with its residual add under
        ``if self.residual:`` -- ``("tail", None)`` for a block that ends in one,
        ``("guard", line)`` for one without, given the other's guarded line."""
        self.lg = lg
        self.residual = residual
        self.class_name = class_name
        self.child_classes = child_classes  # id(LoweredGraph) -> _Class
        self.field_values = field_values or {}  # id(LoweredGraph) -> {field: literal}
        self.locals = Namespace(reserved | {"self", "train"})
        self.nnx = api == "nnx"
        self.modules = submodule_namespace(digit_first=lg.block is not None)
        if self.nnx:  # attributes: identifiers, clear of nnx.Module's own names
            self.modules = Namespace(suffixed=FLAX_RESERVED | _nnx_reserved())
        self.init_lines: list[str] = []  # NNX: ``self.<name> = <constructor>``
        self.param_names: list[str] = []  # variables the class owns itself
        self.vars: dict[Ref, str] = {}
        self.module_vars: dict[str, str] = {}  # layer name -> local holding a shared module
        self.module_names: dict[str, str] = {}  # layer name (block id) -> its submodule name=
        self.used: set[str] = {"nnx" if self.nnx else "nn"}  # namespaces the class uses
        self.current_module: str | None = None  # SELF while rendering one statement
        self.loop_index: str | None = None  # the counter of loops over blocks
        self.output_refs = {r for _, r in iter_refs(lg.graph.graph["outputs"])}
        self.chain: dict[Ref, str] = {}  # values alone alive when made: they go in `x`
        self.chain_vars: dict[str, str] = {}  # "x"/"y" -> the local holding that chain

    def expr(self, e) -> str:
        if isinstance(e, Ref):
            return self.vars[e]
        if isinstance(e, ir.Call):
            fn = self.current_module if e.fn is ir.SELF else self.expr(e.fn)
            parts = [self.expr(a) for a in e.args]
            parts += [f"{k}={self.expr(v)}" for k, v in e.kwargs.items()]
            return f"{fn}({', '.join(parts)})"
        if isinstance(e, ir.BinOp):
            return f"{self.operand(e.left)} {e.op} {self.operand(e.right)}"
        if isinstance(e, ir.Neg):
            return f"-{self.operand(e.value)}"
        if isinstance(e, ir.Index):
            return f"{self.operand(e.value)}[{_index_key(map_refs(e.key, self._code), self.used)}]"
        if isinstance(e, ir.Sym):
            self.used.add(e.namespace)
            return e.path
        if isinstance(e, ir.LocalClass):
            return e.name
        if e is ir.TRAIN or e is ir.NOT_TRAIN:
            return e.text
        return py_literal(map_refs(e, self._code), self.used)

    def operand(self, e) -> str:
        text = self.expr(e)
        if isinstance(e, (ir.BinOp, ir.Neg)) or (
            isinstance(e, (int, float)) and not isinstance(e, bool) and e < 0
        ):
            return f"({text})"
        return text

    def _code(self, ref: Ref) -> _Code:
        return _Code(self.vars[ref])

    def module_ctor(self, lnode, name: str, name_code: str | None = None) -> str:
        mod = lnode.lowered.module
        if self.nnx:
            mod = nnx_module(mod, lnode.node, lnode.lowered.expr)
        fn = mod.fn
        parts = [self.expr(a) for a in mod.args]
        if isinstance(fn, ir.LocalClass):
            fn = ir.LocalClass(self.child_classes[id(lnode.subclass)].name)
            values = self.field_values.get(id(lnode.subclass), {})
            positional = self.child_classes[id(lnode.subclass)].positional
            parts += [v if positional else f"{k}={v}" for k, v in values.items()]
        parts += [f"{k}={self.expr(v)}" for k, v in mod.kwargs.items()]
        if self.nnx:  # built in __init__, called as an attribute
            parts.append("rngs=rngs")
            self.init_lines.append(f"self.{name} = {self.expr(fn)}({', '.join(parts)})")
            return f"self.{name}"
        parts.append(f"name={name_code or repr(name)}")
        return f"{self.expr(fn)}({', '.join(parts)})"

    def param_statement(self, lnode, variables: dict) -> str:
        """``table = self.param('table', ...)``: a variable the class owns itself."""
        p = lnode.lowered.expr
        pname = self.modules.create(p.name, fallback="weight")
        self.param_names.append(pname)
        var = self.locals.create(p.name, fallback="weight")
        self.vars[Ref(lnode.id, 0)] = var
        (array,) = lnode.lowered.variables.values()
        variables.setdefault(p.collection, {})[pname] = array
        self.used.add("jnp")
        dtype = f"jnp.{np.dtype(p.dtype).name}"
        shape = py_literal(tuple(int(d) for d in p.shape))
        if self.nnx:
            kind = "nnx.Param" if p.trainable else "rt.nnx.State"
            self.used.add("rt" if not p.trainable else "nnx")
            self.init_lines.append(f"self.{pname} = {kind}(jnp.zeros({shape}, {dtype}))")
            return f"{var} = self.{pname}[...]"
        if p.trainable:
            return f"{var} = self.param({pname!r}, nn.initializers.zeros_init(), {shape}, {dtype})"
        return (
            f"{var} = self.variable({p.collection!r}, {pname!r}, jnp.zeros, {shape}, {dtype}).value"
        )

    def _inner(self, node) -> str:
        """A layer's name inside a folded block, else its Keras name."""
        block = self.lg.block
        return block.names.get(node.name, node.name) if block is not None else node.name

    def _nodes(self):
        """The nodes to write, with blocks no other block is like written inline."""
        for lnode in self.lg.nodes:
            sub = lnode.subclass
            if sub is not None and sub.block is not None and id(sub) not in self.child_classes:
                yield from sub.nodes
            else:
                yield lnode

    def statement(self, lnode, body: list, variables: dict, layer_paths: dict) -> None:
        """Write one node's statement into ``body``; file its variables and paths."""
        g = self.lg.graph
        node = lnode.node
        if lnode.lowered is None:
            return
        low = lnode.lowered
        name = self._inner(node)
        if isinstance(low.expr, ir.Param):
            body.append(self.param_statement(lnode, variables))
            return
        module_text = None
        if low.module is not None:
            key = lnode.id if node.kind == "block" else node.name  # a layer, once per layer
            first = key not in self.module_names
            if first:
                self.module_names[key] = self.modules.create(name, fallback="layer")
            mname = self.module_names[key]
            if first and sanitize(name, "layer") in FLAX_RESERVED:
                body.append("# " + _renamed_comment(name))
            if self.nnx:  # one attribute, however many calls
                module_text = self.module_ctor(lnode, mname) if first else f"self.{mname}"
            elif lnode.calls_of_layer > 1:
                if first:
                    mvar = self.locals.create(name, fallback="layer")
                    self.module_vars[node.name] = mvar
                    body.append(f"{mvar} = {self.module_ctor(lnode, mname)}")
                module_text = self.module_vars[node.name]
            else:
                module_text = self.module_ctor(lnode, mname)
            if first:
                child = None
                if lnode.subclass is not None:
                    child = self.child_classes[id(lnode.subclass)]
                node_vars = child.variables if child is not None else low.variables
                for collection, tree in node_vars.items():
                    if tree:
                        variables.setdefault(collection, {})[mname] = tree
                layer_paths[mname] = node.name
                if child is not None:
                    scope = "" if lnode.subclass.block is not None else f"{node.name}/"
                    for path, keras in child.layer_paths.items():
                        layer_paths[f"{mname}/{path}"] = scope + keras
        chained = [
            self.chain[r] for r in (Ref(lnode.id, 0), *(lnode.binds or ())) if r in self.chain
        ]
        if lnode.n_outputs == 1 and chained:
            outs = [self._chain_var(chained[0])]
        else:
            outs = [
                self.locals.create(name if lnode.n_outputs == 1 else f"{name}_{i}", fallback="x")
                for i in range(lnode.n_outputs)
            ]
        for i, var in enumerate(outs):
            self.vars[Ref(lnode.id, i)] = var
        for ref, var in zip(lnode.binds or (), outs):
            self.vars[ref] = var
        self.current_module = module_text
        text = self.expr(low.expr)
        if low.comment:
            body.append("# " + _comment(low.comment))
        if g.graph.get("traced") and "np.array([" in text:
            origin = sanitize(g.graph.get("class_name", "layer"))
            body.append(
                f"# constant array: computed by {origin} from no input (in build() or "
                "from constants), frozen by the trace"
            )
        if [text] != outs:  # an identity (a linear Activation) on the x chain: no line
            body.append(f"{', '.join(outs)} = {text}")

    def _call_of(self, lnode):
        """``(class, field values, entry, exit)`` of a kept block's call, else None."""
        sub = lnode.subclass
        if sub is None or sub.block is None or id(sub) not in self.child_classes:
            return None
        values = tuple(sorted(self.field_values.get(id(sub), {}).items()))
        return self.child_classes[id(sub)].name, values, sub.block.entry, sub.block.exit

    def _runs(self, nodes):
        """The nodes, with each run of three or more calls of one block class that differ
        only in their number (``conv4_block2`` ... ``conv4_block6``), each fed by the one
        before, gathered into a list: written as a loop."""
        if self.nnx:  # one attribute per block: no loops over names
            yield from nodes
            return
        run: list = []

        def flush():
            if len(run) >= _MIN_LOOP:
                yield list(run)
            else:
                yield from run
            run.clear()

        for lnode in nodes:
            call = self._call_of(lnode)
            if run and call is not None and self._continues(run, lnode, call):
                run.append(lnode)
                continue
            yield from flush()
            if call is not None and _NUMBERED.fullmatch(lnode.node.name):
                run.append(lnode)
            else:
                yield lnode
        yield from flush()

    def _continues(self, run: list, lnode, call) -> bool:
        prev = self._call_of(run[-1])
        a, b = _NUMBERED.fullmatch(run[-1].node.name), _NUMBERED.fullmatch(lnode.node.name)
        return (
            b is not None
            and prev[:2] == call[:2]
            and call[2] == prev[3]  # fed by the block before
            and prev[3] not in self.output_refs  # which is not also a model output
            and (a["head"], a["tail"]) == (b["head"], b["tail"])
            and int(b["n"]) == int(a["n"]) + 1
            and not (len(a["n"]) > 1 and a["n"].startswith("0"))  # block_01: not a count
        )

    def loop(self, run: list, body: list, variables: dict, layer_paths: dict) -> None:
        """``for i in range(2, 7): x = ConvBlock(name=f"conv4_block{i}")(x, train=train)``."""
        for lnode in run:  # names, variables and paths as one statement each would file
            self.statement(lnode, [], variables, layer_paths)
        first, last = run[0], run[-1]
        entry, exit_ = first.subclass.block.entry, last.subclass.block.exit
        var = self.vars[entry]
        if entry not in self.chain:  # the loop carries `x`, unless its entry must live on
            var = self.locals.create("x") if "x" in self.chain_vars else self._chain_var()
        if self.vars[entry] != var:
            body.append(f"{var} = {self.vars[entry]}")
        names = [self.module_names[lnode.id] for lnode in run]  # as sanitized, made unique
        match = _NUMBERED.fullmatch(names[0])
        start = int(match["n"]) if match else 0
        numbered = [f"{match['head']}{start + k}{match['tail']}" for k in range(len(run))]
        if not match or names != numbered:  # BlockGroup3__block_1 is BlockGroup3_block_1
            for lnode, name in zip(run, names):
                body.append(f"{var} = {self.module_ctor(lnode, name)}({var}, train=train)")
        else:
            if self.loop_index is None:
                self.loop_index = self.locals.create("i")
            index = self.loop_index
            name = f'f"{match["head"]}{{{index}}}{match["tail"]}"'
            ctor = self.module_ctor(first, "", name_code=name)
            stop = start + len(run)
            bounds = f"{stop}" if start == 0 else f"{start}, {stop}"
            body.append(f"for {index} in range({bounds}):")
            body.append(f"    {var} = {ctor}({var}, train=train)")
        for lnode in run:
            self.vars[Ref(lnode.id, 0)] = var
        self.vars[exit_] = var

    def _chain_var(self, which: str = "x") -> str:
        """The local that holds the ``x`` (or ``y``) chain of :func:`_chain`."""
        if which not in self.chain_vars:
            self.chain_vars[which] = self.locals.create(which)
        return self.chain_vars[which]

    def render(self) -> _Class:
        g = self.lg.graph
        block = self.lg.block
        args = []
        if block is not None:
            args.append(self._chain_var())
            self.vars[block.entry] = args[0]
        else:
            for spec in g.graph["inputs"]:
                var = self.locals.create(spec.name, key=Ref(spec.node, 0), fallback="x")
                self.vars[Ref(spec.node, 0)] = var
                args.append(var)
                if var == "x":  # the x chain starts where every input is dead: reuse it
                    self.chain_vars["x"] = var
        body: list[str] = []
        variables: dict = {}
        layer_paths: dict = {}
        items = list(self._runs(self._nodes()))
        main_exit, tail = None, None
        if self.residual is not None:
            if self.residual[0] == "tail":
                tail = items.pop()
                main_exit = _residual_tail(self.lg)
            else:
                main_exit = block.exit
        if self.lg.folded:
            outputs = [block.exit] if block is not None else g.graph["outputs"]
            if main_exit is not None:  # the input lives to the end: the path is in y
                outputs = [block.entry, main_exit]
            self.chain = _chain(items, outputs, [block.entry] if block is not None else ())
        for item in items:
            if isinstance(item, list):
                self.loop(item, body, variables, layer_paths)
            else:
                self.statement(item, body, variables, layer_paths)
        outputs = block.exit if block is not None else g.graph["outputs"]
        if isinstance(outputs, list):  # several outputs come back as a tuple
            outputs = tuple(outputs)
        if main_exit is not None:
            path = self.vars[main_exit]
            line = self.residual[1]
            if tail is not None:
                line = f"{path} = {self.expr(tail.lowered.expr)}"
            body += ["if self.residual:", f"    {line}"]
            returns = path
        else:
            returns = py_literal(map_refs(outputs, self._code), self.used)
        if block is not None:
            return _Class(
                name=self.class_name,
                doc="",  # written once the blocks alike are known
                args=args,
                input_shapes="",
                body=body,
                returns=returns,
                variables=variables,
                used=self.used,
                block=True,
                layer_paths=layer_paths,
                init=self.init_lines,
                attrs={*self.module_names.values(), *self.param_names},
            )
        shapes = tuple(tuple(s.shape) for s in g.graph["inputs"])
        kind = g.graph.get("class_name", "Functional")
        traced = bool(g.graph.get("traced"))
        if traced:
            module = ".".join(sanitize(p) for p in str(g.graph.get("module", "")).split("."))
            activation = g.graph.get("activation")
            what = f"Keras layer class {sanitize(kind)}"
            if g.graph.get("subclassed_model"):
                what = f"Keras model class {sanitize(kind)}"
            if kind == "Lambda" and not activation:
                what = "Keras Lambda layer"
            elif activation and kind == "Lambda":
                what, kind = f"Keras Lambda of function {sanitize(activation)}", activation
            elif activation:  # a Keras layer traced for its user activation function
                what += f" with activation {sanitize(activation)}"
                kind = f"{kind}_{activation}"
            doc = f"{what}, its call() traced by kgen.\n\n    From {module}.\n    "
        else:
            doc = (
                f"Keras {sanitize(kind)} model {sanitize(g.graph['name'], 'model')}, "
                "converted by kgen."
            )
        return _Class(
            name=self.class_name,
            doc=doc,
            args=args,
            input_shapes=py_literal(shapes),
            body=body,
            returns=returns,
            variables=variables,
            used=self.used,
            traced=traced,
            origin=str(kind),
            hyper=dict(g.graph.get("hyper", {})),
            layer_paths=layer_paths,
            init=self.init_lines,
            attrs={*self.module_names.values(), *self.param_names},
        )


def _residual_tail(lg: LoweredGraph) -> Ref | None:
    """For a folded block that ends in ``entry + path`` (a residual add), ``path``."""
    block = lg.block
    if block is None or not lg.nodes or lg.nodes[-1].subclass is not None:
        return None
    last = lg.nodes[-1]
    low = last.lowered
    if last.id != block.exit.node or low is None or low.module is not None:
        return None
    expr = low.expr
    if not (isinstance(expr, ir.BinOp) and expr.op == "+"):
        return None
    operands = [expr.left, expr.right]
    if block.entry not in operands or not all(isinstance(o, Ref) for o in operands):
        return None
    path = operands[1] if operands[0] == block.entry else operands[0]
    return path if path != block.entry else None


def _merge_residual(groups: list, render_as) -> list:
    """Merge a group of blocks that end in a residual add with a group that is the same
    but for it (MobileNetV2's block_10 beside block_11): one class, ``residual: bool``.
    ``render_as(lg, residual)`` renders one member the guarded way."""
    blocks = [g for g in groups if g[0][1].block]
    with_add = [g for g in blocks if all(_residual_tail(lg) is not None for lg, _ in g)]
    without = [g for g in blocks if all(_residual_tail(lg) is None for lg, _ in g)]
    merged: dict[int, list] = {}  # id(first group) -> merged group
    gone: set[int] = set()
    for r in with_add:
        guarded = render_as(r[0][0], ("tail", None))
        line = guarded.body[-1].strip()
        for p in without:
            if id(p) in gone:
                continue
            other = render_as(p[0][0], ("guard", line))
            if _alike(guarded, other) is None:
                continue
            members = [(lg, render_as(lg, ("tail", None)), "True") for lg, _ in r]
            members += [(lg, render_as(lg, ("guard", line)), "False") for lg, _ in p]
            first = min(id(r), id(p), key=lambda k: [id(g) for g in groups].index(k))
            merged[first] = members
            gone |= {id(r), id(p)}
            break
    out = []
    for g in groups:
        if id(g) in merged:
            out.append(merged[id(g)])
        elif id(g) not in gone:
            out.append([(lg, cls, None) for lg, cls in g])
    return out


def _chain(items: list, outputs, entry=()) -> dict[Ref, str]:
    """The values that are the only one alive just after they are made, as a block's
    output or a plain chain's next layer is.  Nothing else can still need the previous
    such value, so they can all live in one variable, ``x``, as hand-written code has it;
    in a block, the values alone alive beside its input live in ``y`` (a residual
    path).  ``items``: statements, or lists of block calls that become one loop; ``entry``: a
    block's input, alive from the start."""
    reads, makes = [], []
    for item in items:
        run = item if isinstance(item, list) else [item]
        if isinstance(item, list):
            read = {run[0].subclass.block.entry}
            made = {run[-1].subclass.block.exit}
        else:
            low = item.lowered
            read = set() if low is None else {*expr_refs(low.expr), *expr_refs(low.module)}
            made = {Ref(item.id, k) for k in range(item.n_outputs)} | set(item.binds or ())
        reads.append(read)
        makes.append(made)
    last_use: dict[Ref, int] = {}
    for i, read in enumerate(reads):
        for ref in read:
            last_use[ref] = i
    for _, ref in iter_refs(outputs):
        last_use[ref] = len(items)
    chain, live = {}, set(entry)
    for i, made in enumerate(makes):
        live = {r for r in live if last_use.get(r, -1) > i}
        live |= {r for r in made if last_use.get(r, -1) > i}
        item = items[i]
        if isinstance(item, list) or item.lowered is None or item.n_outputs != 1:
            continue
        if isinstance(item.lowered.expr, ir.Param):
            continue
        if len(live) == 1 and live <= made:
            chain.update(dict.fromkeys(live, "x"))
        elif len(live - set(entry)) == 1 and live - set(entry) <= made:  # a residual path
            chain.update(dict.fromkeys(live - set(entry), "y"))
    return chain


def _renamed_comment(layer_name: str) -> str:
    """Why a submodule is not named after its Keras layer: a name flax reserves
    (see :data:`~kgen.codegen.names.FLAX_RESERVED`)."""
    reserved = sanitize(layer_name, "layer")
    return _comment(f"Keras layer {layer_name!r}: flax reserves the submodule name {reserved}")


def _comment(text: str) -> str:
    """Comment text safe on one line (untrusted text is ascii-escaped)."""
    if re.fullmatch(r"[\w .,:;=+\-/()\[\]'<>]*", text):
        return text
    return ascii(text)


_ENV.filters["py"] = py_literal

#: Block names a loop can count through: plain text around one decimal number.
_NUMBERED = re.compile(r"(?P<head>[A-Za-z_][A-Za-z0-9_]*?)(?P<n>\d+)(?P<tail>[A-Za-z_]*)")
_MIN_LOOP = 3


def _levels(top: LoweredGraph) -> list[list[LoweredGraph]]:
    """Every class-to-be, once, grouped by height: leaves first, the top class last."""
    height: dict[int, int] = {}
    order: list[LoweredGraph] = []

    def visit(lg: LoweredGraph) -> int:
        if id(lg) not in height:
            height[id(lg)] = 1 + max((visit(c) for c in lg.children), default=-1)
            order.append(lg)
        return height[id(lg)]

    visit(top)
    levels: dict[int, list] = {}
    for lg in order:
        levels.setdefault(height[id(lg)], []).append(lg)
    return [levels[h] for h in sorted(levels)]


def _render_classes(top: LoweredGraph, top_name: str, class_names: Namespace, api: str = "linen"):
    """Render every class, children before parents.  Traced calls of one Python class
    whose code comes out the same share one class; when only literal values differ
    (hyper-parameters), those become the shared class's dataclass fields."""
    classes: list[_Class] = []
    by_id: dict[int, _Class] = {}
    field_values: dict[int, dict] = {}
    for level in _levels(top):
        reserved = set(ir.NAMESPACES) | {c.name for c in classes} | {top_name}
        rendered = []
        for lg in level:
            cls = _ClassRenderer(lg, "", by_id, reserved, field_values, api=api).render()
            rendered.append((lg, cls))

        def render_as(lg, residual, reserved=reserved):
            renderer = _ClassRenderer(lg, "", by_id, reserved, field_values, residual, api=api)
            return renderer.render()

        for flagged in _merge_residual(_share(rendered), render_as):
            group = [(lg, cls) for lg, cls, _ in flagged]
            flags = [flag for _, _, flag in flagged]
            lg0, cls = group[0]
            if cls.block and len(group) == 1:
                continue  # a block like no other: its parent writes it inline
            if lg0 is top:
                cls.name = top_name
            elif cls.block:
                cls.name = _block_class_name(
                    [lg.name for lg, _ in group], class_names, lg0.block.unit
                )
                cls.doc = _block_doc([lg for lg, _ in group])
            else:
                base = cls.origin if cls.traced else lg0.name
                cls.name = class_names.create(pascal_case(base), fallback="Model")
                if cls.traced:  # its input sizes are its caller's business
                    cls.input_shapes = ""
            if len(group) > 1:
                local = {c.name: [f.split(":")[0] for f in c.fields] for c in classes}
                cls.fields, values = _fields(cls, [c for _, c in group], local, api)
                if flags[0] is not None:  # blocks with and without the residual add
                    cls.fields.append("residual: bool")
                    values = [{**vals, "residual": flag} for vals, flag in zip(values, flags)]
                if api == "nnx":
                    _nnx_field_reads(cls)
                for (lg, _), vals in zip(group, values):
                    field_values[id(lg)] = vals
                cls.positional = cls.block and not all(
                    _fits(cls.name, vals, lg.name) for (lg, _), vals in zip(group, values)
                )
            for lg, member in group:
                shared = _Class(
                    **{
                        **cls.__dict__,
                        "variables": member.variables,
                        "layer_paths": member.layer_paths,
                    }
                )
                by_id[id(lg)] = shared
            classes.append(cls)
    return classes, by_id


def _fits(class_name: str, values: dict, name: str) -> bool:
    """Whether a block's call, its fields by keyword, fits on one line of the parent."""
    fields = "".join(f"{k}={v}, " for k, v in values.items())
    return len(f"        x = {class_name}({fields}name={name!r})(x, train=train)") <= 100


def _block_class_name(prefixes: list[str], class_names: Namespace, unit: str = "") -> str:
    """``conv2_block1``, ``conv3_block1``... -> ``ConvBlock``: the prefix without its
    numbers; where two kinds of block would get one name, the second is named after
    its first instance.  A unit is named after its layers' kinds (``ConvBN``)."""
    if unit:
        name, k = unit, 2
        while name in class_names:
            name, k = f"{unit}{k}", k + 1
        return class_names.create(name, fallback="Unit")
    base = pascal_case(re.sub(r"\d+", "", prefixes[0]))
    if base in class_names or base == "Model":
        base = pascal_case(prefixes[0])
    return class_names.create(base, fallback="Block")


def _block_doc(members: list[LoweredGraph]) -> str:
    top = members[0].block.parent
    while top.block is not None:
        top = top.block.parent
    model = sanitize(top.name, "model")
    names = [sanitize(m.name, "block") for m in members]
    if members[0].block.unit:  # from all over the model: in Keras's order
        names.sort(key=lambda n: [int(w) if w.isdigit() else w for w in re.split(r"(\d+)", n)])
    which = f"{names[0]} and {names[1]}" if len(names) == 2 else f"{names[0]} to {names[-1]}"
    if members[0].block.unit:
        layers = [sanitize(n.node.class_name, "layer") for n in members[0].nodes]
        summary = f"{len(names)} alike units of the Keras model {model}, folded by kgen."
        chain = " -> ".join(layers)
        named = f"each named after its {layers[0]}:\n    {which}."
        return f"{summary}\n\n    {chain},\n    {named}\n    "
    summary = f"{len(names)} alike blocks of the Keras model {model}, folded by kgen."
    return f"{summary}\n\n    {which}.\n    "


def _tree(cls: _Class) -> tuple[ast.Module, list[bytes]]:
    """The class's code as one parse: NNX's ``__init__`` lines, the body, the return."""
    text = "\n".join([*cls.init, *cls.body, f"return {cls.returns}"]) + "\n"
    return ast.parse(text), [line.encode() for line in text.split("\n")]


_MAX_FIELDS = 16


def _is_literal(node) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return isinstance(node.operand, ast.Constant)
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(_is_literal(e) for e in node.elts)
    return False


@dataclass
class _Site:
    """One literal of the first member that other members hold another value in."""

    node: ast.AST
    keyword: str | None  # the keyword argument it is passed as
    call: str | None  # else the function it is a positional argument of ...
    position: int  # ... at this position
    owner: str | None  # the ``name=`` of the submodule it configures


def _differing(a, b, found: dict, context=(None, None, 0, None)) -> bool:
    """Walk two class bodies together: True if they differ in literal values only
    (recorded in ``found``: first member's node -> (site, other's node)), and never in
    a submodule's ``name``."""
    if _is_literal(a) and _is_literal(b):
        if repr(ast.literal_eval(a)) == repr(ast.literal_eval(b)):
            return True
        if context[0] == "name":
            return False
        found[id(a)] = (_Site(a, *context), b)
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, ast.Assign) and isinstance(a.targets[0], ast.Attribute):
        context = (*context[:3], a.targets[0].attr)  # NNX: self.<submodule> = ...
    if isinstance(a, ast.Call):
        owner = context[3]
        for kw in a.keywords:
            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                owner = kw.value.value
        func = ast.unparse(a.func)
        if not _differing(a.func, b.func, found, (None, None, 0, owner)):
            return False
        if len(a.args) != len(b.args) or len(a.keywords) != len(b.keywords):
            return False
        for i, (x, y) in enumerate(zip(a.args, b.args)):
            if not _differing(x, y, found, (None, func, i, owner)):
                return False
        for x, y in zip(a.keywords, b.keywords):
            if x.arg != y.arg or not _differing(x.value, y.value, found, (x.arg, None, 0, owner)):
                return False
        return True
    for name in a._fields:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, list):
            if not isinstance(y, list) or len(x) != len(y):
                return False
            if not all(
                _differing(u, v, found, context) if isinstance(u, ast.AST) else u == v
                for u, v in zip(x, y)
            ):
                return False
        elif isinstance(x, ast.AST):
            if not _differing(x, y, found, context):
                return False
        elif x != y:
            return False
    return True


def _alike(a: _Class, b: _Class) -> dict | None:
    """Where ``b`` differs from ``a`` (see :func:`_differing`), or None if not alike."""
    if a.args != b.args or a.fields or b.fields:
        return None
    found: dict = {}
    if not _differing(_tree(a)[0], _tree(b)[0], found):
        return None
    return found if len(found) <= _MAX_FIELDS else None


def _shareable(a: _Class, b: _Class) -> bool:
    """Traced classes of one Python class, or folded blocks, may share a class."""
    if a.traced and b.traced:
        return a.doc == b.doc
    return a.block and b.block


def _share(rendered: list) -> list[list]:
    """Group ``(graph, class)`` pairs: traced classes of one Python class, and folded
    blocks, that differ at most in literal values share a group; everything else is a
    group of its own."""
    groups: list[list] = []
    for lg, cls in rendered:
        for group in groups:
            other = group[0][1]
            if _shareable(other, cls) and _alike(other, cls) is not None:
                group.append((lg, cls))
                break
        else:
            groups.append([(lg, cls)])
    return groups


def _fields(
    cls: _Class, members: list[_Class], local: dict | None = None, api: str = "linen"
) -> tuple[list[str], list[dict]]:
    """Turn the literals the members differ in into fields of ``cls``: rewrites its
    body to read ``self.<field>``; returns the field lines and each member's values.
    ``local``: the field names of the classes already written, by class name."""
    tree, lines = _tree(cls)
    diffs = []
    for m in members[1:]:  # _alike on a fresh parse of the first, with node ids of `tree`
        found: dict = {}
        _differing(tree, _tree(m)[0], found)
        diffs.append((found, _tree(m)[1]))
    sites = {}
    for found, _ in diffs:
        for key, (site, _) in found.items():
            sites.setdefault(key, site)
    if not sites:
        return [], [{} for _ in members]
    order = sorted(sites, key=lambda k: (sites[k].node.lineno, sites[k].node.col_offset))

    def text(node, src) -> str:
        row, col, end = node.lineno - 1, node.col_offset, node.end_col_offset
        return src[row][col:end].decode()

    values = {}  # site -> each member's literal text
    for key in order:
        first = text(sites[key].node, lines)
        values[key] = [first] + [
            text(found[key][1], src) if key in found else first for found, src in diffs
        ]
    hypers = [m.hyper for m in members]
    reserved = _field_reserved() if api == "linen" else _nnx_reserved() | {"rngs"} | cls.attrs
    names = Namespace(reserved)
    groups: dict = {}  # values -> (base, [site keys]): literals equal in every member
    for key in order:  # are one field (ConvNeXt's LayerScale dim is its conv's features)
        vals = [ast.literal_eval(v) for v in values[key]]
        base = _attribute_for(vals, hypers) or _base_name(sites[key], local or {})
        groups.setdefault(tuple(values[key]), (base, []))[1].append(key)
    bases = [base for base, _ in groups.values()]
    field_of, fields, member_values = {}, [], [{} for _ in members]
    for vals, (base, keys) in groups.items():
        name = base
        if bases.count(base) > 1:
            owner = sites[keys[0]].owner
            name = _qualified(base, owner)
        fname = names.create(name, fallback="value")
        fields.append(f"{fname}: {type(ast.literal_eval(vals[0])).__name__}")
        for key in keys:
            field_of[key] = fname
        for k, v in enumerate(vals):
            member_values[k][fname] = v
    for key in sorted(order, key=lambda k: (sites[k].node.lineno, sites[k].node.col_offset))[::-1]:
        node = sites[key].node
        row = node.lineno - 1
        line = lines[row]
        lines[row] = (
            line[: node.col_offset] + f"self.{field_of[key]}".encode() + line[node.end_col_offset :]
        )
    decoded = [line.decode() for line in lines[:-1]]  # the text ended with a newline
    n_init = len(cls.init)
    cls.init, cls.body = decoded[:n_init], decoded[n_init:-1]
    cls.returns = decoded[-1][len("return ") :]
    return fields, member_values


def _field_reserved() -> set:
    import flax.linen as nn

    return {"name", "parent", "self", "train"} | {
        n for n in dir(nn.Module) if not n.startswith("_")
    }


def _nnx_field_reads(cls: _Class) -> None:
    """NNX: ``__init__`` reads its fields as arguments; only those that ``__call__`` reads
    are kept as attributes (``cls.stored``)."""
    names = [f.split(":")[0] for f in cls.fields]
    for name in names:
        pattern = re.compile(rf"\bself\.{name}\b")
        cls.init = [pattern.sub(name, line) for line in cls.init]
    body = "\n".join([*cls.body, cls.returns])
    cls.stored = [n for n in names if re.search(rf"\bself\.{n}\b", body)]


def _nnx_reserved() -> set:
    from flax import nnx

    return {"self", "train"} | {n for n in dir(nnx.Module) if not n.startswith("_")}


def _base_name(site: _Site, local: dict) -> str:
    """A field's name: the keyword it is passed as, else the parameter name of the
    function it is passed to (``nn.Conv(64, ...)`` -> ``features``), or the field of
    a class of this file it fills (``ConvBN(64, ...)`` -> ``features``)."""
    if site.keyword:
        return site.keyword
    if site.call in local and site.position < len(local[site.call]):
        return local[site.call][site.position]
    return _parameter_name(site.call, site.position) if site.call else "value"


def _parameter_name(call: str, position: int) -> str:
    import importlib
    import inspect

    alias, _, attr = call.partition(".")
    module = ir.NAMESPACES.get(alias)
    if module is None or not attr:
        return "value"
    try:
        words = module.split()
        base = importlib.import_module(words[1])
        obj = base
        if words[0] == "from":  # from jax import lax / from kgen import runtime as rt
            obj = getattr(base, words[3])
        for part in attr.split("."):
            obj = getattr(obj, part)
        # A class's own __init__ (an nnx.Module's metaclass hides it from signature())
        fn = obj.__init__ if isinstance(obj, type) and "__init__" in vars(obj) else obj
        params = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
        ]
        if isinstance(obj, type) and issubclass(obj, object) and params[:1] == ["parent"]:
            params = params[1:]
    except (ImportError, AttributeError, TypeError, ValueError):
        return "value"
    return params[position] if position < len(params) else "value"


def _qualified(base: str, owner: str | None) -> str:
    if not owner:
        return base
    owner = sanitize(owner, "layer", digit_first=True)
    return f"{owner}_{base}" if owner[0].isalpha() else f"{base}_{owner}"


def _attribute_for(values: list, hypers: list[dict]) -> str | None:
    """The layer attribute (``dim``, ``num_heads``) that holds ``values[k]`` in member k."""
    for attr in hypers[0]:
        if all(
            attr in h and type(h[attr]) is type(v) and h[attr] == v for h, v in zip(hypers, values)
        ):
            return attr
    return None


def _metadata_attrs(metadata: dict) -> tuple[list[str], str]:
    """Class-attribute lines and the preprocess mode literal for the top-level class."""
    from kgen.runtime.preprocessing import MODES

    unknown = set(metadata) - {"preprocess", "input_size"}
    if unknown:
        raise ValueError(f"unknown metadata keys {sorted(unknown)}")
    attrs, preprocess = [], ""
    mode = metadata.get("preprocess")
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"unknown preprocess mode {mode!r}; expected one of {MODES}")
        preprocess = py_literal(mode)
        attrs.append(f"preprocess_mode = {preprocess}")
    size = metadata.get("input_size")
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        attrs.append(f"input_size = {py_literal(tuple(int(d) for d in size))}")
    return attrs, preprocess


@dataclass
class Rendered:
    source: str
    class_name: str
    variables: dict
    layer_paths: dict = field(default_factory=dict)  # submodule path -> Keras layer name


def render(
    lowered: LoweredGraph,
    *,
    class_name: str | None = None,
    regenerate: str = "",
    metadata: dict | None = None,
    api: str = "linen",
) -> Rendered:
    """Source (unformatted) and Flax variables of the module for ``lowered``.

    ``api="nnx"`` writes ``nnx.Module`` classes (see ``codegen/nnx.py``) instead of
    linen ones: the same statements, with each layer built in ``__init__``.

    ``metadata`` (catalog applications): ``{"preprocess": mode, "input_size": n}`` adds
    ``preprocess_mode``/``input_size`` class attributes and a ``preprocess`` staticmethod
    to the top-level class.
    """
    class_names = Namespace(set(ir.NAMESPACES))
    top_name = class_names.create(class_name or pascal_case(lowered.name), fallback="Model")
    if api not in ("linen", "nnx"):
        raise ValueError(f"api {api!r}: expected 'linen' or 'nnx'")
    if api == "nnx":
        check_nnx(lowered)
    classes, _ = _render_classes(lowered, top_name, class_names, api)
    top_attrs, preprocess = _metadata_attrs(metadata or {})
    used = sorted(set().union(*(c.used for c in classes), {"rt"} if preprocess else set()))
    imports = sorted(ir.NAMESPACES[a] for a in used if a != "rt")
    template = _ENV.get_template("module.py.j2" if api == "linen" else "module_nnx.py.j2")
    source = template.render(
        model=_comment(repr(str(lowered.name))),
        regenerate=_comment(regenerate) if regenerate else "",
        imports=imports,
        local_imports=[ir.NAMESPACES["rt"]] if "rt" in used else [],
        classes=classes,
        top=top_name,
        top_attrs=top_attrs,
        preprocess=preprocess,
    )
    top = classes[-1]
    return Rendered(source, top_name, top.variables, top.layer_paths)
