"""Tracer: the only part of kgen that imports Keras.

``trace(model)`` reads a Keras functional or Sequential model's own layer graph into a
:class:`networkx.DiGraph` of plain data (see :mod:`kgen.tracer.graph`).
"""

from __future__ import annotations

from kgen.tracer.graph import InputSpec, Ref, topological_nodes

__all__ = ["InputSpec", "Ref", "topological_nodes", "trace"]


def trace(model, has_lowering=None, *, trace_lambdas=False, input_specs=None):
    """Trace a Keras 3 (``keras``) or legacy tf.keras (``tf_keras``) model.

    ``has_lowering(kind, class_name, builtin=, module=, registered_name=)`` answers
    whether a class converts; a class that does not is traced into (Keras 3, see
    :mod:`kgen.tracer.custom`), and never has its ``get_config()`` called
    (``kgen.convert`` passes the lowering registry's answer).  ``trace_lambdas`` traces
    ``Lambda`` layers' functions too: only for live models, whose code the user runs.
    ``input_specs`` (``[(shape, dtype), ...]``, batch dim included) are the inputs of a
    subclassed Keras 3 model, whose ``call()`` is traced.
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

        return trace_keras3(
            model, has_lowering, trace_lambdas=trace_lambdas, input_specs=input_specs
        )
    from kgen.errors import TraceError

    raise TraceError(f"not a Keras model: {type(model).__name__}")
