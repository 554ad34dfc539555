"""The lowering registry: one lowering per Keras class, registered by a decorator.

Each lowering declares the config fields it understands (``handles``) and the fields it
only accepts at one value (``requires``).  Fields that only matter for training
(initializers, regularizers, constraints, ...) are ignored everywhere.  Any other
field is an error, never silently dropped.

This is also the plug-in API: a user registers a lowering for their own layer class
with the same decorator (see README, "Custom layers").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LoweringSpec",
    "Unsupported",
    "has_lowering",
    "lookup",
    "lookup_class",
    "register",
    "registered",
]

KINDS = ("layer", "op", "tfop")  # tfop: a tf.keras TFOpLambda, keyed by TF symbol
SOURCES = ("keras3", "tf_keras")
SOURCE_NAMES = {"keras3": "Keras 3", "tf_keras": "tf.keras"}  # as users read them

# Config fields with no effect on inference.
_IGNORED = {
    "name",
    "trainable",
    "dtype",
    "activity_regularizer",
    "seed",
    "input_shape",
    "batch_input_shape",
    "build_config",
    "compile_config",
    "autocast",
    "input_dim",
    "input_length",
    "registered_name",
}
_IGNORED_SUFFIXES = re.compile(r"_(initializer|regularizer|constraint)$")


class Unsupported(Exception):
    """Raised by a lowering for a config value it cannot convert."""

    def __init__(self, field: str, value, supported: str):
        super().__init__(field, value, supported)
        self.field, self.value, self.supported = field, value, supported

    def describe(self) -> str:
        return f"{self.field}={self.value!r} is not supported (supported: {self.supported})"


@dataclass(frozen=True)
class LoweringSpec:
    kind: str
    class_name: str
    fn: Callable
    family: str
    handles: frozenset
    requires: dict = field(default_factory=dict)
    sources: tuple = SOURCES
    notes: str = ""
    builtin: bool = True  # one of kgen's own lowerings, for Keras's own class

    def check_config(self, config: dict) -> list[str]:
        """Problems with ``config``: fields this lowering does not understand."""
        problems = []
        for key, value in config.items():
            if key in _IGNORED or _IGNORED_SUFFIXES.search(key) or key in self.handles:
                continue
            if key in self.requires:
                if not _same(value, self.requires[key]):
                    problems.append(
                        f"{key}={_short(value)} is not supported "
                        f"(supported: {_short(self.requires[key])})"
                    )
                continue
            if _is_default_like(value):
                continue
            problems.append(f"unknown config field {key}={_short(value)}")
        # A layer's ``dtype`` is its dtype policy; an op's (Cast, OneHot, ...) is an
        # argument its lowering handles.
        dtype = config.get("dtype") if self.kind != "op" else None
        policy = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if policy not in (None, "float32"):
            problems.append(f"dtype policy {policy!r} is not supported (supported: 'float32')")
        return problems


_REGISTRY: dict[tuple[str, str], LoweringSpec] = {}


def register(
    *class_names: str,
    family: str,
    kind: str = "layer",
    handles=(),
    requires: dict | None = None,
    sources=SOURCES,
    notes: str = "",
    replace: bool = False,
):
    """Register ``fn(node) -> Lowered`` for Keras classes ``class_names``.

    ``kind`` is ``"layer"`` for ``keras.layers.Layer`` subclasses, ``"op"`` for Keras 3
    Operation nodes (``x + 1``, ``keras.ops.mean``), which share class names with layers,
    and ``"tfop"`` for tf.keras ``TFOpLambda`` nodes, keyed by TF symbol (``math.multiply``).
    Registering the same (kind, class) twice is an error unless ``replace=True`` (a
    plug-in deliberately overriding a built-in lowering).

    Lowerings are matched by the class's identity, never by a bare name alone (see
    :func:`lookup_class`): kgen's own lowerings only ever convert Keras's own classes.
    A plug-in names its class by ``"package>Name"`` (Keras's registered name), by
    ``"module.Name"``, or by its bare ``Name``, which matches user classes of that name
    and never a Keras class (unless ``replace=True`` overrides kgen's lowering of it).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")

    def decorator(fn):
        for class_name in class_names:
            key = (kind, class_name)
            if key in _REGISTRY and not replace:
                other = _REGISTRY[key].fn
                raise ValueError(
                    f"{kind} {class_name!r} already has a lowering: "
                    f"{other.__module__}.{other.__qualname__}"
                )
            _REGISTRY[key] = LoweringSpec(
                kind=kind,
                class_name=class_name,
                fn=fn,
                family=family,
                handles=frozenset(handles),
                requires=dict(requires or {}),
                sources=tuple(sources),
                notes=notes,
                builtin=fn.__module__.startswith(_BUILTIN_PREFIX) and not replace,
            )
        return fn

    return decorator


def lookup(kind: str, class_name: str) -> LoweringSpec | None:
    """The lowering registered under ``(kind, class_name)``, or None.

    This is the registry key; to find the lowering of a traced class use
    :func:`lookup_class`, which also checks the class's identity.
    """
    _load_builtin()
    return _REGISTRY.get((kind, class_name))


def lookup_class(
    kind: str,
    class_name: str,
    *,
    builtin: bool = True,
    module: str = "",
    registered_name: str | None = None,
) -> LoweringSpec | None:
    """The lowering for a traced class, found by its identity.

    ``builtin`` says the class is Keras's own (its module is inside ``keras`` or
    ``tf_keras``).  Keras's own classes get the lowering registered under their name,
    built-in or a plug-in's ``replace=True``.  Any other class -- a user's or another
    package's, even one called ``Dense`` or ``RMSNormalization`` -- only gets a plug-in's
    lowering, registered under its registered name, ``module.Name`` or bare name.
    TF symbols (``kind="tfop"``) are names, not classes, and are looked up as they are.
    """
    _load_builtin()
    if builtin or kind == "tfop":
        return _REGISTRY.get((kind, class_name))
    for key in (registered_name, f"{module}.{class_name}", class_name):
        spec = _REGISTRY.get((kind, key)) if key else None
        if spec is not None and not spec.builtin:
            return spec
    return None


def has_lowering(kind: str, class_name: str, **identity) -> bool:
    """Whether :func:`lookup_class` finds a lowering (the tracer's and loader's question)."""
    return lookup_class(kind, class_name, **identity) is not None


def registered() -> list[LoweringSpec]:
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda s: (s.kind, s.family, s.class_name))


_loaded = False
_BUILTIN_PREFIX = "kgen.codegen.lowerings."


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import kgen.codegen.lowerings  # noqa: F401  (registers on import)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _is_default_like(value) -> bool:
    return value is None or value is False or (isinstance(value, (list, tuple, dict)) and not value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
