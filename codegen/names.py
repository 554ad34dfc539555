"""Identifier sanitising, after torch.fx's ``_Namespace``.

Names read from a model file are untrusted.  Every name that reaches generated source
goes through a :class:`Namespace`: characters outside ``[A-Za-z0-9_]`` become ``_``, a
leading digit gets a prefix, keywords, builtins and reserved names get a suffix, and
clashes get ``_1``, ``_2``... so the result is always a fresh, plain ASCII identifier.

Flax submodule names have one more rule: :data:`FLAX_RESERVED` names get the same ``_``
suffix as keywords (see :func:`submodule_namespace`).
"""

from __future__ import annotations

import builtins
import keyword
import re

__all__ = [
    "FLAX_RESERVED",
    "Namespace",
    "pascal_case",
    "sanitize",
    "snake_case",
    "submodule_namespace",
]

_ILLEGAL = re.compile(r"[^0-9A-Za-z_]+")
_RESERVED = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins))

#: Submodule names a generated module must not use.  ``Module.apply`` refuses any
#: ``variables`` with a ``"params"`` key inside ``variables["params"]`` (flax/core/scope.py,
#: ``ApplyScopeInvalidVariablesStructureError``, its guard against a doubly wrapped dict),
#: which is exactly what a submodule named ``params`` that has parameters produces.  Every
#: other name, the collection names (``batch_stats``, ``cache``, ``intermediates``...),
#: rng names (``dropout``) and Module attributes (``name``, ``parent``, ``scope``...)
#: included, works as a submodule name in flax 0.10-0.12 (tests/test_variables_and_names.py
#: checks them).  It is reserved in every class, not only the top one, since each
#: generated class is a module a user may apply on its own.
FLAX_RESERVED = frozenset({"params"})


def sanitize(name: str, fallback: str = "v", digit_first: bool = False) -> str:
    """A plain identifier made from ``name`` (may still be a keyword or builtin).
    ``digit_first``: a leading digit is kept (a submodule name, which is a string in the
    source, not an identifier: ``1_conv`` inside block ``conv2_block1``)."""
    text = _ILLEGAL.sub("_", str(name)).strip("_")
    text = re.sub(r"_+", "_", text)
    if not text:
        text = fallback
    if text[0].isdigit() and not digit_first:
        text = f"{fallback}_{text}"
    return text


def pascal_case(name: str) -> str:
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", str(name)) if p]
    text = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    if text[0].isdigit():
        text = "Model" + text
    return text


def snake_case(name: str) -> str:
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name))
    return sanitize(text.lower(), fallback="model")


class Namespace:
    """Hands out unique identifiers within one scope."""

    def __init__(self, reserved=(), suffixed=(), digit_first: bool = False):
        """``reserved`` names are never handed out (a clash gets ``_1``...);
        ``suffixed`` names get a ``_`` suffix first, as keywords and builtins do;
        ``digit_first``: names may start with a digit (see :func:`sanitize`)."""
        self._digit_first = digit_first
        self._used: set[str] = set(reserved)
        self._suffixed = _RESERVED | set(suffixed)
        self._by_key: dict[object, str] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._used

    def reserve(self, *names: str) -> None:
        self._used.update(names)

    def create(self, candidate: str, key: object = None, fallback: str = "v") -> str:
        """A fresh identifier for ``candidate``; the same ``key`` gets the same name."""
        if key is not None and key in self._by_key:
            return self._by_key[key]
        base = sanitize(candidate, fallback, self._digit_first)
        if base in self._suffixed:
            base = f"{base}_"
        name, n = base, 1
        while name in self._used or name in self._suffixed:
            name = f"{base}_{n}"
            n += 1
        self._used.add(name)
        if key is not None:
            self._by_key[key] = name
        return name


def submodule_namespace(digit_first: bool = False) -> Namespace:
    """The namespace of one class's Flax submodule names (``name=`` arguments)."""
    return Namespace(suffixed=FLAX_RESERVED, digit_first=digit_first)
