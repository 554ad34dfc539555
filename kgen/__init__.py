"""kgen: convert Keras models to readable Flax linen modules, with proven numerical parity.

``kgen.load(source)`` gives ``(module, variables)`` in one call, converting once and then
serving the cache (:mod:`kgen.cache`).

Pipeline: ``trace`` (Keras model -> networkx graph) -> ``lower`` (graph -> calls and
weights) -> ``render`` (Jinja) -> ``format`` (ruff).  Importing :mod:`kgen` is light;
Keras is only imported by :mod:`kgen.tracer` when a model is traced.
"""

from __future__ import annotations

from kgen.errors import KgenError, UnsupportedError, WeightsError

__all__ = ["Conversion", "KgenError", "UnsupportedError", "WeightsError", "convert", "load"]
__version__ = "0.1.0"  # the one place the version is defined (pyproject reads it)


def __getattr__(name):
    if name in ("convert", "Conversion"):
        from kgen import api

        return getattr(api, name)
    if name == "load":
        from kgen.cache import load

        return load
    raise AttributeError(name)
