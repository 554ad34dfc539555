"""Convolutions on CPU through XLA's own oneDNN kernel.

jaxlib's CPU backend carries oneDNN, the library TensorFlow runs its CPU convolutions
with, behind a custom call of XLA's (``__onednn$convolution``: XLA's oneDNN operation
thunk).  XLA's CPU compiler does not route ``lax.conv_general_dilated`` there (it uses
YNNPACK or Eigen), but a program that names the custom call gets oneDNN's convolution.
Measured one convolution at a time on a 2-core AMD EPYC VM (batch 8, ms, XLA's own
against oneDNN): ResNet50's 3x3 over (56, 56, 64) 18.3 -> 8.5, InceptionV3's 3x3 over
(147, 147, 32) -> 64 84.5 -> 40.8, VGG16's (224, 224, 64) -> 64 195 -> 160, ResNet50's
7x7 stride-2 stem 22.2 -> 9.8 (docs/performance.md, Run 7).

:func:`conv` is that call, with the semantics of ``lax.conv_general_dilated`` for
channels-last inputs (``NWC``/``NHWC``/``NDHWC`` with ``WIO``/``HWIO``/``DHWIO``
kernels), explicit ``(lo, hi)`` padding, strides, kernel dilation and feature groups.

- **Derivatives** come from :func:`plain_conv` (XLA's convolution): a convolution is
  linear in each operand, so the tangent is ``plain_conv(dx, w) + plain_conv(x, dw)``,
  which JAX also transposes for reverse mode.  Training gets oneDNN's forward pass and
  XLA's backward pass.
- **vmap** of the input joins the mapped axis to the batch; a mapped kernel runs one
  call per element.
- **jax.export** gets :func:`plain_conv`: an exported program may only hold custom
  calls with compatibility guarantees, which this one has not; so do other platforms
  than CPU, where the program is lowered for several.
- **Where it runs** is decided once per process by :func:`available`: a CPU backend
  with one device (XLA's SPMD partitioner knows no sharding rule for the custom call
  and would compute a data-parallel batch whole on every device), x86-64, and a jaxlib
  release on :data:`VERIFIED_JAXLIB`; there it runs a handful of small convolutions
  (1, 2 and 3 spatial dims; strides, uneven padding, dilation, groups) through the call
  and through :func:`plain_conv` and requires them to agree.
  The custom call's configuration is XLA's internal format, which has changed between
  XLA releases (strides, pads and spatial dims used to be stored one higher), and a
  configuration the kernel reads differently can crash the process rather than raise,
  so releases are allowed by name, not tried: elsewhere kgen keeps XLA's convolution.

**Packed kernels, for inference.**  Given the kernel as the parameters hold it
(``HWIO``), XLA's thunk reorders it into oneDNN's blocked layout on every call: in
ResNet50V2 at batch 1 that was 12 ms of a 48 ms call (``ONEDNN_VERBOSE=1``), memory
traffic TensorFlow does not pay, since its oneDNN kernels keep the reordered filter.
:func:`conv_packed` takes the kernel already in that layout (:func:`pack`, computed
once by ``kgen.runtime.pack``, beside the parameters), with the call's
``weights_prepacked`` option.  oneDNN picks the layout per problem, batch size
included, so :func:`packed_block` asks it, per convolution and process: it runs the
call once with a kernel buffer whose values are their own indices and an input that
reads one known element, which gives the block size ``B`` of the layout
``(ceil(O / B), *spatial, I, B)`` (``Acdb64a`` and its kin in oneDNN's names), then
checks the packed call on a random kernel against a float64 convolution on the host at
a few output positions, each of which reads the whole kernel.  Where the answer is not
that family, or the check fails, there is no packed path and the plain one runs.
"""

from __future__ import annotations

import functools
import importlib.metadata
import itertools
import json
import math
import platform

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "LAYOUTS",
    "TARGET",
    "VERIFIED_JAXLIB",
    "available",
    "backend_config",
    "conv",
    "conv_packed",
    "pack",
    "packed_block",
    "packed_shape",
    "plain_conv",
]

TARGET = "__onednn$convolution"

#: jaxlib releases (major, minor) whose oneDNN custom call reads :func:`backend_config`
#: as written here, checked by tests/lowerings/test_conv_onednn.py.
VERIFIED_JAXLIB = ((0, 10),)

#: ``lax.conv_general_dilated``'s dimension numbers for channels-last data, by spatial dims.
LAYOUTS = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def backend_config(
    n: int, kernel_size, strides, pads, dilation, groups: int, packed_kernel=None
) -> str:
    """XLA's ``OneDnnConvolutionConfig`` (as JSON) for a channels-last convolution with
    ``n`` spatial dims: data dims (batch, spatial..., feature), kernel dims (spatial...,
    in, out); strides and pads as they are, dilations as XLA counts them (1: none).
    ``packed_kernel``: the kernel's logical shape, where the kernel operand is already in
    oneDNN's layout (``weights_prepacked``)."""
    data = {"batch_dim": 0, "feature_dim": n + 1, "spatial_dims": list(range(1, n + 1))}
    kernel = {
        "input_feature_dim": n,
        "output_feature_dim": n + 1,
        "spatial_dims": list(range(n)),
    }
    config = {
        "dims": n + 2,
        "input": {"dims": n + 2, "data": data},
        "kernel": {"dims": n + 2, "filter": kernel},
        "output": {"dims": n + 2, "data": data},
        "window": {
            "size": [int(k) for k in kernel_size],
            "pad_left": [int(lo) for lo, _ in pads],
            "pad_right": [int(hi) for _, hi in pads],
            "strides": [int(s) for s in strides],
            "window_dilations": [int(d) for d in dilation],
        },
        "feature_groups": int(groups),
    }
    if packed_kernel is not None:
        kernel["shape"] = [int(d) for d in packed_kernel]
        config["optimization_config"] = {"weights_prepacked": True}
    return json.dumps({"onednn_conv_config": config}, sort_keys=True)


def plain_conv(x, kernel, strides, pads, dilation, groups: int = 1):
    """The same convolution as :func:`conv`, by XLA's own ``conv_general_dilated``."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=tuple(strides),
        padding=[tuple(p) for p in pads],
        rhs_dilation=tuple(dilation),
        dimension_numbers=LAYOUTS[x.ndim - 2],
        feature_group_count=groups,
    )


def _call(x, kernel, strides, pads, dilation, groups):
    params = {"strides": strides, "pads": pads, "dilation": dilation, "groups": groups}
    return _primitive().bind(x, kernel, **params)


@functools.cache
def _primitive():
    """The ``kgen_onednn_conv`` primitive: on CPU the custom call, except when lowered
    for ``jax.export`` (whose programs may only hold custom calls with compatibility
    guarantees) and on other platforms, where it is :func:`plain_conv`.  Built on first
    use, from jax's lowering API, which :func:`available` has vouched for."""
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    prim = Primitive("kgen_onednn_conv")

    def impl(x, kernel, **params):
        return jax.jit(functools.partial(prim.bind, **params))(x, kernel)

    def abstract(x, kernel, **params):
        out = jax.eval_shape(functools.partial(plain_conv, **params), x, kernel)
        return jax.core.ShapedArray(out.shape, out.dtype)

    def lower_plain(ctx, x, kernel, **params):
        return mlir.lower_fun(functools.partial(plain_conv, **params), multiple_results=False)(
            ctx, x, kernel
        )

    def lower_cpu(ctx, x, kernel, **params):
        if ctx.module_context.lowering_parameters.for_export:
            return lower_plain(ctx, x, kernel, **params)
        x_aval, k_aval = ctx.avals_in
        n = len(x_aval.shape) - 2
        return _custom_call(ctx, [x, kernel], backend_config(n, k_aval.shape[:n], **params))

    def batch(args, dims, **params):
        (x, kernel), (x_dim, k_dim) = args, dims
        if k_dim is None:  # the mapped axis joins the batch
            return _joined_batch(prim, x, x_dim, [kernel], params)
        size = kernel.shape[k_dim]
        x, kernel = _mapped_first(x, x_dim, size), _mapped_first(kernel, k_dim, size)
        return lax.map(lambda pair: prim.bind(*pair, **params), (x, kernel)), 0

    return _registered(prim, impl, abstract, lower_plain, lower_cpu, batch)


def _registered(prim, impl, abstract, lower_plain, lower_cpu, batch):
    """``prim`` with its rules: lowered by ``lower_cpu`` on CPU, ``lower_plain`` elsewhere."""
    from jax.interpreters import batching, mlir

    prim.def_impl(impl)
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, lower_plain)
    mlir.register_lowering(prim, lower_cpu, platform="cpu")
    batching.primitive_batchers[prim] = batch
    return prim


def _custom_call(ctx, operands, config: str):
    """The ``__onednn$convolution`` custom call on ``operands``, for a lowering rule."""
    from jax._src.interpreters import mlir as jax_mlir

    (out_aval,) = ctx.avals_out
    call = jax_mlir.custom_call(
        TARGET,
        result_types=[jax_mlir.aval_to_ir_type(ctx.module_context, out_aval)],
        operands=operands,
        backend_config=config,
        api_version=1,
    )
    return call.results


def _joined_batch(prim, x, x_dim, rest, params):
    """A batching rule's answer where only ``x`` is mapped: the mapped axis joins the
    batch of one call."""
    x = jnp.moveaxis(x, x_dim, 0)
    y = prim.bind(x.reshape(-1, *x.shape[2:]), *rest, **params)
    return y.reshape(*x.shape[:2], *y.shape[1:]), 0


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, kernel, strides, pads, dilation, groups):
    return _call(x, kernel, strides, pads, dilation, groups)


def _conv_jvp(strides, pads, dilation, groups, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    y = _call(x, kernel, strides, pads, dilation, groups)
    terms = []
    if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
        terms.append(plain_conv(dx, kernel, strides, pads, dilation, groups))
    if not isinstance(dkernel, jax.custom_derivatives.SymbolicZero):
        terms.append(plain_conv(x, dkernel, strides, pads, dilation, groups))
    dy = functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)
    return y, dy


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def conv(x, kernel, strides, pads, dilation, groups: int = 1):
    """``x`` (N, *spatial, C) convolved with ``kernel`` (*k, C // groups, F) by oneDNN:
    ``pads`` one ``(lo, hi)`` pair of non-negative ints per spatial dim.  The caller
    checks :func:`available` first."""
    n = x.ndim - 2
    return _conv(
        x,
        kernel,
        _ints(strides, n),
        tuple((int(lo), int(hi)) for lo, hi in pads),
        _ints(dilation, n),
        int(groups),
    )


def conv_packed(x, packed, kernel, strides, pads, dilation):
    """:func:`conv` (one group) with the kernel also given in oneDNN's layout:
    ``packed`` is :func:`pack` of ``kernel`` with the block :func:`packed_block` gives
    for this very convolution (the caller checks).  The call reads ``packed`` and skips
    the reorder; derivatives, ``jax.export`` and other platforms use ``kernel``, as
    does the forward pass under differentiation, so a stale ``packed`` never trains."""
    n = x.ndim - 2
    return _conv_packed(
        x,
        packed,
        kernel,
        _ints(strides, n),
        tuple((int(lo), int(hi)) for lo, hi in pads),
        _ints(dilation, n),
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _conv_packed(x, packed, kernel, strides, pads, dilation):
    params = {"strides": strides, "pads": pads, "dilation": dilation}
    return _packed_primitive().bind(x, packed, kernel, **params)


def _conv_packed_jvp(strides, pads, dilation, primals, tangents):
    x, _, kernel = primals
    dx, _, dkernel = tangents
    return _conv_jvp(strides, pads, dilation, 1, (x, kernel), (dx, dkernel))


_conv_packed.defjvp(_conv_packed_jvp, symbolic_zeros=True)


@functools.cache
def _packed_primitive():
    """``kgen_onednn_conv_packed``: operands ``x``, the packed kernel and the kernel;
    on CPU the custom call on the first two with ``weights_prepacked``, elsewhere (and
    for ``jax.export``) :func:`plain_conv` of the first and the last."""
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    prim = Primitive("kgen_onednn_conv_packed")

    def plain(x, packed, kernel, **params):
        return plain_conv(x, kernel, **params)

    def impl(x, packed, kernel, **params):
        return jax.jit(functools.partial(prim.bind, **params))(x, packed, kernel)

    def abstract(x, packed, kernel, **params):
        out = jax.eval_shape(functools.partial(plain_conv, **params), x, kernel)
        return jax.core.ShapedArray(out.shape, out.dtype)

    def lower_plain(ctx, *args, **params):
        lowered = mlir.lower_fun(functools.partial(plain, **params), multiple_results=False)
        return lowered(ctx, *args)

    def lower_cpu(ctx, x, packed, kernel, **params):
        if ctx.module_context.lowering_parameters.for_export:
            return lower_plain(ctx, x, packed, kernel, **params)
        x_aval, _, k_aval = ctx.avals_in
        n = len(x_aval.shape) - 2
        config = backend_config(n, k_aval.shape[:n], groups=1, packed_kernel=k_aval.shape, **params)
        return _custom_call(ctx, [x, packed], config)

    def batch(args, dims, **params):
        (x, packed, kernel), (x_dim, p_dim, k_dim) = args, dims
        if p_dim is None and k_dim is None:  # the mapped axis joins the batch
            return _joined_batch(prim, x, x_dim, [packed, kernel], params)
        # a mapped kernel: the plain convolution of each (the packed one is a copy)
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        x = _mapped_first(x, x_dim, size)
        kernel = _mapped_first(kernel, k_dim, size)
        return lax.map(lambda pair: plain_conv(*pair, **params), (x, kernel)), 0

    return _registered(prim, impl, abstract, lower_plain, lower_cpu, batch)


def _mapped_first(a, dim, size):
    if dim is None:
        return jnp.broadcast_to(a, (size, *a.shape))
    return jnp.moveaxis(a, dim, 0)


def packed_shape(kernel_shape, block: int) -> tuple[int, ...]:
    """The shape :func:`pack` gives a ``(*k, I, O)`` kernel: ``(ceil(O / block), *k, I,
    block)``."""
    *k, i, o = (int(d) for d in kernel_shape)
    return (-(-o // block), *k, i, block)


def pack(kernel, block: int):
    """``kernel`` (``*k, I, O``) in oneDNN's blocked layout for ``block``: output
    features in blocks of ``block`` (the last zero-padded), outermost; then the kernel's
    spatial dims, the input features, and the ``block`` features of the block.  A numpy
    array is packed with numpy, on the host."""
    return _pack(np if isinstance(kernel, np.ndarray) else jnp, kernel, block)


def _pack(xp, kernel, block: int):
    """:func:`pack` with the array module ``xp`` (``jax.numpy``, or ``numpy`` on the
    host, where the probe packs without compiling anything)."""
    *k, i, o = kernel.shape
    n = len(k)
    blocks, *_ = packed_shape(kernel.shape, block)
    kernel = xp.pad(kernel, [(0, 0)] * (n + 1) + [(0, blocks * block - o)])
    kernel = kernel.reshape(*k, i, blocks, block)
    return xp.transpose(kernel, (n + 1, *range(n + 1), n + 2))


#: The largest block :func:`packed_block` accepts, and the slack its probe's kernel
#: buffer carries past the logical kernel, so that no layout oneDNN might pick for the
#: probe (output features padded by up to this, input features by up to 64) reads past
#: the buffer.
MAX_BLOCK = 256


@functools.cache
def packed_block(x_shape, kernel_shape, strides, pads, dilation) -> int | None:
    """The block of oneDNN's kernel layout for this one-group convolution, as oneDNN
    picks it in this process (see the module doc), or None where it is not
    :func:`pack`'s layout or the check fails.  Cached; shapes and settings as tuples of
    ints."""
    *k, i, o = kernel_shape
    n = len(k)
    if not available() or i < 2 or len(x_shape) != n + 2:
        return None
    params = {"strides": tuple(strides), "pads": tuple(pads), "dilation": tuple(dilation)}
    call = jax.jit(functools.partial(_packed_primitive().bind, **params))
    size = (o + MAX_BLOCK) * math.prod(k) * (i + 64)
    try:
        with jax.ensure_compile_time_eval():
            block = _probe_block(call, x_shape, kernel_shape, size, params)
            if block is None or not _packed_agrees(
                call, x_shape, kernel_shape, block, size, params
            ):
                return None
    except Exception:  # any failure means: no packed path here
        return None
    return block


def _probe_block(call, x_shape, kernel_shape, size, params) -> int | None:
    """Run the packed call with a kernel buffer holding its own indices and an input
    that is 1 at input feature 1 of a pixel whose window starts there: the output at
    that window's first feature is the buffer's element at (tap 0, input feature 1,
    output feature 0), which in :func:`pack`'s layout is the block size."""
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in (x_shape, kernel_shape)]
    out = jax.eval_shape(functools.partial(plain_conv, **params), *shapes)
    first = [-(-lo // s) for (lo, _), s in zip(params["pads"], params["strides"])]
    if any(p >= size_out for p, size_out in zip(first, out.shape[1:-1])):
        return None
    start = [p * s - lo for p, s, (lo, _) in zip(first, params["strides"], params["pads"])]
    if any(r >= size_in for r, size_in in zip(start, x_shape[1:-1])):
        return None
    x = np.zeros(x_shape, np.float32)
    x[(0, *start, 1)] = 1.0
    buffer = np.arange(size, dtype=np.float32)
    kernel = np.zeros(kernel_shape, np.float32)
    y = np.asarray(call(x, buffer, kernel))
    value = float(y[(0, *first, 0)])
    if not value.is_integer() or not 1 <= value <= MAX_BLOCK:
        return None
    return int(value)


def _packed_agrees(call, x_shape, kernel_shape, block, size, params) -> bool:
    """Whether the packed call, given :func:`pack` of a random kernel (in a buffer as
    long as the probe's), computes the convolution: checked in float64 on the host at
    the first, middle and last output position of every spatial dim, in the first and
    last image, each of which reads the whole kernel (:func:`available` has checked
    padding, strides and dilation against XLA's convolution already)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    kernel = rng.standard_normal(kernel_shape, dtype=np.float32)
    flat = _pack(np, kernel, block).reshape(-1)
    if flat.size > size:
        return False
    buffer = np.concatenate([flat, np.zeros(size - flat.size, np.float32)])
    got = np.asarray(call(x, buffer, kernel))
    spans = [sorted({0, length // 2, length - 1}) for length in got.shape[1:-1]]
    worst, scale = 0.0, 1.0
    for image in sorted({0, x_shape[0] - 1}):
        for position in itertools.product(*spans):
            want = _conv_at(x[image], kernel, position, params)
            worst = max(worst, float(np.max(np.abs(got[(image, *position)] - want))))
            scale = max(scale, float(np.max(np.abs(want))))
    return worst <= 1e-4 * scale


def _conv_at(x, kernel, position, params):
    """The convolution of one image ``x`` (*spatial, C) at one output ``position``, for
    every output feature, in float64."""
    *window, _, features = kernel.shape
    out = np.zeros(features)
    for tap in itertools.product(*(range(k) for k in window)):
        index = []
        for p, t, s, d, (lo, _) in zip(
            position, tap, params["strides"], params["dilation"], params["pads"]
        ):
            index.append(p * s - lo + t * d)
        if all(0 <= i < size for i, size in zip(index, x.shape[:-1])):
            out += x[tuple(index)].astype(np.float64) @ kernel[tap].astype(np.float64)
    return out


def _ints(values, n: int) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    if len(values) != n:
        raise ValueError(f"{values} for {n} spatial dims")
    return values


# (input shape, kernel shape, strides, pads, dilation, groups): every kind of argument
# the call takes, each at a value where reading it wrongly changes the result.
_PROBES = (
    ((2, 9, 10, 4), (3, 2, 2, 6), (2, 1), ((1, 0), (0, 2)), (1, 2), 2),
    ((1, 7, 8, 3), (1, 1, 3, 5), (1, 2), ((0, 0), (0, 0)), (1, 1), 1),
    ((2, 11, 3), (3, 3, 4), (1,), ((2, 0),), (2,), 1),
    ((1, 4, 5, 6, 2), (2, 1, 3, 2, 3), (1, 2, 1), ((0, 1), (1, 0), (1, 1)), (1, 1, 1), 1),
)


def jaxlib_release() -> tuple[int, int]:
    """The installed jaxlib's (major, minor)."""
    major, minor, *_ = importlib.metadata.version("jaxlib").split(".")
    return int(major), int(minor)


@functools.cache
def available() -> bool:
    """Whether :func:`conv` runs here (see the module doc).  Decided once per process,
    outside any trace."""
    if jax.default_backend() != "cpu":
        return False
    if jax.device_count() != 1:  # the partitioner would replicate the call's operands
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if jaxlib_release() not in VERIFIED_JAXLIB:
        return False
    return agrees()


def agrees() -> bool:
    """Whether the call gives :func:`plain_conv`'s results on :data:`_PROBES`."""
    rng = np.random.default_rng(0)
    try:
        with jax.ensure_compile_time_eval():
            for x_shape, k_shape, strides, pads, dilation, groups in _PROBES:
                x = jnp.asarray(rng.uniform(-1, 1, x_shape).astype(np.float32))
                kernel = jnp.asarray(rng.uniform(-1, 1, k_shape).astype(np.float32))
                got = np.asarray(_call(x, kernel, strides, pads, dilation, groups))
                want = np.asarray(plain_conv(x, kernel, strides, pads, dilation, groups))
                if got.shape != want.shape:
                    return False
                if np.max(np.abs(got - want)) > 1e-5 * max(np.max(np.abs(want)), 1.0):
                    return False
    except Exception:  # any failure means: not here
        return False
    return True
