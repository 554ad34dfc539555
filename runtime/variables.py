"""Saving and loading converted variables as safetensors, with shape checks."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from kgen.errors import WeightsError

__all__ = ["check_variables", "flatten", "load_variables", "save_variables", "unflatten"]

SEP = "/"


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{SEP}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = np.ascontiguousarray(np.asarray(value))
    return out


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(SEP)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_variables(variables: dict, path: str | os.PathLike) -> None:
    """Write ``{collection: {...}}`` to a safetensors file, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(flatten(variables), str(tmp), metadata={"format": "kgen-flax-variables"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_variables(path: str | os.PathLike, module=None) -> dict:
    """Read variables saved by kgen, ready for ``module.apply(variables, ...)``.

    With ``module`` given (an instance of a generated class), every array's shape is
    checked against what the module creates; a mismatch raises :class:`WeightsError`
    naming the parameter path and both shapes.
    """
    try:
        flat = load_file(str(path))
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as exc:  # safetensors raises its own error types
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsError(f"cannot read weights file {path}: {text}") from None
    variables = jax.tree_util.tree_map(jax.numpy.asarray, unflatten(flat))
    if module is not None:
        check_variables(module, variables)
    return variables


def _expected_shapes(module) -> dict[str, tuple]:
    shapes = getattr(module, "input_shapes", None)
    if shapes is None:
        raise WeightsError(f"{type(module).__name__} has no input_shapes; is it a kgen module?")
    dtypes = getattr(module, "input_dtypes", None) or ("float32",) * len(shapes)
    inputs = [
        jax.ShapeDtypeStruct(tuple(1 if d is None else d for d in s), np.dtype(t))
        for s, t in zip(shapes, dtypes)
    ]
    abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)
    leaves = jax.tree_util.tree_leaves_with_path(dict(abstract))
    return {
        SEP.join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
        for path, leaf in leaves
    }


def check_variables(module, variables: dict) -> None:
    expected = _expected_shapes(module)
    got = {k: tuple(np.shape(v)) for k, v in flatten(variables).items()}
    problems = []
    for path in sorted(expected.keys() | got.keys()):
        if path not in got:
            problems.append(f"{path}: missing (module expects shape {expected[path]})")
        elif path not in expected:
            problems.append(f"{path}: unexpected (file has shape {got[path]})")
        elif expected[path] != got[path]:
            problems.append(f"{path}: file has shape {got[path]}, module expects {expected[path]}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightsError(
            f"variables do not match {type(module).__name__}: " + "; ".join(problems[:5]) + more
        )
