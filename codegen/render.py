"""Render lowered graphs to Python source through one Jinja template.

Python decides every string (names, expressions, literals); the template only places
them.  Every identifier comes from a :class:`~kgen.codegen.names.Namespace` and every
constant goes through :func:`py_literal`, so nothing read from a model file reaches
the source unescaped.
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from kgen.codegen import ir
from kgen.codegen.lower import LoweredGraph
from kgen.codegen.names import (
    FLAX_RESERVED,
    Namespace,
    pascal_case,
    sanitize,
    submodule_namespace,
)
from kgen.tracer.graph import Dim, Ref, map_refs

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


class _ClassRenderer:
    def __init__(
        self,
        lg: LoweredGraph,
        class_name: str,
        child_classes: dict,
        reserved: set,
        field_values: dict | None = None,
    ):
        self.lg = lg
        self.class_name = class_name
        self.child_classes = child_classes  # id(LoweredGraph) -> _Class
        self.field_values = field_values or {}  # id(LoweredGraph) -> {field: literal}
        self.locals = Namespace(reserved | {"self", "train"})
        self.modules = submodule_namespace()
        self.vars: dict[Ref, str] = {}
        self.module_vars: dict[str, str] = {}  # layer name -> local holding a shared module
        self.module_names: dict[str, str] = {}  # layer name -> name= of its submodule
        self.used: set[str] = {"nn"}  # namespaces the class body uses
        self.current_module: str | None = None  # SELF while rendering one statement

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

    def module_ctor(self, lnode, name: str) -> str:
        mod = lnode.lowered.module
        fn = mod.fn
        parts = [self.expr(a) for a in mod.args]
        if isinstance(fn, ir.LocalClass):
            fn = ir.LocalClass(self.child_classes[id(lnode.subclass)].name)
            parts += [f"{k}={v}" for k, v in self.field_values.get(id(lnode.subclass), {}).items()]
        parts += [f"{k}={self.expr(v)}" for k, v in mod.kwargs.items()]
        parts.append(f"name={name!r}")
        return f"{self.expr(fn)}({', '.join(parts)})"

    def param_statement(self, lnode, variables: dict) -> str:
        """``table = self.param('table', ...)``: a variable the class owns itself."""
        p = lnode.lowered.expr
        pname = self.modules.create(p.name, fallback="weight")
        var = self.locals.create(p.name, fallback="weight")
        self.vars[Ref(lnode.id, 0)] = var
        (array,) = lnode.lowered.variables.values()
        variables.setdefault(p.collection, {})[pname] = array
        self.used.add("jnp")
        dtype = f"jnp.{np.dtype(p.dtype).name}"
        shape = py_literal(tuple(int(d) for d in p.shape))
        if p.trainable:
            return f"{var} = self.param({pname!r}, nn.initializers.zeros_init(), {shape}, {dtype})"
        return (
            f"{var} = self.variable({p.collection!r}, {pname!r}, jnp.zeros, {shape}, {dtype}).value"
        )

    def render(self) -> _Class:
        g = self.lg.graph
        args = []
        for spec in g.graph["inputs"]:
            var = self.locals.create(spec.name, key=Ref(spec.node, 0), fallback="x")
            self.vars[Ref(spec.node, 0)] = var
            args.append(var)
        body: list[str] = []
        variables: dict = {}
        for lnode in self.lg.nodes:
            node = lnode.node
            if lnode.lowered is None:
                continue
            low = lnode.lowered
            if isinstance(low.expr, ir.Param):
                body.append(self.param_statement(lnode, variables))
                continue
            module_text = None
            if low.module is not None:
                first = node.name not in self.module_names
                if first:
                    self.module_names[node.name] = self.modules.create(node.name, fallback="layer")
                mname = self.module_names[node.name]
                if first and sanitize(node.name, "layer") in FLAX_RESERVED:
                    body.append("# " + _renamed_comment(node.name))
                if lnode.calls_of_layer > 1:
                    if first:
                        mvar = self.locals.create(node.name, fallback="layer")
                        self.module_vars[node.name] = mvar
                        body.append(f"{mvar} = {self.module_ctor(lnode, mname)}")
                    module_text = self.module_vars[node.name]
                else:
                    module_text = self.module_ctor(lnode, mname)
                if first:
                    node_vars = (
                        self.child_classes[id(lnode.subclass)].variables
                        if lnode.subclass is not None
                        else low.variables
                    )
                    for collection, tree in node_vars.items():
                        if tree:
                            variables.setdefault(collection, {})[mname] = tree
            outs = [
                self.locals.create(
                    node.name if lnode.n_outputs == 1 else f"{node.name}_{i}", fallback="x"
                )
                for i in range(lnode.n_outputs)
            ]
            for i, var in enumerate(outs):
                self.vars[Ref(lnode.id, i)] = var
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
            body.append(f"{', '.join(outs)} = {text}")
        outputs = g.graph["outputs"]
        if isinstance(outputs, list):  # several outputs come back as a tuple
            outputs = tuple(outputs)
        returns = py_literal(map_refs(outputs, self._code), self.used)
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
        )


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


def _render_classes(top: LoweredGraph, top_name: str, class_names: Namespace):
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
            cls = _ClassRenderer(lg, "", by_id, reserved, field_values).render()
            rendered.append((lg, cls))
        for group in _share(rendered):
            lg0, cls = group[0]
            if lg0 is top:
                cls.name = top_name
            else:
                base = cls.origin if cls.traced else lg0.name
                cls.name = class_names.create(pascal_case(base), fallback="Model")
                if cls.traced:  # its input sizes are its caller's business
                    cls.input_shapes = ""
            if len(group) > 1:
                cls.fields, values = _fields(cls, [c for _, c in group])
                for (lg, _), vals in zip(group, values):
                    field_values[id(lg)] = vals
            for lg, member in group:
                shared = _Class(**{**cls.__dict__, "variables": member.variables})
                by_id[id(lg)] = shared
            classes.append(cls)
    return classes, by_id


def _tokens(cls: _Class) -> list:
    text = "\n".join([*cls.body, f"return {cls.returns}"]) + "\n"
    return list(tokenize.generate_tokens(io.StringIO(text).readline))


_LITERALS = (tokenize.NUMBER, tokenize.STRING)
_MAX_FIELDS = 16


def _differing(a: list, b: list) -> list[int] | None:
    """Token positions where two classes differ in a literal only, or None if their
    code differs otherwise (or in more than a few literals)."""
    if len(a) != len(b):
        return None
    found = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x.string == y.string:
            continue
        if x.type not in _LITERALS or y.type != x.type:
            return None
        found.append(i)
    return found if len(found) <= _MAX_FIELDS else None


def _share(rendered: list) -> list[list]:
    """Group ``(graph, class)`` pairs: traced classes of one Python class that differ at
    most in literal values share a group; everything else is a group of its own."""
    groups: list[list] = []
    for lg, cls in rendered:
        for group in groups:
            other = group[0][1]
            if (
                cls.traced
                and other.traced
                and cls.doc == other.doc
                and cls.args == other.args
                and _differing(_tokens(other), _tokens(cls)) is not None
            ):
                group.append((lg, cls))
                break
        else:
            groups.append([(lg, cls)])
    return groups


def _fields(cls: _Class, members: list[_Class]) -> tuple[list[str], list[dict]]:
    """Turn the literals the members differ in into fields of ``cls``: rewrites its
    body to read ``self.<field>``; returns the field lines and each member's values."""
    toks = [_tokens(m) for m in members]
    positions = sorted({i for t in toks[1:] for i in _differing(toks[0], t)})
    if not positions:
        return [], [{} for _ in members]
    names = Namespace({"name", "parent"})
    lines = "\n".join([*cls.body, f"return {cls.returns}"]).split("\n")
    fields, per_position = [], []
    by_attribute: dict[str, str] = {}
    for i in positions:
        values = [ast.literal_eval(t[i].string) for t in toks]
        attr = _attribute_for(values, [m.hyper for m in members])
        if attr is not None and attr in by_attribute:
            per_position.append(by_attribute[attr])
            continue
        fname = names.create(attr or _field_name(toks[0], i), fallback="value")
        if attr is not None:
            by_attribute[attr] = fname
        fields.append(f"{fname}: {type(values[0]).__name__}")
        per_position.append(fname)
    for i, fname in sorted(zip(positions, per_position), reverse=True):
        tok = toks[0][i]
        (row, col), (_, end) = tok.start, tok.end
        line = lines[row - 1]
        lines[row - 1] = line[:col] + f"self.{fname}" + line[end:]
    cls.body, cls.returns = lines[:-1], lines[-1][len("return ") :]
    values = [{f: t[i].string for i, f in zip(positions, per_position)} for t in toks]
    return fields, values


def _attribute_for(values: list, hypers: list[dict]) -> str | None:
    """The layer attribute (``dim``, ``num_heads``) that holds ``values[k]`` in member k."""
    for attr in hypers[0]:
        if all(
            attr in h and type(h[attr]) is type(v) and h[attr] == v for h, v in zip(hypers, values)
        ):
            return attr
    return None


def _field_name(toks: list, i: int) -> str:
    """``<submodule or variable>_<keyword>`` for the literal at token ``i``."""
    row = toks[i].start[0]
    line = [t for t in toks if t.start[0] == row]
    owner = line[0].string if line and line[0].type == tokenize.NAME else "value"
    for j, t in enumerate(line[:-2]):
        if t.string == "name" and line[j + 1].string == "=" and line[j + 2].type == tokenize.STRING:
            owner = ast.literal_eval(line[j + 2].string)
    keyword = None
    if i >= 2 and toks[i - 1].string == "=" and toks[i - 2].type == tokenize.NAME:
        keyword = toks[i - 2].string
    return f"{owner}_{keyword}" if keyword else owner


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


def render(
    lowered: LoweredGraph,
    *,
    class_name: str | None = None,
    regenerate: str = "",
    metadata: dict | None = None,
) -> Rendered:
    """Source (unformatted) and Flax variables of the module for ``lowered``.

    ``metadata`` (catalog applications): ``{"preprocess": mode, "input_size": n}`` adds
    ``preprocess_mode``/``input_size`` class attributes and a ``preprocess`` staticmethod
    to the top-level class.
    """
    class_names = Namespace(set(ir.NAMESPACES))
    top_name = class_names.create(class_name or pascal_case(lowered.name), fallback="Model")
    classes, _ = _render_classes(lowered, top_name, class_names)
    top_attrs, preprocess = _metadata_attrs(metadata or {})
    used = sorted(set().union(*(c.used for c in classes), {"rt"} if preprocess else set()))
    imports = sorted(ir.NAMESPACES[a] for a in used if a != "rt")
    template = _ENV.get_template("module.py.j2")
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
    return Rendered(source=source, class_name=top_name, variables=classes[-1].variables)
