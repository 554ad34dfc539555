"""Keras attention layers: ``MultiHeadAttention``, ``Attention`` and ``AdditiveAttention``.

``MultiHeadAttention`` follows ``keras/src/layers/attention/multi_head_attention.py``:
the query/key/value projections are ``EinsumDense`` layers with kernels
``(dim, heads, key_dim)`` (Keras layout, kept as is), the query is scaled by
``1 / sqrt(key_dim)``, the softmax runs over the attention axes with masked scores
replaced by a large negative number, and the output projection has kernel
``(heads, value_dim, *output_shape)``.  The einsum equations are built exactly as Keras
builds them, so any input rank and ``attention_axes`` work.  Dropout on the attention
weights acts in training only: these modules are inference-only there.

``Attention`` (Luong, ``score_mode`` dot or concat) and ``AdditiveAttention`` (Bahdanau)
follow ``keras/src/layers/attention/attention.py``; masked scores get ``-1e9`` added.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["AdditiveAttention", "Attention", "MultiHeadAttention"]

_LARGE_NEGATIVE = -1e9  # keras.src.layers.activations.softmax._large_negative_number


def _letters(start: int, n: int) -> str:
    return string.ascii_lowercase[start : start + n]


def projection_equation(free_dims: int, bound_dims: int, output_dims: int) -> str:
    """Keras's ``_build_proj_equation``: e.g. ``abc,cde->abde`` for (1 free... ) dims."""
    free = _letters(0, free_dims)
    bound = _letters(free_dims, bound_dims)
    out = _letters(free_dims + bound_dims, output_dims)
    return f"{free}{bound},{bound}{out}->{free}{out}"


def attention_equations(rank: int, attn_axes: Sequence[int]) -> tuple[str, str]:
    """Keras's ``_build_attention_equation``: (dot-product, combine) einsum equations
    for projected tensors of ``rank`` (batch, ..., heads, channels)."""
    target = _letters(0, rank)
    batch_dims = [i for i in range(rank) if i not in attn_axes and i != rank - 1]
    source, offset = "", rank
    for i in range(rank):
        if i in batch_dims or i == rank - 1:
            source += target[i]
        else:
            source += string.ascii_lowercase[offset]
            offset += 1
    product = (
        "".join(target[i] for i in batch_dims)
        + "".join(target[i] for i in attn_axes)
        + "".join(source[i] for i in attn_axes)
    )
    return f"{source},{target}->{product}", f"{product},{source}->{target}"


class EinsumProjection(nn.Module):
    """Keras ``EinsumDense`` as ``MultiHeadAttention`` builds it: ``bound_dims`` trailing
    input dims contracted with a kernel of shape ``(*bound, *out_dims)``, plus a bias of
    shape ``out_dims``."""

    out_dims: Sequence[int]
    bound_dims: int = 1
    use_bias: bool = True
    kernel_axes: Sequence[str] | None = None  # logical axis names (see logical_init)

    @nn.compact
    def __call__(self, x):
        out_dims = tuple(self.out_dims)
        equation = projection_equation(x.ndim - self.bound_dims, self.bound_dims, len(out_dims))
        kernel_shape = tuple(x.shape[x.ndim - self.bound_dims :]) + out_dims
        axes = self.kernel_axes
        kernel_init = logical_init(nn.initializers.lecun_normal(), axes)
        kernel = self.param("kernel", kernel_init, kernel_shape)
        y = jnp.einsum(equation, x, kernel)
        if self.use_bias:
            bias_axes = None if axes is None else tuple(axes[self.bound_dims :])
            y = y + self.param("bias", logical_init(nn.initializers.zeros, bias_axes), out_dims)
        return y


def logical_init(init, axes: Sequence[str] | None):
    """``init`` carrying logical axis names (``nn.with_logical_partitioning``), so that
    ``nn.get_partition_spec`` of the initialised variables names each kernel's axes."""
    return init if axes is None else nn.with_logical_partitioning(init, tuple(axes))


def _and(a, b):
    return b if a is None else (a if b is None else jnp.logical_and(a, b))


def _causal_mask(q_len: int, v_len: int):
    """``(1, T, S)``, True where key position <= query position."""
    return (jnp.arange(q_len)[:, None] >= jnp.arange(v_len)[None, :])[None]


class MultiHeadAttention(nn.Module):
    """Keras ``MultiHeadAttention`` (inference).

    Call as Keras does: ``(query, value, key=None)`` plus the Keras masks of the inputs
    (``query_mask``/``value_mask``/``key_mask``, ``(batch, steps)``), an explicit
    ``attention_mask`` ``(batch, T, S)``, ``use_causal_mask`` and
    ``return_attention_scores``.
    """

    num_heads: int
    key_dim: int
    value_dim: int | None = None
    output_shape: Sequence[int] | None = None
    attention_axes: Sequence[int] | None = None
    use_bias: bool = True
    use_gate: bool = False
    sliding_window: int | None = None
    #: Name the projections' axes ("embed", "heads", "kv") for tensor parallelism.
    logical_axes: bool = False

    @nn.compact
    def __call__(
        self,
        query,
        value,
        key=None,
        *,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask: bool = False,
        return_attention_scores: bool = False,
    ):
        key = value if key is None else key
        heads, value_dim = self.num_heads, self.value_dim or self.key_dim
        mask = self._attention_mask(
            query, value, query_mask, value_mask, key_mask, attention_mask, use_causal_mask
        )
        into = ("embed", "heads", "kv") if self.logical_axes else None
        gate = None
        if self.use_gate:
            gate = EinsumProjection(
                (heads, value_dim), use_bias=self.use_bias, kernel_axes=into, name="gate"
            )(query)
            gate = jax.nn.sigmoid(gate)
        q = EinsumProjection(
            (heads, self.key_dim), use_bias=self.use_bias, kernel_axes=into, name="query"
        )(query)
        k = EinsumProjection(
            (heads, self.key_dim), use_bias=self.use_bias, kernel_axes=into, name="key"
        )(key)
        v = EinsumProjection(
            (heads, value_dim), use_bias=self.use_bias, kernel_axes=into, name="value"
        )(value)

        rank = q.ndim
        if self.attention_axes is None:
            axes = tuple(range(1, rank - 2))
        else:
            axes = tuple(a if a >= 0 else (rank - 1) + a for a in self.attention_axes)
        dot_equation, combine_equation = attention_equations(rank, axes)
        q = q * (1.0 / math.sqrt(float(self.key_dim)))
        scores = jnp.einsum(dot_equation, k, q)
        if mask is not None:
            for _ in range(scores.ndim - mask.ndim):
                mask = jnp.expand_dims(mask, axis=-len(axes) * 2 - 1)
            scores = jnp.where(mask, scores, _LARGE_NEGATIVE)
        norm_axes = tuple(range(scores.ndim - len(axes), scores.ndim))
        if len(norm_axes) == 1:
            weights = jax.nn.softmax(scores, axis=-1)
        else:
            weights = jnp.exp(scores - jax.nn.logsumexp(scores, axis=norm_axes, keepdims=True))
        output = jnp.einsum(combine_equation, weights, v)
        if gate is not None:
            output = output * gate
        out_dims = tuple(self.output_shape) if self.output_shape else (query.shape[-1],)
        out_axes = None
        if self.logical_axes:
            out_axes = ("heads", "kv", "embed", *(["mlp"] * (len(out_dims) - 1)))
        output = EinsumProjection(
            out_dims,
            bound_dims=2,
            use_bias=self.use_bias,
            kernel_axes=out_axes,
            name="attention_output",
        )(output)
        if return_attention_scores:
            return output, weights
        return output

    def _attention_mask(
        self, query, value, query_mask, value_mask, key_mask, attention_mask, use_causal_mask
    ):
        """Keras's ``_compute_attention_mask``: the AND of every mask given, ``(B, T, S)``."""
        auto = None
        if query_mask is not None:
            auto = jnp.asarray(query_mask).astype(bool)[..., None]
        if value_mask is not None:
            auto = _and(auto, jnp.expand_dims(jnp.asarray(value_mask).astype(bool), -2))
        if key_mask is not None:
            auto = _and(auto, jnp.expand_dims(jnp.asarray(key_mask).astype(bool), -2))
        if use_causal_mask:
            auto = _and(auto, _causal_mask(query.shape[1], value.shape[1]))
        if self.sliding_window is not None:
            rows = jnp.arange(query.shape[1])[None, :, None]
            cols = jnp.arange(value.shape[1])[None, None, :]
            auto = _and(auto, jnp.abs(rows - cols) < self.sliding_window)
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask).astype(bool)
        return _and(attention_mask, auto)


def apply_scores(scores, value, *, query_mask=None, value_mask=None, use_causal_mask=False):
    """Keras ``BaseDenseAttention._apply_scores`` plus the query mask: masked scores get
    ``-1e9`` added, softmax over the value steps, weighted sum of ``value``, then rows
    of masked queries set to zero.  Returns ``(output, weights)``."""
    scores_mask = None
    if value_mask is not None:
        scores_mask = jnp.expand_dims(jnp.asarray(value_mask).astype(bool), -2)
    if use_causal_mask:
        scores_mask = _and(scores_mask, _causal_mask(scores.shape[-2], scores.shape[-1]))
    if scores_mask is not None:
        scores = jnp.where(jnp.logical_not(scores_mask), scores + _LARGE_NEGATIVE, scores)
    weights = jax.nn.softmax(scores, axis=-1)
    output = weights @ value
    if query_mask is not None:
        output = jnp.where(jnp.asarray(query_mask).astype(bool)[..., None], output, 0.0)
    return output, weights


class Attention(nn.Module):
    """Keras ``Attention``: ``score_mode="dot"`` scores ``query @ key.T`` (times ``scale``
    with ``use_scale``); ``"concat"`` scores
    ``concat_score_weight * sum(tanh(scale * (query + key)))``."""

    use_scale: bool = False
    score_mode: str = "dot"

    @nn.compact
    def __call__(
        self,
        query,
        value,
        key=None,
        *,
        query_mask=None,
        value_mask=None,
        use_causal_mask: bool = False,
        return_attention_scores: bool = False,
    ):
        key = value if key is None else key
        scale = self.param("scale", nn.initializers.ones, ()) if self.use_scale else None
        if self.score_mode == "dot":
            scores = query @ jnp.swapaxes(key, -2, -1)
            if scale is not None:
                scores = scores * scale
        elif self.score_mode == "concat":
            weight = self.param("concat_score_weight", nn.initializers.ones, ())
            summed = query[..., :, None, :] + key[..., None, :, :]
            if scale is not None:
                summed = scale * summed
            scores = weight * jnp.sum(jnp.tanh(summed), axis=-1)
        else:
            raise ValueError(f"unknown score_mode {self.score_mode!r}")
        output, weights = apply_scores(
            scores,
            value,
            query_mask=query_mask,
            value_mask=value_mask,
            use_causal_mask=use_causal_mask,
        )
        return (output, weights) if return_attention_scores else output


class AdditiveAttention(nn.Module):
    """Keras ``AdditiveAttention``: scores ``sum(scale * tanh(query + key))``, with a
    learned ``scale`` of shape ``(dim,)`` when ``use_scale``."""

    use_scale: bool = True

    @nn.compact
    def __call__(
        self,
        query,
        value,
        key=None,
        *,
        query_mask=None,
        value_mask=None,
        use_causal_mask: bool = False,
        return_attention_scores: bool = False,
    ):
        key = value if key is None else key
        scale = 1.0
        if self.use_scale:
            scale = self.param("scale", nn.initializers.ones, (query.shape[-1],))
        scores = jnp.sum(scale * jnp.tanh(query[..., :, None, :] + key[..., None, :, :]), axis=-1)
        output, weights = apply_scores(
            scores,
            value,
            query_mask=query_mask,
            value_mask=value_mask,
            use_causal_mask=use_causal_mask,
        )
        return (output, weights) if return_attention_scores else output
