"""What a lowering returns: data describing one statement, never a string of code.

A lowering turns one traced node into a :class:`Lowered`:

* ``expr``: the expression that computes the node's output(s), built from
  :class:`Call`, :class:`Sym`, :class:`Ref` (an input tensor), :class:`Index`,
  plain constants and the :data:`TRAIN` / :data:`NOT_TRAIN` flags;
* ``module``: when the node owns a Flax submodule, its constructor (:class:`Module`);
  the expression then calls it through :data:`SELF`;
* ``variables``: that submodule's variables, ``{collection: {name: array}}``
  (nested dicts for submodules of the submodule), already in Flax layout.

Function names (:class:`Sym`) come from lowering code, never from a model file, and
must live in one of the namespaces the generated module imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kgen.tracer.graph import Ref

__all__ = [
    "NAMESPACES",
    "NOT_TRAIN",
    "SELF",
    "TRAIN",
    "BinOp",
    "Call",
    "Index",
    "LocalClass",
    "Lowered",
    "Module",
    "Neg",
    "Node",
    "Param",
    "Ref",
    "Sym",
]

#: alias -> import statement, for every namespace generated code may use.
NAMESPACES = {
    "jax": "import jax",
    "jnp": "import jax.numpy as jnp",
    "lax": "from jax import lax",
    "nn": "import flax.linen as nn",
    "nnx": "from flax import nnx",
    "np": "import numpy as np",
    "einops": "import einops",
    "rt": "from kgen import runtime as rt",
}
_SYM_RE = re.compile(rf"^(?:{'|'.join(NAMESPACES)})(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class Sym:
    """A dotted name in one of :data:`NAMESPACES`, e.g. ``Sym("jnp.concatenate")``."""

    path: str

    def __post_init__(self):
        if not _SYM_RE.match(self.path):
            raise ValueError(f"symbol {self.path!r} is not in an imported namespace")

    @property
    def namespace(self) -> str:
        return self.path.split(".", 1)[0]


@dataclass(frozen=True)
class LocalClass:
    """A module class emitted in the same file (a nested Keras model)."""

    name: str


class _Flag:
    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


#: The node's own submodule, as created from :attr:`Lowered.module`.
SELF = _Flag("SELF")
#: The generated ``train`` argument, and its negation.
TRAIN = _Flag("train")
NOT_TRAIN = _Flag("not train")


@dataclass(frozen=True)
class Call:
    fn: Any  # Sym | LocalClass | SELF | Call (calling a result)
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


_BINOPS = {"+", "-", "*", "/", "**", "//", "%", "@", "<", "<=", ">", ">=", "==", "!="}


@dataclass(frozen=True)
class BinOp:
    """``left <op> right`` with a Python operator; operands are expressions or constants."""

    op: str
    left: Any
    right: Any

    def __post_init__(self):
        if self.op not in _BINOPS:
            raise ValueError(f"unknown operator {self.op!r}")


@dataclass(frozen=True)
class Neg:
    value: Any


@dataclass(frozen=True)
class Index:
    """``value[key]``, e.g. one output of a multi-output call; key is a constant or slice."""

    value: Any
    key: Any


@dataclass(frozen=True)
class Param:
    """A variable the generated class owns itself, not through a submodule: a weight a
    traced custom layer reads in its own ``call`` (``self.add_weight``).  Trainable ones
    are ``self.param(name, ...)``, the others ``self.variable("state", name, ...)``."""

    name: str
    shape: tuple
    dtype: str = "float32"
    trainable: bool = True

    @property
    def collection(self) -> str:
        return "params" if self.trainable else "state"


@dataclass(frozen=True)
class Module:
    """A Flax submodule constructor: ``fn(*args, **kwargs, name=<layer name>)``."""

    fn: Any  # Sym | LocalClass
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass
class Lowered:
    expr: Any
    module: Module | None = None
    variables: dict = field(default_factory=dict)
    comment: str | None = None


@dataclass
class Node:
    """A traced node as a lowering sees it: plain data, no Keras objects."""

    id: str
    kind: str
    class_name: str
    name: str
    config: dict
    weights: dict
    args: tuple
    kwargs: dict
    input_shapes: list
    output_shapes: list
    source: str = "keras3"
    call_index: int = 0
    builtin: bool = True  # the class is Keras's own (see registry.lookup_class)
    module: str = ""  # the class's Python module
    registered_name: str | None = None
    config_skipped: str | None = None  # why get_config() was not recorded

    @classmethod
    def from_graph(cls, graph, node_id: str) -> Node:
        d = graph.nodes[node_id]
        return cls(
            id=node_id,
            kind=d["kind"],
            class_name=d["class_name"],
            name=d["name"],
            config=d["config"],
            weights=d["weights"],
            args=d["args"],
            kwargs=d["kwargs"],
            input_shapes=d["input_shapes"],
            output_shapes=d["output_shapes"],
            source=graph.graph.get("source", "keras3"),
            call_index=d.get("call_index", 0),
            builtin=d.get("builtin", True),
            module=d.get("module", ""),
            registered_name=d.get("registered_name"),
            config_skipped=d.get("config_skipped"),
        )

    # Helpers lowerings use all the time.
    @property
    def input(self) -> Ref:
        """The single tensor input (first positional argument)."""
        first = self.args[0] if self.args else next(iter(self.kwargs.values()))
        if isinstance(first, (list, tuple)) and len(first) == 1:
            first = first[0]
        return first

    @property
    def inputs(self) -> list:
        """The tensor inputs of a merge-style layer called on a list."""
        first = self.args[0]
        return list(first) if isinstance(first, (list, tuple)) else list(self.args)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.input_shapes[0])

    @property
    def output_shape(self) -> tuple:
        return tuple(self.output_shapes[0])

    @property
    def rank(self) -> int:
        """Rank of the first input, batch dim included."""
        return len(self.input_shapes[0])

    def weight(self, name: str) -> np.ndarray:
        return np.asarray(self.weights[name], dtype=np.float32)
