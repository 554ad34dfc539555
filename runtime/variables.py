"""Saving and loading converted variables as safetensors, with shape and dtype checks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from kgen.errors import WeightsError

__all__ = [
    "check_variables",
    "flatten",
    "init",
    "load_variables",
    "save_variables",
    "unflatten",
]

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
    """The nested dict of ``{"a/b/c": value}``; a key that is both a leaf and a prefix of
    another key, or has an empty path component, is a :class:`WeightsError`."""
    tree: dict = {}
    for path, value in flat.items():
        parts = str(path).split(SEP)
        if not all(parts):
            raise WeightsError(f"key {_show(path)} has an empty path component")
        node = tree
        for depth, part in enumerate(parts[:-1], 1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _leaf_and_prefix(SEP.join(parts[:depth]), path)
        if parts[-1] in node:  # a dict: earlier keys went below this one
            raise _leaf_and_prefix(path, next(k for k in flat if k.startswith(path + SEP)))
        node[parts[-1]] = value
    return tree


def _leaf_and_prefix(leaf: str, longer: str) -> WeightsError:
    return WeightsError(f"key {_show(leaf)} is both a tensor and a prefix of key {_show(longer)}")


def _show(path: str) -> str:
    """A path as it reads in a one-line message: plain paths as they are, others escaped."""
    text = str(path)
    return text if re.fullmatch(r"[\w./:-]+", text, re.ASCII) else ascii(text)


def save_variables(
    variables: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write ``{collection: {...}}`` to a safetensors file, atomically.  ``metadata``:
    more string entries for the file's header (kgen records the module's ``layout``
    and the Keras layer of each submodule path, ``keras_layers``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        header = {**(metadata or {}), "format": "kgen-flax-variables"}
        save_file(flatten(variables), str(tmp), metadata=header)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_variables(path: str | os.PathLike, module=None, *, cast: bool = False) -> dict:
    """Read variables saved by kgen, ready for ``module.apply(variables, ...)``.

    With ``module`` given (an instance of a generated class), every array's shape and
    dtype is checked against what the module creates; a mismatch raises
    :class:`WeightsError` naming the parameter path and both shapes or dtypes.  With
    ``cast=True`` (which needs ``module``), arrays of another dtype are cast to the one
    the module expects instead; shapes are still checked.
    """
    if cast and module is None:
        raise ValueError("load_variables(cast=True) needs module= to know the dtypes")
    try:
        flat = load_file(str(path))
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as exc:  # safetensors raises its own error types
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsError(f"cannot read weights file {path}: {text}") from None
    try:
        unflatten(flat)  # key structure first: a clash is a file error, whatever the module
    except WeightsError as exc:
        raise WeightsError(f"bad weights file {path}: {exc}") from None
    if module is not None:
        expected = _expected(module)
        try:
            _raise_problems(module, expected, flat, check_dtypes=not cast, cast_hint=True)
        except WeightsError as exc:
            if expected.keys() != flat.keys() and _layout(path) == "flat":
                raise WeightsError(f"{exc}; {FLAT_HINT}") from None
            raise
        if cast:
            flat = {k: v.astype(expected[k].dtype, copy=False) for k, v in flat.items()}
    # numpy first: jnp.asarray alone would turn float64 into float32 without a word
    return jax.tree_util.tree_map(jax.numpy.asarray, unflatten(flat))


FLAT_HINT = (
    "the file holds the flat form's variables (one submodule per Keras layer, as kgen "
    "wrote before repeated blocks became classes): convert the model with fold=False "
    "for the flat module, or convert it again for weights that fit the folded one"
)


def _layout(path) -> str:
    """``folded`` or ``flat``: the module form a kgen file was written for (files from
    before folding record none, and are flat)."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = f.metadata() or {}
    return meta.get("layout", "flat")


def _expected(module) -> dict[str, jax.ShapeDtypeStruct]:
    """Every variable the module creates, by path, as shape and dtype (nothing computed)."""
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
    return {SEP.join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def check_variables(module, variables: dict) -> None:
    """Raise :class:`WeightsError` unless ``variables`` has exactly the paths, shapes and
    dtypes that ``module`` creates."""
    _raise_problems(module, _expected(module), flatten(variables), check_dtypes=True)


def _raise_problems(
    module, expected: dict, got: dict, check_dtypes: bool, cast_hint: bool = False
) -> None:
    problems, dtype_problems = [], 0
    for path in sorted(expected.keys() | got.keys()):
        if path not in got:
            want = tuple(expected[path].shape)
            problems.append(f"{path}: missing (module expects shape {want})")
            continue
        shape, dtype = tuple(np.shape(got[path])), np.dtype(got[path].dtype)
        if path not in expected:
            problems.append(f"{_show(path)}: unexpected (file has shape {shape})")
            continue
        want, want_dtype = tuple(expected[path].shape), np.dtype(expected[path].dtype)
        if want != shape:
            problems.append(f"{path}: file has shape {shape}, module expects {want}")
        elif check_dtypes and want_dtype != dtype:
            problems.append(f"{path}: file has dtype {dtype}, module expects {want_dtype}")
            dtype_problems += 1
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        hint = " (pass cast=True to cast them)" if dtype_problems and cast_hint else ""
        raise WeightsError(
            f"variables do not match {type(module).__name__}: "
            + "; ".join(problems[:5])
            + more
            + hint
        )


def init(module, *inputs, rng=None, method: str = "auto", **kwargs) -> dict:
    """The module's freshly initialised variables, without running the model eagerly.

    ``module.init`` called eagerly runs every layer op by op (a generated MobileNetV2
    took 20 s on CPU, over a minute wrapped in a bigger model).  ``inputs`` are example
    arrays, or ``jax.ShapeDtypeStruct``s (zeros of that shape are used: only shapes and
    dtypes matter to ``init``).  ``kwargs`` go to ``module.init`` (e.g. ``train=False``).

    ``method``:

    - ``"host"``: ``module.init`` traced to a jaxpr, its forward pass dropped, and the
      initialisers evaluated with numpy (:mod:`kgen.runtime.host_init`): no XLA compile.
      A generated InceptionV3 on CPU: 2.3 s against 6.9 s for ``"jit"``.
    - ``"jit"``: ``module.init`` compiled as one XLA program and run once, with XLA's
      backend optimisation off (:data:`INIT_COMPILER_OPTIONS`), which halves the
      compile.
    - ``"auto"`` (default): ``"host"``, or ``"jit"`` where the jaxpr holds what the host
      evaluator does not compute (another PRNG, an orthogonal initialiser's QR).

    Either way the values are ``module.init``'s with the same key, to float rounding.
    """
    rng = jax.random.PRNGKey(0) if rng is None else rng
    arrays = [
        jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x for x in inputs
    ]
    from flax.core import meta

    fn = lambda key, *xs: module.init(key, *xs, **kwargs)  # noqa: E731
    # Plain arrays, the layout of a weights file: a module with logical axis names
    # (kgen emit --logical-axes) would give them boxed in nn.Partitioned.
    return meta.unbox(initialise(fn, rng, *arrays, method=method))


def initialise(fn, *args, method: str = "auto"):
    """``fn(*args)``, a function of initialisers, by :func:`init`'s ``method``: evaluated
    on the host (:func:`kgen.runtime.host_init.evaluate_function`), or compiled and run
    once; ``"auto"`` compiles where the host evaluator cannot."""
    if method not in ("auto", "host", "jit"):
        raise ValueError(f"method must be 'auto', 'host' or 'jit', not {method!r}")
    if method != "jit":
        from kgen.runtime.host_init import Unsupported, evaluate_function

        try:
            return evaluate_function(fn, *args)
        except Unsupported:
            if method == "host":
                raise
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(compiler_options=INIT_COMPILER_OPTIONS)(*args)


#: XLA options for :func:`init`'s run-once program: its compile time is what counts.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
