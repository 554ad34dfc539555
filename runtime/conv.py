"""Convolutions with fast paths where XLA is slow on CPU: oneDNN's kernel, depthwise,
pointwise (1x1), and padding chosen so that XLA picks its faster kernel.

**oneDNN.**  On CPU, where :func:`kgen.runtime.onednn.available` (one x86-64 device
and a verified jaxlib whose oneDNN convolution passes its check), :class:`Conv` runs a
float32 convolution with 1 to 3 spatial dims, 'same', 'valid', 'causal' or explicit
non-negative padding, no input dilation, and at least :data:`ONEDNN_MIN_FLOPS` of work
(:func:`onednn_pays`) through XLA's own oneDNN kernel (:mod:`kgen.runtime.onednn`):
1.1-2.3x faster than XLA's CPU convolutions at the catalog's shapes, pointwise and
grouped ones included (docs/performance.md, Run 7).  ``KGEN_CONV=onednn`` sends every
such convolution there whatever its size (and is an error where it is not available),
``KGEN_CONV=dot`` keeps the XLA paths below, ``KGEN_CONV=xla`` is ``nn.Conv``'s own.
Where oneDNN is not available, ``auto`` means ``dot``; the paths below also take the
convolutions oneDNN does not.

**Pointwise.**  :class:`Conv` is Flax's ``nn.Conv`` (same fields, same parameters), but
on CPU a convolution whose kernel is 1 in every spatial dim, with one group, runs as a
matrix product of the (strided) input with the ``(in, out)`` kernel: XLA's CPU
convolution took 1.5-2x the time of ``jnp.dot`` at ResNet50's, DenseNet's and
InceptionV3's 1x1 shapes (e.g. (8, 56, 56, 256) -> 64: 23.9 ms against 12.3 ms, and
TensorFlow's 13.3 ms), while at 3x3 it is within 10-20% of TensorFlow's and stays.
``KGEN_CONV=xla|dot`` forces one (``auto``: where oneDNN does not take it); elsewhere
than CPU XLA's convolution stays.

**Padding chosen for XLA's CPU backend.**  XLA's CPU compiler (jaxlib 0.10) hands a 2D
float32 convolution to YNNPACK unless an output is longer than its input, where its
Eigen kernel runs instead; and it runs a convolution with no padding at all slower
than the same one with some.  Measured one convolution at a time at the catalog's
shapes (docs/performance.md, Run 4), Eigen was 1.1-2.2x faster at stride 1 on mid-sized
inputs with 8 images (InceptionV3's 3x3 over (8, 147, 147, 32) -> 64: 54 -> 36 ms;
ResNet50's 3x3 over (8, 56, 56, 64) -> 64: 9.3 -> 5.7 ms; DenseNet121's
(8, 56, 56, 128) -> 32: 12.0 -> 7.4 ms) and YNNPACK faster on small batches of small
images and on VGG16's largest layers.  So :func:`padded_conv` computes a 'valid' or
'same' convolution with a kernel larger than 1 with the padding after its widest
spatial dim grown until that output is one longer than the input, then crops, where
:func:`eigen_pays`; else a 'valid' one with one zero of padding after each spatial dim
(InceptionV3's stem: 3x3 over (8, 149, 149, 32) -> 32, 130 ms against 28 ms), then
crops.  Both compute the same windows, so the same values to float rounding.  They
follow ``KGEN_CONV`` too (``xla``: off).

**Few input channels.**  An image model's first convolution reads 1 to 4 channels (RGB),
where XLA's CPU kernels are at their slowest: InceptionV3's 3x3 stride-2 stem over
(8, 299, 299, 3) took 17.8 ms, against 4.8 ms for TensorFlow.  With so few products per
output, :func:`few_channel_conv` writes it as a sum over the taps and input channels of
a strided slice of the padded input, one channel wide, times that kernel row, which XLA
fuses into one loop: 5.9 ms there (:func:`few_channels_pay` has the rule and the
measurements).

**Depthwise.**

XLA on CPU runs ``conv_general_dilated`` with ``feature_group_count == channels`` at a
fraction of a GFLOP/s: in the generated MobileNetV2 the depthwise convolutions took 84%
of the time.  A depthwise convolution is a sum, over the kernel's taps, of shifted and
strided slices of the padded input scaled per channel; written that way XLA fuses it
into one loop and runs it tens of times faster on CPU.  On other backends (GPU, TPU)
the grouped convolution stays, unless a measurement says otherwise.

Both paths compute the same thing from the same parameters, laid out as Flax's
``nn.Conv(feature_group_count=channels)`` lays them out: ``kernel`` of shape
``(*kernel_size, 1, channels * depth_multiplier)`` (output channel ``c * M + m``) and
``bias`` of shape ``(channels * depth_multiplier,)``.  The path is chosen when the module
is traced: ``impl="auto"`` picks by ``jax.default_backend()``; ``"xla"`` and ``"shift"``
force one (tests compare them), as does the ``KGEN_DEPTHWISE`` environment variable.
"""

from __future__ import annotations

import contextvars
import math
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta
from jax import lax

from kgen.runtime import onednn

__all__ = [
    "PACKED",
    "Conv",
    "DepthwiseConv",
    "conv_impl",
    "depthwise_conv",
    "depthwise_impl",
    "eigen_pays",
    "few_channel_conv",
    "few_channels_pay",
    "is_padded",
    "is_pointwise",
    "onednn_padding",
    "onednn_pads",
    "onednn_pays",
    "pack",
    "padded_conv",
    "pointwise_conv",
]

IMPLS = ("auto", "xla", "shift")
CONV_IMPLS = ("auto", "xla", "dot", "onednn")


def resolve_impl(kind: str, impl: str, choices: tuple[str, ...], env: str) -> str:
    """The implementation ``impl`` of a fast path resolves to: ``"auto"`` is the
    environment variable ``env`` if set, else ``choices[-1]`` (the fast path) on CPU
    and ``"xla"`` elsewhere."""
    impl = os.environ.get(env, impl) if impl == "auto" else impl
    if impl not in choices:
        raise ValueError(f"{kind} impl must be one of {choices}, not {impl!r}")
    if impl == "auto":
        return choices[-1] if jax.default_backend() == "cpu" else "xla"
    return impl


def conv_impl(impl: str = "auto") -> str:
    """The implementation of :class:`Conv` that ``impl`` (or, for ``auto``, the
    ``KGEN_CONV`` environment variable) resolves to: ``xla``, ``dot``, ``onednn``, or
    ``auto`` itself on CPU where :func:`kgen.runtime.onednn.available`, which chooses
    per convolution (oneDNN where :func:`onednn_pays`, else ``dot``'s paths).  ``auto``
    is ``dot`` on a CPU without oneDNN and ``xla`` elsewhere; asking for ``onednn``
    where it is not available is an error."""
    requested = os.environ.get("KGEN_CONV", impl) if impl == "auto" else impl
    if requested not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, not {requested!r}")
    if requested == "auto":
        if jax.default_backend() != "cpu":
            return "xla"
        return "auto" if onednn.available() else "dot"
    if requested == "onednn" and not onednn.available():
        raise RuntimeError(
            f"conv impl {requested!r}: XLA's oneDNN convolution is not available here "
            f"(backend {jax.default_backend()!r}; see kgen.runtime.onednn)"
        )
    return requested


#: ``auto`` sends a convolution to oneDNN from this many floating-point operations on
#: (see :func:`onednn_pays`).
ONEDNN_MIN_FLOPS = 25_000_000


def onednn_pays(x_shape, kernel_shape, strides, dilation, pads) -> bool:
    """Whether oneDNN runs a convolution faster than XLA's paths here: when it has at
    least :data:`ONEDNN_MIN_FLOPS` of work.  Each oneDNN call costs 10-15 us more than an
    XLA kernel (20 small convolutions in one program, AMD EPYC VM), which small ones
    do not earn back: at batch 1, MobileNetV3Small took 8.3 ms against 4.8 with every
    convolution on oneDNN."""
    *window, per_group, features = kernel_shape
    out = 1
    for size, k, s, d, (lo, hi) in zip(x_shape[1:-1], window, strides, dilation, pads):
        out *= max((size + lo + hi - (k - 1) * d - 1) // s + 1, 0)
    flops = 2 * x_shape[0] * out * math.prod(window) * per_group * features
    return flops >= ONEDNN_MIN_FLOPS


def onednn_padding(
    x_shape, kernel_shape, strides, dilation, padding, input_dilation, mask, dtype, require_pay
) -> list | None:
    """The padding oneDNN computes a convolution with (:func:`onednn_pads`), or None
    where it does not take it or, with ``require_pay``, where :func:`onednn_pays` says
    no.  ``kernel_shape`` is ``(*window, in // groups, out)``."""
    n = len(x_shape) - 2
    shape_info = (x_shape[1:-1], tuple(kernel_shape[:n]), strides, dilation)
    pads = onednn_pads(n, padding, input_dilation, mask, dtype, shape_info)
    if pads is None:
        return None
    if require_pay and not onednn_pays(x_shape, kernel_shape, strides, dilation, pads):
        return None
    return pads


def onednn_pads(n: int, padding, input_dilation, mask, dtype, shape_info) -> list | None:
    """The explicit ``(lo, hi)`` padding per spatial dim with which oneDNN computes a
    convolution with these settings, or None where it does not take it: 1 to 3 spatial
    dims, float32, 'same', 'valid', 'causal' or non-negative explicit padding, no input
    dilation or mask.  ``shape_info`` is ``(sizes, kernel_size, strides, dilation)``."""
    if not 1 <= n <= 3 or jnp.dtype(dtype) != jnp.float32 or mask is not None:
        return None
    if input_dilation not in (None, 1, (1,) * n):
        return None
    sizes, kernel_size, strides, dilation = shape_info
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID", "CAUSAL"):
            return None
        if padding.upper() == "CAUSAL" and n != 1:
            return None
        return [
            _pads(sz, k, s, d, padding.upper())
            for sz, k, s, d in zip(sizes, kernel_size, strides, dilation)
        ]
    if isinstance(padding, int):
        pads = [(padding, padding)] * n
    elif isinstance(padding, Sequence) and len(padding) == n:
        pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    else:
        return None
    if any(len(p) != 2 or min(p) < 0 for p in pads):
        return None
    return [(int(lo), int(hi)) for lo, hi in pads]


#: The variable collection that holds convolution kernels in oneDNN's layout, made by
#: :func:`pack` for inference on CPU.
PACKED = "packed"

_PACKING = contextvars.ContextVar("kgen_packing", default=False)


def pack(module, variables, *inputs, **kwargs) -> dict:
    """``variables`` with the kernels of ``module``'s oneDNN convolutions also in
    oneDNN's own layout (the :data:`PACKED` collection), for inference at the shapes of
    ``inputs`` (arrays or ``jax.ShapeDtypeStruct``; ``kwargs`` go to ``module.apply``).

    On CPU XLA's oneDNN call otherwise reorders each kernel into that layout on every
    call (:mod:`kgen.runtime.onednn`, "Packed kernels"): ResNet50V2 at batch 1 spent 12
    of 48 ms per call there.  With the collection, ``module.apply`` reads the packed
    copy instead, for every convolution whose input shape oneDNN packs the same way as
    at ``inputs`` (the layout can depend on the batch size: pack for the size you run;
    at other sizes a convolution whose layout differs runs as before).  The values are
    the same.  The parameters are untouched; the collection is a copy of them, so pack
    again after changing them, and save the variables without it (it is for this
    process's oneDNN, not a weights format).  Derivatives, and the forward pass under
    differentiation, use the parameters.  Elsewhere than where
    :func:`kgen.runtime.onednn.available`, ``variables`` come back as they are.
    """
    variables = {name: value for name, value in variables.items() if name != PACKED}
    if not onednn.available():
        return variables
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]

    def packed(variables, *arrays):
        token = _PACKING.set(True)
        try:
            _, state = module.apply(variables, *arrays, mutable=[PACKED], **kwargs)
        finally:
            _PACKING.reset(token)
        return state.get(PACKED, {})

    # Traced, not compiled: which convolutions pack, and with which block (the last
    # dim); the kernels are then packed on the host from the parameters.
    layout = jax.eval_shape(packed, variables, *shapes)
    kernels = _packed_on_host(layout, meta.unbox(variables.get("params", {})))
    return {**variables, PACKED: kernels} if kernels else variables


def _packed_on_host(layout: dict, params: dict) -> dict:
    """The :data:`PACKED` collection of ``layout`` (its shapes) from the kernels at the
    same module paths in ``params``; an entry whose kernel is not there, or does not
    pack to that shape, is left out (that convolution runs unpacked)."""
    out = {}
    for name, node in layout.items():
        if isinstance(node, dict):
            sub = _packed_on_host(node, params.get(name, {}) if isinstance(params, dict) else {})
            if sub:
                out[name] = sub
            continue
        kernel = params.get(name) if isinstance(params, dict) else None
        if name != "kernel" or kernel is None:
            continue
        kernel = np.asarray(kernel, dtype=node.dtype)
        if onednn.packed_shape(kernel.shape, node.shape[-1]) != tuple(node.shape):
            continue
        out[name] = jnp.asarray(onednn.pack(kernel, node.shape[-1]))
    return out


class Conv(nn.Conv):
    """``nn.Conv`` with a pointwise fast path (see the module doc); ``impl`` picks it.

    The parameters are ``nn.Conv``'s in every case, so the class can be swapped for
    ``nn.Conv`` (or back) without touching a weights file.
    """

    impl: str = "auto"

    @nn.compact
    def __call__(self, inputs):
        impl = conv_impl(self.impl)
        if impl == "xla":
            return super().__call__(inputs)
        if impl in ("onednn", "auto"):
            pads = self._onednn_pads(inputs, require_pay=impl == "auto")
            if pads is not None:
                return self._own_conv(inputs, pads)
        if self._padded(inputs):
            return self._own_conv(inputs)
        if not self._pointwise(inputs):
            return super().__call__(inputs)
        n = inputs.ndim - 2
        channels = inputs.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (1,) * n + (channels, self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return pointwise_conv(x, kernel, bias, 1 if self.strides is None else self.strides)

    def _padded(self, inputs) -> bool:
        n = inputs.ndim - 2
        return is_padded(n, self.kernel_size, self.input_dilation, self.padding, self.mask)

    def _onednn_pads(self, inputs, require_pay: bool):
        """The padding oneDNN computes this convolution with, or None where it does not
        take it (or, with ``require_pay``, where :func:`onednn_pays` says no)."""
        n = inputs.ndim - 2
        groups = self.feature_group_count
        if not isinstance(self.kernel_size, Sequence) or len(self.kernel_size) != n:
            return None
        if inputs.shape[-1] % groups:
            return None
        dtype = self.dtype
        if dtype is None:
            dtype = jnp.result_type(inputs.dtype, self.param_dtype)
        strides = _ntuple(1 if self.strides is None else self.strides, n)
        dilation = _ntuple(1 if self.kernel_dilation is None else self.kernel_dilation, n)
        kernel_shape = (*self.kernel_size, inputs.shape[-1] // groups, self.features)
        return onednn_padding(
            inputs.shape,
            kernel_shape,
            strides,
            dilation,
            self.padding,
            self.input_dilation,
            self.mask,
            dtype,
            require_pay,
        )

    def _own_conv(self, inputs, onednn_padding=None):
        """The parameters ``nn.Conv`` makes, and the convolution of them: oneDNN's with
        ``onednn_padding`` where given, else :func:`padded_conv`."""
        n = inputs.ndim - 2
        groups = self.feature_group_count
        in_features = inputs.shape[-1]
        if in_features % groups:
            raise ValueError(f"{in_features} input features, not a multiple of {groups} groups")
        shape = tuple(self.kernel_size) + (in_features // groups, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        strides = _ntuple(1 if self.strides is None else self.strides, n)
        dilation = _ntuple(1 if self.kernel_dilation is None else self.kernel_dilation, n)
        packed = None
        if onednn_padding is not None and groups == 1:
            packed = self._packed(x, kernel, strides, onednn_padding, dilation)
        if packed is not None:
            y = onednn.conv_packed(x, packed, kernel, strides, onednn_padding, dilation)
        elif onednn_padding is not None:
            y = onednn.conv(x, kernel, strides, onednn_padding, dilation, groups)
        else:
            y = padded_conv(
                x, kernel, strides, dilation, self.padding, groups, precision=self.precision
            )
        return y if bias is None else y + bias

    def _packed(self, x, kernel, strides, pads, dilation):
        """This convolution's kernel in oneDNN's layout, from the :data:`PACKED`
        collection (made by :func:`pack`, which this also serves), where oneDNN takes
        that layout for this very problem; else None."""
        packing = _PACKING.get() and self.is_mutable_collection(PACKED)
        if not (packing or self.has_variable(PACKED, "kernel")):
            return None
        pads = tuple(tuple(p) for p in pads)
        block = onednn.packed_block(x.shape, kernel.shape, strides, pads, dilation)
        if block is None:
            return None
        if packing:
            self.put_variable(PACKED, "kernel", onednn.pack(kernel, block))
        packed = self.get_variable(PACKED, "kernel")
        if packed.shape != onednn.packed_shape(kernel.shape, block) or packed.dtype != kernel.dtype:
            return None  # packed for another problem: the kernel as it is
        return packed

    def _pointwise(self, inputs) -> bool:
        return is_pointwise(
            inputs.ndim - 2,
            self.kernel_size,
            self.feature_group_count,
            self.input_dilation,
            self.padding,
            self.mask,
        )


def is_pointwise(n: int, kernel_size, groups: int, input_dilation, padding, mask) -> bool:
    """Whether a convolution with these settings is a strided matrix product."""
    kernel = tuple(kernel_size) if isinstance(kernel_size, Sequence) else None
    return (
        n >= 1
        and kernel is not None
        and len(kernel) == n
        and all(k == 1 for k in kernel)
        and groups == 1
        and input_dilation in (None, 1, (1,) * n)
        and padding in ("SAME", "VALID")
        and mask is None
    )


def is_padded(n: int, kernel_size, input_dilation, padding, mask) -> bool:
    """Whether :func:`padded_conv` computes a convolution with these settings: 'valid'
    or 'same', a kernel larger than 1 somewhere, no input dilation or mask."""
    kernel = tuple(kernel_size) if isinstance(kernel_size, Sequence) else None
    return (
        kernel is not None
        and len(kernel) == n
        and padding in ("VALID", "SAME")
        and any(k > 1 for k in kernel)
        and input_dilation in (None, 1, (1,) * n)
        and mask is None
    )


def padded_conv(x, kernel, strides, dilation, padding="VALID", groups: int = 1, precision=None):
    """A 'valid' or 'same' convolution computed with padding chosen for XLA's CPU
    backend, then cropped to the requested output: the same windows, so the same values
    to float rounding (see the module doc).

    - Where :func:`eigen_pays` (2D, stride 1, mid-sized), the padding after the largest
      spatial dim grows until that dim's output is one longer than its input, which
      sends the convolution to XLA's Eigen kernel instead of YNNPACK's.
    - Where :func:`few_channels_pay` (1 to 4 input channels), :func:`few_channel_conv`.
    - Else a 'valid' convolution gets one zero after each spatial dim.
    - Else (a 'same' one) the padding is 'same''s own.

    A 2D grouped convolution (2 to :data:`MAX_SPLIT_GROUPS` groups, fewer than the
    channels) runs as one such convolution per group, concatenated: YNNPACK's grouped
    convolution was 1.3-4x slower than that (RegNetX002's 3 groups of 8 over
    (8, 56, 56, 24): 10.8 ms against 2.5).
    """
    n = x.ndim - 2
    if n == 2 and 1 < groups <= MAX_SPLIT_GROUPS and groups < x.shape[-1]:
        cin, cout = x.shape[-1] // groups, kernel.shape[-1] // groups
        parts = [
            padded_conv(
                x[..., g * cin : (g + 1) * cin],
                kernel[..., g * cout : (g + 1) * cout],
                strides,
                dilation,
                padding,
                1,
                precision,
            )
            for g in range(groups)
        ]
        return jnp.concatenate(parts, axis=-1)
    sizes = x.shape[1:-1]
    kernel_size = kernel.shape[:n]
    pads = [
        _pads(sz, k, s, d, padding) for sz, k, s, d in zip(sizes, kernel_size, strides, dilation)
    ]
    if few_channels_pay(x.shape, kernel.shape, strides, groups, x.dtype):
        return few_channel_conv(x, kernel, strides, dilation, pads)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    out = [(sz + lo + hi - e) // s + 1 for sz, (lo, hi), e, s in zip(sizes, pads, eff, strides)]
    padded = list(pads)
    if eigen_pays(x.shape, kernel.shape, strides, groups, x.dtype):
        d = max(range(n), key=lambda i: sizes[i])
        lo = pads[d][0]
        padded[d] = (lo, eff[d] - lo)  # output sizes[d] + 1 long
    elif all(p == (0, 0) for p in pads):
        padded = [(0, 1)] * n
    y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=tuple(strides),
        padding=padded,
        rhs_dilation=tuple(dilation),
        dimension_numbers=onednn.LAYOUTS[n],
        feature_group_count=groups,
        precision=precision,
    )
    if padded == pads:
        return y
    return y[(slice(None), *(slice(0, o) for o in out))]


#: Grouped convolutions with up to this many groups run group by group (:func:`padded_conv`).
#: Each group is a convolution of its own to compile: RegNetX002 (3 to 46 groups) at
#: batch 8 ran in 82 ms unsplit, 55 ms split up to 20 groups, 47 ms split up to 64, and
#: its first call (the compile) took 0.9, 2.0 and 4.2 s.
MAX_SPLIT_GROUPS = 24

#: Where XLA's Eigen convolution beat YNNPACK's on this CPU (see :func:`eigen_pays`).
EIGEN_MIN_PIXELS = 4096
EIGEN_MAX_IMAGE = 750_000


def eigen_pays(x_shape, kernel_shape, strides, groups: int, dtype) -> bool:
    """Whether a convolution runs faster on XLA's Eigen kernel than on YNNPACK's, as
    measured at the catalog's shapes on a 2-core x86 CPU (docs/performance.md, Run 4):
    2D, float32, stride 1, one group, at least 16 input features, at least
    :data:`EIGEN_MIN_PIXELS` input pixels in the batch (below that YNNPACK won), and
    at most :data:`EIGEN_MAX_IMAGE` input elements per image (VGG16's 224x224x64 and
    112x112x64 layers were 10-15% faster on YNNPACK)."""
    n = len(x_shape) - 2
    if n != 2 or groups != 1 or jnp.dtype(dtype) != jnp.float32 or any(s != 1 for s in strides):
        return False
    batch, height, width, channels = x_shape
    return (
        channels >= 16
        and batch * height * width >= EIGEN_MIN_PIXELS
        and height * width * channels <= EIGEN_MAX_IMAGE
        and all(k <= size for k, size in zip(kernel_shape[:2], (height, width)))
    )


#: :func:`few_channel_conv` runs convolutions over at most this many input channels ...
FEW_CHANNELS = 4
#: ... with at most this many products (taps times input channels) per output value.
FEW_CHANNEL_TERMS = 75


def few_channels_pay(x_shape, kernel_shape, strides, groups: int, dtype) -> bool:
    """Whether :func:`few_channel_conv` runs a convolution faster than XLA's own kernel,
    as measured on a 2-core AMD EPYC VM (docs/performance.md, Run 6): 2D, float32, one
    group, at most :data:`FEW_CHANNELS` input channels, at most
    :data:`FEW_CHANNEL_TERMS` products per output, and windows that overlap in some
    dim.  Batch 8 (batch 1), XLA's time over this path's: 3x3 over 3 channels at
    stride 2 (InceptionV3, MobileNetV2, ResNetRS) 3.0-4.7x (2.0-2.9x), at stride 1
    (VGG16) 1.6x (1.6x); 3x3 over one channel 2.0x (2.0x); 5x5 over 3 channels 1.8x
    (2.8x).  It lost where a window has 147 products (ResNet50's 7x7 over 3 channels:
    0.75x, 0.27x) and on ConvNeXt's 4x4 stride-4 patches (0.83x, 0.86x), which do
    not overlap."""
    n = len(x_shape) - 2
    if n != 2 or groups != 1 or jnp.dtype(dtype) != jnp.float32:
        return False
    *window, channels, _ = kernel_shape
    return (
        channels <= FEW_CHANNELS
        and math.prod(window) * channels <= FEW_CHANNEL_TERMS
        and any(s < k for s, k in zip(strides, window))
    )


def few_channel_conv(x, kernel, strides, dilation, pads):
    """A convolution of ``x`` (N, *spatial, C) with ``kernel`` (*k, C, F), one group,
    padded by ``pads`` ((lo, hi) per spatial dim), as the sum over the kernel's taps and
    the C input channels of a strided slice of the input, one channel wide, times that
    tap's (F,) kernel row."""
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    acc = None
    for tap, piece in _tap_slices(x, kernel.shape[:-2], strides, dilation):
        for c in range(x.shape[-1]):
            term = piece[..., c : c + 1] * kernel[(*tap, c)]
            acc = term if acc is None else acc + term
    return acc


def pointwise_conv(x, kernel, bias, strides):
    """A 1x1 convolution as ``jnp.dot``: ``x`` (N, *spatial, C), ``kernel`` (1.., C, F)."""
    n = x.ndim - 2
    channels, features = kernel.shape[-2:]
    strides = _ntuple(strides, n)
    if any(s != 1 for s in strides):  # a 1x1 window: 'same' and 'valid' keep every s-th
        x = x[(slice(None), *(slice(None, None, s) for s in strides))]
    y = jnp.dot(x, kernel.reshape(channels, features))
    return y if bias is None else y + bias


def depthwise_impl(impl: str = "auto") -> str:
    """The implementation ``impl`` resolves to on the current backend."""
    return resolve_impl("depthwise", impl, IMPLS, "KGEN_DEPTHWISE")


def _pads(size: int, k: int, stride: int, dilation: int, padding) -> tuple[int, int]:
    """(lo, hi) padding of one spatial dim, as XLA/Flax resolve ``padding``."""
    eff = (k - 1) * dilation + 1
    if padding == "VALID":
        return 0, 0
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + eff - size, 0)
        return total // 2, total - total // 2
    if padding == "CAUSAL":
        return eff - 1, 0
    raise ValueError(f"padding {padding!r}")


def _explicit_pads(x, kernel_size, strides, dilation, padding) -> list[tuple[int, int]]:
    spatial = x.shape[1:-1]
    if isinstance(padding, str):
        return [
            _pads(s, k, st, d, padding.upper())
            for s, k, st, d in zip(spatial, kernel_size, strides, dilation)
        ]
    return [tuple(p) for p in padding]


def depthwise_conv(
    x,
    kernel,
    *,
    strides: Sequence[int],
    padding,
    dilation: Sequence[int],
    impl: str = "auto",
):
    """``x`` (N, *spatial, C) convolved per channel with ``kernel`` (*k, 1, C*M)."""
    n = x.ndim - 2
    kernel_size = kernel.shape[:n]
    channels = x.shape[-1]
    features = kernel.shape[-1]
    pads = _explicit_pads(x, kernel_size, strides, dilation, padding)
    if depthwise_impl(impl) == "xla":
        return lax.conv_general_dilated(
            x,
            kernel.astype(x.dtype),
            window_strides=tuple(strides),
            padding=pads,
            rhs_dilation=tuple(dilation),
            dimension_numbers=onednn.LAYOUTS[n],
            feature_group_count=channels,
        )
    mult = features // channels
    if mult > 1:  # output channel c * M + m reads input channel c
        x = jnp.repeat(x, mult, axis=-1)
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    kernel = kernel.reshape(*kernel_size, features).astype(x.dtype)
    acc = None
    for tap, piece in _tap_slices(x, kernel_size, strides, dilation):
        piece = piece * kernel[tap]
        acc = piece if acc is None else acc + piece
    return acc


def _tap_slices(x, kernel_size, strides, dilation):
    """For each tap of a kernel over the padded ``x`` (N, *spatial, C), in row-major
    order: the tap, and the strided slice of ``x`` (N, *out, C) it multiplies."""
    n = len(kernel_size)
    out_shape = [
        (x.shape[1 + i] - ((kernel_size[i] - 1) * dilation[i] + 1)) // strides[i] + 1
        for i in range(n)
    ]
    for tap in _taps(kernel_size):
        start = [0, *(t * d for t, d in zip(tap, dilation)), 0]
        limit = [
            x.shape[0],
            *(s + (o - 1) * st + 1 for s, o, st in zip(start[1:-1], out_shape, strides)),
            x.shape[-1],
        ]
        yield tap, lax.slice(x, start, limit, [1, *strides, 1])


def _taps(kernel_size) -> list[tuple[int, ...]]:
    taps = [()]
    for k in kernel_size:
        taps = [(*t, i) for t in taps for i in range(k)]
    return taps


class DepthwiseConv(nn.Module):
    """Keras ``DepthwiseConv1D/2D`` (and grouped ``Conv`` with groups == channels).

    Same parameters and layout as ``nn.Conv(features, kernel_size,
    feature_group_count=channels)``; the activation is applied by the caller.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] | int = 1
    padding: str | Sequence[tuple[int, int]] = "VALID"
    kernel_dilation: Sequence[int] | int = 1
    use_bias: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        n = len(self.kernel_size)
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (*self.kernel_size, 1, self.features)
        )
        y = depthwise_conv(
            x,
            kernel,
            strides=_ntuple(self.strides, n),
            padding=self.padding,
            dilation=_ntuple(self.kernel_dilation, n),
            impl=self.impl,
        )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


def _ntuple(value, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, Sequence) else (int(value),) * n
