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
values).  Arrays of a million values or more are not built step by step: their random
bits and the elementwise steps after them stay lazy (:class:`_Stream`) and are computed
together, a block of values at a time on every core, straight into the variable, so the
big intermediate arrays (each one a pass over memory, and fresh pages to fault in) are
never made.  A jaxpr with anything else (another
PRNG implementation, a QR for an orthogonal initialiser, a primitive not listed here)
raises :class:`Unsupported`, and the caller compiles instead.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os

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
    except ImportError as e:
        raise Unsupported(f"this jax version ({jax.__version__}): {e}") from None

    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    jaxpr, used = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    values = [_host(a) for a, u in zip(jax.tree.leaves(args), used) if u]
    outs = [_materialise(v) for v in evaluate(jaxpr, closed.consts, values)]
    leaves = [_device(v, s) for v, s in zip(outs, jax.tree.leaves(out_shape))]
    return jax.tree.unflatten(jax.tree.structure(out_shape), leaves)


def _device(value, shape):
    if isinstance(value, _Key):  # a typed key array (an NNX module's rng streams)
        data = jax.numpy.asarray(value.data.reshape(*shape.shape, 2))
        return jax.random.wrap_key_data(data, impl="threefry2x32")
    # device_put, not jnp.asarray: on CPU it keeps a 64-byte-aligned array's memory
    # (one :func:`_materialise` made) instead of copying it.
    return jax.device_put(np.asarray(value, shape.dtype).reshape(shape.shape))


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
        outs = _streamed(eqn, values)
        if outs is None and eqn.primitive.name in _CALLS:  # streams go in unmade
            outs = rule(eqn, *values)
        elif outs is None:
            outs = rule(eqn, *[_materialise(v) for v in values])
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for var, value in zip(eqn.outvars, outs):
            if not isinstance(var, jcore.DropVar):
                env[var] = _typed(value, var.aval)
    return [read(v) for v in jaxpr.outvars]


def _typed(value, aval):
    if isinstance(value, (_Key, _Stream)):
        return value
    dtype = getattr(aval, "dtype", None)
    if dtype is None or not isinstance(dtype, np.dtype):
        raise Unsupported(f"value of type {aval}")
    return np.asarray(value, dtype)


# ---- threefry2x32, as jax._src.random.threefry2x32 computes it -------------------------

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_CHUNK = 1 << 20  # arrays this large or larger are streamed
_BLOCK = 1 << 18  # values per block of a stream: 1 MB of float32, within a core's L2


def threefry2x32(k1, k2, x1, x2):
    """The threefry2x32 hash of the counters ``x1``, ``x2`` (uint32 arrays of one shape)
    under the key ``(k1, k2)`` (uint32 scalars), as flat arrays."""
    x1 = np.asarray(x1, np.uint32).ravel()
    x2 = np.asarray(x2, np.uint32).ravel()
    return _threefry_rounds(np.uint32(k1), np.uint32(k2), x1, x2)


def _threefry_rounds(k1, k2, x1, x2):
    """threefry2x32's 20 rounds on numpy or ``jax.numpy`` uint32 arrays (new arrays).

    The same steps as jax's own kernel, written out: XLA compiles this to one fused loop,
    where jax's CPU lowering of ``threefry2x32_p`` is a rolled loop of whole-array passes
    (11 ms per million values against 1.8)."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = (x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))
            x2 = x2 ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


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
    """The random bits of ``jax.random.bits(key, shape)`` as an array."""
    return _materialise(_lazy_random_bits(key, bit_width, shape))


def _lazy_random_bits(key, bit_width, shape):
    """The same bits, a :class:`_Stream` where the array is large."""
    if bit_width != 32 or not _partitionable():
        raise Unsupported(f"{bit_width}-bit random bits (partitionable: {_partitionable()})")
    n = math.prod(shape)
    if n >= _CHUNK and n < 1 << 32:
        return _bits_stream(key, shape)
    b1, b2 = threefry2x32(key[0], key[1], *_iota_2x32(shape))
    return (b1 ^ b2).reshape(shape)


# Large arrays: the same hash (or erf_inv) by one small XLA kernel of a fixed size,
# compiled once per process and called block by block (350M values of ConvNeXtXLarge:
# numpy took 7 s for the bits and scipy 6 s for erf_inv).


@functools.cache
def _bits_kernel():
    def bits(k1, k2, offset):
        lo = jax.numpy.arange(_BLOCK, dtype=np.uint32) + offset
        b1, b2 = _threefry_rounds(k1, k2, jax.numpy.zeros_like(lo), lo)
        return b1 ^ b2

    return jax.jit(bits)


@functools.cache
def _erf_inv_kernel():
    return jax.jit(jax.lax.erf_inv)


def _on_host(fn, *args):
    """``fn(*args)`` run on the CPU (its arguments placed there) as a numpy array."""
    cpu = jax.devices("cpu")[0]
    return np.asarray(fn(*[jax.device_put(a, cpu) for a in args]))


def _erf_inv(eqn, x):
    x = np.asarray(x)
    if x.dtype != np.float32 or x.size < _CHUNK:
        from scipy import special

        return special.erfinv(x)
    flat = x.reshape(-1)
    return _materialise(
        _Stream(x.shape, x.dtype, lambda start, stop: _erf_inv_block(flat[start:stop]))
    )


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


# ---- large arrays, streamed --------------------------------------------------------------


class _Stream:
    """A large array not yet computed: ``block(start, stop)`` gives its values at flat
    indices ``[start, stop)`` (C order), for blocks that start at a multiple of
    :data:`_BLOCK` and hold at most that many values."""

    def __init__(self, shape, dtype, block):
        self.shape, self.dtype, self.block = tuple(shape), np.dtype(dtype), block
        self.size = math.prod(self.shape)


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _materialise(value):
    """``value`` as an array: a :class:`_Stream` computed block by block into one array
    (blocks on every core: numpy's loops and the XLA kernels release the GIL)."""
    if not isinstance(value, _Stream):
        return value
    out = _aligned_empty(value.size, value.dtype)

    def fill(start):
        stop = min(start + _BLOCK, value.size)
        out[start:stop] = value.block(start, stop)

    starts = range(0, value.size, _BLOCK)
    if _workers() == 1 or len(starts) == 1:
        for start in starts:
            fill(start)
    else:
        with concurrent.futures.ThreadPoolExecutor(_workers()) as pool:
            list(pool.map(fill, starts))
    return out.reshape(value.shape)


def _aligned_empty(size: int, dtype, align: int = 64):
    """``np.empty(size, dtype)`` starting at a multiple of ``align`` bytes."""
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + size * dtype.itemsize].view(dtype)


def _bits_stream(key, shape) -> _Stream:
    k1, k2 = np.uint32(key[0]), np.uint32(key[1])
    kernel = _bits_kernel()
    return _Stream(
        shape,
        np.uint32,
        lambda start, stop: _on_host(kernel, k1, k2, np.uint32(start))[: stop - start],
    )


def _erf_inv_block(x):
    if x.dtype != np.float32:
        from scipy import special

        return special.erfinv(x)
    padded = np.concatenate([x, np.zeros(_BLOCK - x.size, np.float32)]) if x.size < _BLOCK else x
    return _on_host(_erf_inv_kernel(), padded)[: x.size]


# Primitives computed value by value (an output value depends on the input values at the
# same index only), and those that only reshape: both are streamed.
_ELEMENTWISE = {
    "stop_gradient", "copy", "copy_p", "neg", "sqrt", "rsqrt", "exp", "log", "log1p",
    "tanh", "abs", "sign", "floor", "ceil", "sin", "cos", "not", "erf", "erf_inv",
    "integer_pow", "square", "add", "sub", "mul", "div", "max", "min", "pow", "nextafter",
    "and", "or", "xor", "shift_left", "shift_right_logical", "eq", "ne", "lt", "le", "gt",
    "ge", "select_n", "convert_element_type", "bitcast_convert_type",
}  # fmt: skip
_RESHAPES = {"reshape", "squeeze", "expand_dims"}
_CALLS = {"jit", "pjit", "closed_call", "custom_jvp_call", "custom_vjp_call"}


def _streamed(eqn, values):
    """The equation's output as a :class:`_Stream` when an input is one and the
    equation can be computed block by block; else ``None`` (computed whole)."""
    name = eqn.primitive.name
    if not any(isinstance(v, _Stream) for v in values) or eqn.primitive.multiple_results:
        return None
    out = eqn.outvars[0].aval
    if name in _RESHAPES:
        if eqn.params.get("dimensions") is not None and name == "reshape":
            return None  # a reshape that transposes first: not the same flat order
        (x,) = values
        return _Stream(out.shape, x.dtype, x.block)
    if name not in _ELEMENTWISE:
        return None
    size = math.prod(out.shape)
    parts = []
    for v in values:
        if isinstance(v, _Stream):
            if v.size != size:
                return None
            parts.append(v.block)
        elif np.size(v) == 1:  # a scalar, or one broadcast
            scalar = np.asarray(v).reshape(())
            parts.append(lambda start, stop, scalar=scalar: scalar)
        elif np.shape(v) == tuple(out.shape):
            flat = np.asarray(v).reshape(-1)
            parts.append(lambda start, stop, flat=flat: flat[start:stop])
        else:  # broadcast along some axes: not a flat block
            return None
    rule = (lambda eqn, x: _erf_inv_block(x)) if name == "erf_inv" else _RULES[name]

    def block(start, stop):
        return np.asarray(rule(eqn, *[part(start, stop) for part in parts]), out.dtype)

    return _Stream(out.shape, out.dtype, block)


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
    "random_bits": lambda eqn, key: _lazy_random_bits(  # large: a stream
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
