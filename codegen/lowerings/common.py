"""Small helpers shared by the lowering families."""

from __future__ import annotations

from kgen.codegen.ir import Sym
from kgen.codegen.registry import Unsupported
from kgen.tracer.graph import Dim


def size(value):
    """A size: an int, or a :class:`Dim` known only when the module runs (a traced
    custom layer's ``ops.shape(x)[1]``), rendered as ``x.shape[1]``."""
    return value if isinstance(value, Dim) else int(value)


def ntuple(value, n: int, field: str = "value") -> tuple:
    """Keras int-or-tuple config values as an n-tuple of ints."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) == 1 and n > 1:
        return value * n
    if len(value) != n:
        raise Unsupported(field, value, f"an int or {n} ints")
    return value


def flax_padding(value, allowed=("valid", "same")) -> str:
    value = str(value).lower()
    if value not in allowed:
        raise Unsupported("padding", value, ", ".join(repr(a) for a in allowed))
    return value.upper()


def channels_last(config: dict) -> None:
    fmt = config.get("data_format", "channels_last")
    if fmt not in (None, "channels_last"):
        raise Unsupported("data_format", fmt, "'channels_last'")


def drop_defaults(kwargs: dict, defaults: dict) -> dict:
    """Keep only arguments that differ from the callee's defaults (readable calls)."""
    return {k: v for k, v in kwargs.items() if k not in defaults or defaults[k] != v}


def bind_args(node, names: tuple) -> dict:
    """A call's arguments by parameter name (positional ones bound in signature order)."""
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


DTYPES = {
    "float16": "jnp.float16",
    "bfloat16": "jnp.bfloat16",
    "float32": "jnp.float32",
    "float64": "jnp.float64",
    "int8": "jnp.int8",
    "int16": "jnp.int16",
    "int32": "jnp.int32",
    "int64": "jnp.int64",
    "uint8": "jnp.uint8",
    "bool": "jnp.bool_",
}


def dtype_sym(value, field: str = "dtype") -> Sym:
    """A dtype name (or a serialised Keras dtype policy) as the ``jnp`` dtype symbol."""
    name = value.get("config", {}).get("name") if isinstance(value, dict) else value
    if str(name) not in DTYPES:
        raise Unsupported(field, name, ", ".join(sorted(DTYPES)))
    return Sym(DTYPES[str(name)])
