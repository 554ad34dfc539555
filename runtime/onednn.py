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
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
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


def backend_config(n: int, kernel_size, strides, pads, dilation, groups: int) -> str:
    """XLA's ``OneDnnConvolutionConfig`` (as JSON) for a channels-last convolution with
    ``n`` spatial dims: data dims (batch, spatial..., feature), kernel dims (spatial...,
    in, out); strides and pads as they are, dilations as XLA counts them (1: none)."""
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
    from jax._src.interpreters import mlir as jax_mlir
    from jax.extend.core import Primitive
    from jax.interpreters import batching, mlir

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
        (x_aval, k_aval), (out_aval,) = ctx.avals_in, ctx.avals_out
        n = len(x_aval.shape) - 2
        config = backend_config(n, k_aval.shape[:n], **params)
        call = jax_mlir.custom_call(
            TARGET,
            result_types=[jax_mlir.aval_to_ir_type(ctx.module_context, out_aval)],
            operands=[x, kernel],
            backend_config=config,
            api_version=1,
        )
        return call.results

    def batch(args, dims, **params):
        (x, kernel), (x_dim, k_dim) = args, dims
        if k_dim is None:  # the mapped axis joins the batch
            x = jnp.moveaxis(x, x_dim, 0)
            y = prim.bind(x.reshape(-1, *x.shape[2:]), kernel, **params)
            return y.reshape(*x.shape[:2], *y.shape[1:]), 0
        size = kernel.shape[k_dim]
        kernel = jnp.moveaxis(kernel, k_dim, 0)
        if x_dim is None:
            x = jnp.broadcast_to(x, (size, *x.shape))
        else:
            x = jnp.moveaxis(x, x_dim, 0)
        return lax.map(lambda pair: prim.bind(*pair, **params), (x, kernel)), 0

    prim.def_impl(impl)
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, lower_plain)
    mlir.register_lowering(prim, lower_cpu, platform="cpu")
    batching.primitive_batchers[prim] = batch
    return prim


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
