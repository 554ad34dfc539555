"""Render lowered graphs to Python source through one Jinja template.

Python decides every string (names, expressions, literals); the template only places
them.  Every identifier comes from a :class:`~kgen.codegen.names.Namespace` and every
constant goes through :func:`py_literal`, so nothing read from a model file reaches
the source unescaped.
"""

from __future__ import annotations

import math
import re
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
from kgen.tracer.graph import Ref, map_refs

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


class _ClassRenderer:
    def __init__(self, lg: LoweredGraph, class_name: str, child_classes: dict, reserved: set):
        self.lg = lg
        self.class_name = class_name
        self.child_classes = child_classes  # id(LoweredGraph) -> _Class
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
        if isinstance(fn, ir.LocalClass):
            fn = ir.LocalClass(self.child_classes[id(lnode.subclass)].name)
        parts = [self.expr(a) for a in mod.args]
        parts += [f"{k}={self.expr(v)}" for k, v in mod.kwargs.items()]
        parts.append(f"name={name!r}")
        return f"{self.expr(fn)}({', '.join(parts)})"

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
            body.append(f"{', '.join(outs)} = {text}")
        outputs = g.graph["outputs"]
        if isinstance(outputs, list):  # several outputs come back as a tuple
            outputs = tuple(outputs)
        returns = py_literal(map_refs(outputs, self._code), self.used)
        shapes = tuple(tuple(s.shape) for s in g.graph["inputs"])
        kind = g.graph.get("class_name", "Functional")
        return _Class(
            name=self.class_name,
            doc=f"Keras {sanitize(kind)} model {sanitize(g.graph['name'], 'model')}, "
            "converted by kgen.",
            args=args,
            input_shapes=py_literal(shapes),
            body=body,
            returns=returns,
            variables=variables,
            used=self.used,
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
    classes: list[_Class] = []
    by_id: dict[int, _Class] = {}
    class_names = Namespace(set(ir.NAMESPACES))
    top_name = class_names.create(class_name or pascal_case(lowered.name), fallback="Model")

    def visit(lg: LoweredGraph, name: str | None = None):
        for child in lg.children:
            if id(child) not in by_id:
                visit(child)
        cname = name or class_names.create(pascal_case(lg.name), fallback="Model")
        reserved = set(ir.NAMESPACES) | {c.name for c in classes} | {top_name, cname}
        cls = _ClassRenderer(lg, cname, by_id, reserved).render()
        by_id[id(lg)] = cls
        classes.append(cls)

    visit(lowered, top_name)
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
