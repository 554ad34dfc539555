"""Initialisers evaluated on the host with numpy: :func:`kgen.runtime.init`'s fast path.

``module.init`` under ``jax.jit`` costs one XLA compile of every initialiser and of the
key derivations before them: for a generated InceptionV3 on CPU, 8.4 s of compile
against 1.4 s for the whole forward pass.  Yet what an initialiser computes is small and
plain: threefry random bits, a few float transforms (``uniform``, ``truncated_normal``),
constants.  So :func:`evaluate_function` traces ``module.init`` to a jaxpr (as ``jax.jit``
would), drops what the variables do not depend on (the forward pass), and evaluates
what is left with numpy, primitive by primitive.

The values are ``module.init``'s with the same key: the random bits bit for bit (the
threefry2x32 hash and counter layout of :mod:`jax._src.random.threefry2x32`, with
``jax_threefry_partitionable`` as set), and the float transforms to float rounding
(numpy's float steps are not fused as XLA's are; ``erf_inv`` is scipy's below a million
values).  A jaxpr with anything else (another
PRNG implementation, a QR for an orthogonal initialiser, a primitive not listed here)
raises :class:`Unsupported`, and the caller compiles instead.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax.extend import core as jcore

__all__ = ["Unsupported", "evaluate", "evaluate_function"]


class Unsupported(Exception):
    """The jaxpr holds something this evaluator does not compute."""


def evaluate_function(fn, *args):
    """``fn(*args)`` traced to a jaxpr, the equations its outputs do not depend on
    dropped, and the rest evaluated with numpy: a pytree of ``jax.Array``s."""
    try:  # jax internals: another jax version may lay them out otherwise
        from jax._src.interpreters import partial_eval as pe
        from jax._src.random import threefry2x32  # noqa: F401  (the kernels' primitive)
    except ImportError as e:
        raise Unsupported(f"this jax version ({jax.__version__}): {e}") from None

    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    jaxpr, used = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    values = [_host(a) for a, u in zip(jax.tree.leaves(args), used) if u]
    outs = evaluate(jaxpr, closed.consts, values)
    leaves = [_device(v, s) for v, s in zip(outs, jax.tree.leaves(out_shape))]
    return jax.tree.unflatten(jax.tree.structure(out_shape), leaves)


def _device(value, shape):
    if isinstance(value, _Key):  # a typed key array (an NNX module's rng streams)
        data = jax.numpy.asarray(value.data.reshape(*shape.shape, 2))
        return jax.random.wrap_key_data(data, impl="threefry2x32")
    return jax.numpy.asarray(np.asarray(value, shape.dtype).reshape(shape.shape))


def _host(value):
    """An input as the evaluator holds it: a typed threefry key as a :class:`_Key`."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(value)
        if "threefry" not in str(impl):
            raise Unsupported(f"PRNG implementation {impl}")
        return _Key(np.asarray(jax.random.key_data(value)))
    return np.asarray(value)


class _Key:
    """A threefry key array: ``data`` uint32 (..., 2)."""

    def __init__(self, data):
        self.data = np.asarray(data, np.uint32)


def evaluate(jaxpr, consts, args) -> list:
    """The outputs of ``jaxpr`` applied to ``args`` (numpy), computed with numpy."""
    env: dict = {}

    def read(v):
        if isinstance(v, jcore.Literal):
            return np.asarray(v.val, v.aval.dtype)
        return env[v]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = _host(value)
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for eqn in jaxpr.eqns:
        rule = _RULES.get(eqn.primitive.name)
        if rule is None:
            raise Unsupported(f"primitive {eqn.primitive.name}")
        values = [read(v) for v in eqn.invars]
        outs = rule(eqn, *values)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for var, value in zip(eqn.outvars, outs):
            if not isinstance(var, jcore.DropVar):
                env[var] = _typed(value, var.aval)
    return [read(v) for v in jaxpr.outvars]


def _typed(value, aval):
    if isinstance(value, _Key):
        return value
    dtype = getattr(aval, "dtype", None)
    if dtype is None or not isinstance(dtype, np.dtype):
        raise Unsupported(f"value of type {aval}")
    return np.asarray(value, dtype)


# ---- threefry2x32, as jax._src.random.threefry2x32 computes it -------------------------

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_CHUNK = 1 << 20


def threefry2x32(k1, k2, x1, x2):
    """The threefry2x32 hash of the counters ``x1``, ``x2`` (uint32 arrays of one shape)
    under the key ``(k1, k2)`` (uint32 scalars), as flat arrays."""
    x1 = np.array(x1, np.uint32, copy=True).ravel()
    x2 = np.array(x2, np.uint32, copy=True).ravel()
    _threefry_inplace(k1, k2, x1, x2)
    return x1, x2


def _threefry_inplace(k1, k2, x1, x2) -> None:
    k1, k2 = np.uint32(k1), np.uint32(k2)
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    tmp = np.empty_like(x1)
    x1 += ks[0]
    x2 += ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 += x2
            np.left_shift(x2, np.uint32(r), out=tmp)
            np.right_shift(x2, np.uint32(32 - r), out=x2)
            x2 |= tmp
            x2 ^= x1
        x1 += ks[(i + 1) % 3]
        x2 += np.uint32((int(ks[(i + 2) % 3]) + i + 1) & 0xFFFFFFFF)


def _threefry_2x32(key, count):
    """``threefry_2x32(keypair, count)``: the flat count split in halves (padded to even)."""
    flat = np.asarray(count, np.uint32).ravel()
    odd = flat.size % 2
    if odd:
        flat = np.concatenate([flat, np.zeros(1, np.uint32)])
    half = flat.size // 2
    y1, y2 = threefry2x32(key[0], key[1], flat[:half], flat[half:])
    out = np.concatenate([y1, y2])
    return (out[:-1] if odd else out).reshape(np.shape(count))


def _iota_2x32(shape):
    n = math.prod(shape)
    if n >= 1 << 32:
        raise Unsupported("more than 2**32 random values in one array")
    return np.zeros(n, np.uint32), np.arange(n, dtype=np.uint32)


def _partitionable() -> bool:
    return bool(jax.config.jax_threefry_partitionable)


def _fold_in(key, data):
    return _threefry_2x32(key, np.array([0, np.uint32(data)], np.uint32))


def _split(key, shape):
    if _partitionable():
        hi, lo = _iota_2x32(shape)
        b1, b2 = threefry2x32(key[0], key[1], hi, lo)
        return np.stack([b1, b2], axis=-1).reshape(*shape, 2)
    counts = np.arange(math.prod(shape) * 2, dtype=np.uint32)
    return _threefry_2x32(key, counts).reshape(*shape, 2)


def _random_bits(key, bit_width, shape):
    if bit_width != 32 or not _partitionable():
        raise Unsupported(f"{bit_width}-bit random bits (partitionable: {_partitionable()})")
    n = math.prod(shape)
    if n >= _CHUNK and n < 1 << 32:
        return _chunked_bits(key, n).reshape(shape)
    b1, b2 = threefry2x32(key[0], key[1], *_iota_2x32(shape))
    return (b1 ^ b2).reshape(shape)


# Large arrays: the same hash (or erf_inv) by one small XLA kernel of a fixed size,
# compiled once per process and called chunk by chunk (350M values of ConvNeXtXLarge:
# numpy took 7 s for the bits and scipy 6 s for erf_inv).


@functools.cache
def _bits_kernel():
    from jax._src.random import threefry2x32 as jax_threefry

    def bits(k1, k2, offset):
        lo = jax.numpy.arange(_CHUNK, dtype=np.uint32) + offset
        b1, b2 = jax_threefry.threefry2x32_p.bind(k1, k2, jax.numpy.zeros_like(lo), lo)
        return b1 ^ b2

    return jax.jit(bits)


@functools.cache
def _erf_inv_kernel():
    return jax.jit(jax.lax.erf_inv)


def _on_host(fn, *args):
    with jax.default_device(jax.devices("cpu")[0]):
        return np.asarray(fn(*args))


def _chunked_bits(key, n):
    k1, k2 = np.uint32(key[0]), np.uint32(key[1])
    kernel = _bits_kernel()
    chunks = [_on_host(kernel, k1, k2, np.uint32(start)) for start in range(0, n, _CHUNK)]
    return np.concatenate(chunks)[:n]


def _erf_inv(eqn, x):
    x = np.asarray(x)
    if x.dtype != np.float32 or x.size < _CHUNK:
        from scipy import special

        return special.erfinv(x)
    flat = x.ravel()
    padded = np.concatenate([flat, np.zeros(-flat.size % _CHUNK, np.float32)])
    kernel = _erf_inv_kernel()
    out = [_on_host(kernel, padded[s : s + _CHUNK]) for s in range(0, padded.size, _CHUNK)]
    return np.concatenate(out)[: flat.size].reshape(x.shape)


def _scalar_key(keys: _Key):
    if keys.data.shape != (2,):
        raise Unsupported(f"key array of shape {keys.data.shape[:-1]}")
    return keys.data


def _check_impl(eqn) -> None:
    impl = eqn.params["impl"]
    if getattr(impl, "name", None) != "threefry2x32":
        raise Unsupported(f"PRNG implementation {getattr(impl, 'name', impl)}")


def _wrap(eqn, base):
    _check_impl(eqn)
    return _Key(base)


def _seed(eqn, seed):
    _check_impl(eqn)
    seed = np.asarray(seed)
    if seed.shape:
        raise Unsupported("batched seeds")
    value = int(seed)
    return _Key(np.array([(value >> 32) & 0xFFFFFFFF, value & 0xFFFFFFFF], np.uint32))


# ---- the rules -------------------------------------------------------------------------


def _call(eqn, *args):
    sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
    if sub is None:
        raise Unsupported(f"call {eqn.primitive.name}")
    if isinstance(sub, jcore.ClosedJaxpr):
        return evaluate(sub.jaxpr, sub.consts, list(args))
    return evaluate(sub, [], list(args))


def _broadcast_in_dim(eqn, x):
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    x = np.asarray(x)
    expanded = [1] * len(shape)
    for axis, size in zip(dims, x.shape):
        expanded[axis] = size
    return np.broadcast_to(x.reshape(expanded), shape)


def _iota(eqn):
    p = eqn.params
    shape, dim = p["shape"], p["dimension"]
    ramp = np.arange(shape[dim], dtype=p["dtype"])
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return np.broadcast_to(ramp.reshape(view), shape)


def _slice(eqn, x):
    p = eqn.params
    strides = p["strides"] or (1,) * len(p["start_indices"])
    return x[
        tuple(slice(a, b, s) for a, b, s in zip(p["start_indices"], p["limit_indices"], strides))
    ]


def _convert(eqn, x):
    dtype = np.dtype(eqn.params["new_dtype"])
    if np.issubdtype(dtype, np.integer) and np.issubdtype(np.asarray(x).dtype, np.floating):
        raise Unsupported("float to integer conversion")
    return np.asarray(x).astype(dtype)


def _bitcast(eqn, x):
    dtype = np.dtype(eqn.params["new_dtype"])
    x = np.asarray(x)
    if dtype.itemsize != x.dtype.itemsize:
        raise Unsupported("bitcast between widths")
    return x.view(dtype)


def _shift_right_logical(eqn, x, y):
    x, y = np.asarray(x), np.asarray(y)
    if not np.issubdtype(x.dtype, np.unsignedinteger):
        raise Unsupported("logical shift of a signed integer")
    bits = x.dtype.itemsize * 8
    return np.where(y >= bits, 0, x >> np.minimum(y, bits - 1).astype(x.dtype)).astype(x.dtype)


def _shift_left(eqn, x, y):
    x, y = np.asarray(x), np.asarray(y)
    bits = x.dtype.itemsize * 8
    return np.where(y >= bits, 0, x << np.minimum(y, bits - 1).astype(x.dtype)).astype(x.dtype)


def _div(eqn, x, y):
    if np.issubdtype(np.asarray(x).dtype, np.integer):
        raise Unsupported("integer division")
    return np.divide(x, y)


def _erf(eqn, x):
    from scipy import special

    return special.erf(x)


def _unary(fn):
    return lambda eqn, x: fn(x)


def _binary(fn):
    return lambda eqn, x, y: fn(x, y)


_RULES = {
    "random_wrap": _wrap,
    "random_seed": _seed,
    "random_unwrap": lambda eqn, key: key.data,
    "random_fold_in": lambda eqn, key, msg: _Key(_fold_in(_scalar_key(key), msg)),
    "random_split": lambda eqn, key: _Key(_split(_scalar_key(key), eqn.params["shape"])),
    "random_bits": lambda eqn, key: _random_bits(
        _scalar_key(key), eqn.params["bit_width"], eqn.params["shape"]
    ),
    "threefry2x32": lambda eqn, k1, k2, x1, x2: [
        y.reshape(np.shape(x1)) for y in threefry2x32(k1, k2, x1, x2)
    ],
    "jit": _call,
    "pjit": _call,
    "closed_call": _call,
    "custom_jvp_call": _call,
    "custom_vjp_call": _call,
    "stop_gradient": _unary(lambda x: x),
    "copy": _unary(np.copy),
    "copy_p": _unary(np.copy),
    "neg": _unary(np.negative),
    "sqrt": _unary(np.sqrt),
    "rsqrt": _unary(lambda x: 1 / np.sqrt(x)),
    "exp": _unary(np.exp),
    "log": _unary(np.log),
    "log1p": _unary(np.log1p),
    "tanh": _unary(np.tanh),
    "abs": _unary(np.abs),
    "sign": _unary(np.sign),
    "floor": _unary(np.floor),
    "ceil": _unary(np.ceil),
    "sin": _unary(np.sin),
    "cos": _unary(np.cos),
    "not": _unary(np.invert),
    "erf": _erf,
    "erf_inv": _erf_inv,
    "integer_pow": lambda eqn, x: np.power(x, eqn.params["y"]),
    "square": _unary(np.square),
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "div": _div,
    "max": _binary(np.maximum),
    "min": _binary(np.minimum),
    "pow": _binary(np.power),
    "nextafter": _binary(np.nextafter),
    "and": _binary(np.bitwise_and),
    "or": _binary(np.bitwise_or),
    "xor": _binary(np.bitwise_xor),
    "shift_left": _shift_left,
    "shift_right_logical": _shift_right_logical,
    "eq": _binary(np.equal),
    "ne": _binary(np.not_equal),
    "lt": _binary(np.less),
    "le": _binary(np.less_equal),
    "gt": _binary(np.greater),
    "ge": _binary(np.greater_equal),
    "select_n": lambda eqn, pred, *cases: np.choose(np.asarray(pred, np.int32), cases),
    "convert_element_type": _convert,
    "bitcast_convert_type": _bitcast,
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": lambda eqn, x: np.reshape(x, eqn.params["new_sizes"]),
    "squeeze": lambda eqn, x: np.squeeze(x, axis=tuple(eqn.params["dimensions"])),
    "expand_dims": lambda eqn, x: np.expand_dims(x, tuple(eqn.params["dimensions"])),
    "transpose": lambda eqn, x: np.transpose(x, eqn.params["permutation"]),
    "concatenate": lambda eqn, *xs: np.concatenate(xs, axis=eqn.params["dimension"]),
    "slice": _slice,
    "iota": _iota,
}
