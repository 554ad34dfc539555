"""Tracer: the only part of kgen that imports Keras.

``trace(model)`` reads a Keras functional or Sequential model's own layer graph into a
:class:`networkx.DiGraph` of plain data (see :mod:`kgen.tracer.graph`).
"""

from __future__ import annotations

from kgen.tracer.graph import InputSpec, Ref, topological_nodes

__all__ = ["InputSpec", "Ref", "topological_nodes", "trace"]


def trace(model):
    """Trace a Keras 3 (``keras``) or legacy tf.keras (``tf_keras``) model."""
    module = type(model).__module__
    if module.startswith("tf_keras") or any(
        c.__module__.startswith("tf_keras") for c in type(model).__mro__
    ):
        from kgen.tracer.tf_keras import trace_tf_keras

        return trace_tf_keras(model)
    if module.startswith("keras") or any(
        c.__module__.startswith("keras") for c in type(model).__mro__
    ):
        from kgen.tracer.keras3 import trace_keras3

        return trace_keras3(model)
    from kgen.errors import TraceError

    raise TraceError(f"not a Keras model: {type(model).__name__}")
