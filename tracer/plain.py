"""Turn Keras configs and constant call arguments into plain Python/numpy values."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["plain"]


def plain(value):
    """A deep copy of ``value`` made of dicts, lists, tuples, scalars, slices and arrays.

    Framework wrappers (TF's ListWrapper/_DictWrapper, tensors, serialised numpy arrays)
    become their plain equivalents; anything else becomes its repr (never executed).
    """
    if isinstance(value, dict):
        if value.get("class_name") == "__numpy__":
            return np.asarray(value["config"]["value"], dtype=value["config"].get("dtype"))
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bool, str, type(None), numbers.Number, slice, type(Ellipsis))):
        return value
    if hasattr(value, "numpy") and hasattr(value, "shape"):  # a tensor passed as a constant
        return np.asarray(value.numpy() if callable(value.numpy) else value)
    if hasattr(value, "get_config"):
        return {"class_name": type(value).__name__, "config": plain(value.get_config())}
    if hasattr(value, "__array__"):
        return np.asarray(value)
    return repr(value)
