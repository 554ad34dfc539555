"""Tracer: the only part of kgen that imports Keras.

``trace(model)`` reads a Keras functional or Sequential model's own layer graph into a
:class:`networkx.DiGraph` of plain data (see :mod:`kgen.tracer.graph`).
"""

from __future__ import annotations

from kgen.tracer.graph import InputSpec, Ref, topological_nodes

__all__ = ["InputSpec", "Ref", "topological_nodes", "trace"]


def trace(model, has_lowering=None):
    """Trace a Keras 3 (``keras``) or legacy tf.keras (``tf_keras``) model.

    ``has_lowering(kind, class_name, builtin=, module=, registered_name=)`` answers
    whether a class converts; a class that does not is recorded without calling its
    ``get_config()`` (``kgen.convert`` passes the lowering registry's answer).
    """
    module = type(model).__module__
    if module.startswith("tf_keras") or any(
        c.__module__.startswith("tf_keras") for c in type(model).__mro__
    ):
        from kgen.tracer.tf_keras import trace_tf_keras

        return trace_tf_keras(model, has_lowering)
    if module.startswith("keras") or any(
        c.__module__.startswith("keras") for c in type(model).__mro__
    ):
        from kgen.tracer.keras3 import trace_keras3

        return trace_keras3(model, has_lowering)
    from kgen.errors import TraceError

    raise TraceError(f"not a Keras model: {type(model).__name__}")
