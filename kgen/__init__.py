"""kgen: convert Keras models to readable Flax linen modules, with proven numerical parity.

Pipeline: ``trace`` (Keras model -> networkx graph) -> ``lower`` (graph -> calls and
weights) -> ``render`` (Jinja) -> ``format`` (ruff).  Importing :mod:`kgen` is light;
Keras is only imported by :mod:`kgen.tracer` when a model is traced.
"""

from __future__ import annotations

from kgen.errors import KgenError, UnsupportedError, WeightsError

__all__ = ["Conversion", "KgenError", "UnsupportedError", "WeightsError", "convert"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("convert", "Conversion"):
        from kgen import api

        return getattr(api, name)
    raise AttributeError(name)
