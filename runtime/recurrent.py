"""Keras recurrent layers: ``SimpleRNN``, ``LSTM``, ``GRU`` and ``Bidirectional``.

Each cell follows the Keras 3 formula (``keras/src/layers/rnn/{simple_rnn,lstm,gru}.py``,
``implementation=2``) with the weights in Keras layout, and the time loop follows
``keras.src.backend.tensorflow.rnn.rnn``:

* ``go_backwards`` reads the sequence from the end and returns the outputs in that
  (reversed) order;
* with a ``mask`` (``(batch, steps)``, True = keep), a masked step keeps the previous
  states and repeats the previous output (zeros before the first step), or outputs
  zeros with ``zero_output_for_mask`` (what ``Bidirectional`` sets for sequences);
* the last output is the last row of the (masked) outputs.

Dropout and recurrent dropout only act in training: these modules are inference-only
(identity), as the layers are when ``training`` is false.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["GRU", "LSTM", "Bidirectional", "SimpleRNN", "run_rnn"]


def run_rnn(
    step, inputs, initial_state, *, mask=None, go_backwards=False, zero_output_for_mask=False
):
    """Scan ``step(x_t, states) -> (output, new_states)`` over axis 1 of ``inputs``.

    Returns ``(last_output, outputs, final_states)`` as Keras's backend ``rnn`` does;
    ``outputs`` is ``(batch, steps, units)`` in processing order.
    """
    xs = jnp.swapaxes(inputs, 0, 1)  # time-major
    states = tuple(initial_state)
    if go_backwards:
        xs = xs[::-1]
    if mask is None:

        def body(carry, x_t):
            out, new = step(x_t, carry)
            return tuple(new), out

        states, outputs = lax.scan(body, states, xs)
    else:
        ms = jnp.swapaxes(jnp.asarray(mask).astype(bool), 0, 1)
        if go_backwards:
            ms = ms[::-1]

        def body(carry, inp):
            old, prev = carry
            x_t, m_t = inp
            out, new = step(x_t, old)
            keep = m_t[:, None]
            out = jnp.where(keep, out, jnp.zeros_like(out) if zero_output_for_mask else prev)
            new = tuple(jnp.where(keep, n, o) for n, o in zip(new, old))
            return (new, out), out

        prev0 = jnp.zeros_like(states[0])  # every Keras cell's output has the h-state's shape
        (states, _), outputs = lax.scan(body, (states, prev0), (xs, ms))
    return outputs[-1], jnp.swapaxes(outputs, 0, 1), states


def _identity(x):
    return x


class _Recurrent(nn.Module):
    """Fields and the loop shared by the recurrent layers."""

    units: int
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    zero_output_for_mask: bool = False
    use_bias: bool = True

    n_gates = 1
    n_states = 1

    def _weights(self, features: int, bias_shape=None):
        gates = self.n_gates * self.units
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (features, gates))
        recurrent = self.param(
            "recurrent_kernel", nn.initializers.orthogonal(), (self.units, gates)
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, bias_shape or (gates,))
        return kernel, recurrent, bias

    def _initial_state(self, x, initial_state):
        if initial_state is None:
            zeros = jnp.zeros((x.shape[0], self.units), x.dtype)
            return (zeros,) * self.n_states
        if not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        return tuple(jnp.asarray(s, x.dtype) for s in initial_state)

    def _run(self, step, x, initial_state, mask):
        if isinstance(mask, (list, tuple)):  # Keras takes the first of nested masks
            mask = mask[0]
        last, outputs, states = run_rnn(
            step,
            x,
            self._initial_state(x, initial_state),
            mask=mask,
            go_backwards=self.go_backwards,
            zero_output_for_mask=self.zero_output_for_mask,
        )
        output = outputs if self.return_sequences else last
        if self.return_state:
            return (output, *states)
        return output


class SimpleRNN(_Recurrent):
    """Keras ``SimpleRNN``: ``h = activation(x @ kernel + bias + h_prev @ recurrent_kernel)``."""

    activation: Callable | None = jnp.tanh

    @nn.compact
    def __call__(self, x, initial_state=None, mask=None):
        kernel, recurrent, bias = self._weights(x.shape[-1])
        activation = self.activation or _identity

        def step(x_t, states):
            h = x_t @ kernel
            if bias is not None:
                h = h + bias
            out = activation(h + states[0] @ recurrent)
            return out, (out,)

        return self._run(step, x, initial_state, mask)


class LSTM(_Recurrent):
    """Keras ``LSTM``: gates ``i, f, c, o`` in that order along the last kernel axis;
    kernel ``(features, 4 units)``, recurrent kernel ``(units, 4 units)``, bias
    ``(4 units,)``.  States ``[h, c]``."""

    activation: Callable | None = jnp.tanh
    recurrent_activation: Callable | None = jax.nn.sigmoid

    n_gates = 4
    n_states = 2

    @nn.compact
    def __call__(self, x, initial_state=None, mask=None):
        kernel, recurrent, bias = self._weights(x.shape[-1])
        act = self.activation or _identity
        rec_act = self.recurrent_activation or _identity

        def step(x_t, states):
            h_tm1, c_tm1 = states
            z = x_t @ kernel + h_tm1 @ recurrent
            if bias is not None:
                z = z + bias
            z0, z1, z2, z3 = jnp.split(z, 4, axis=-1)
            i = rec_act(z0)
            f = rec_act(z1)
            c = f * c_tm1 + i * act(z2)
            o = rec_act(z3)
            h = o * act(c)
            return h, (h, c)

        return self._run(step, x, initial_state, mask)


class GRU(_Recurrent):
    """Keras ``GRU``: gates ``z, r, h``; kernel ``(features, 3 units)``, recurrent kernel
    ``(units, 3 units)``.  With ``reset_after`` (the Keras 3 default) the bias is
    ``(2, 3 units)`` (input bias, recurrent bias) and the reset gate multiplies the
    projected state; without it the bias is ``(3 units,)`` and the reset gate multiplies
    the state before its projection."""

    activation: Callable | None = jnp.tanh
    recurrent_activation: Callable | None = jax.nn.sigmoid
    reset_after: bool = True

    n_gates = 3
    n_states = 1

    @nn.compact
    def __call__(self, x, initial_state=None, mask=None):
        u = self.units
        bias_shape = (2, 3 * u) if self.reset_after else (3 * u,)
        kernel, recurrent, bias = self._weights(x.shape[-1], bias_shape)
        act = self.activation or _identity
        rec_act = self.recurrent_activation or _identity
        input_bias = recurrent_bias = None
        if bias is not None:
            input_bias, recurrent_bias = (bias[0], bias[1]) if self.reset_after else (bias, None)

        def step(x_t, states):
            h_tm1 = states[0]
            matrix_x = x_t @ kernel
            if input_bias is not None:
                matrix_x = matrix_x + input_bias
            x_z, x_r, x_h = jnp.split(matrix_x, 3, axis=-1)
            if self.reset_after:
                matrix_inner = h_tm1 @ recurrent
                if recurrent_bias is not None:
                    matrix_inner = matrix_inner + recurrent_bias
            else:
                matrix_inner = h_tm1 @ recurrent[:, : 2 * u]
            z = rec_act(x_z + matrix_inner[:, :u])
            r = rec_act(x_r + matrix_inner[:, u : 2 * u])
            if self.reset_after:
                recurrent_h = r * matrix_inner[:, 2 * u :]
            else:
                recurrent_h = (r * h_tm1) @ recurrent[:, 2 * u :]
            hh = act(x_h + recurrent_h)
            h = z * h_tm1 + (1 - z) * hh
            return h, (h,)

        return self._run(step, x, initial_state, mask)


class Bidirectional(nn.Module):
    """Keras ``Bidirectional``: ``layer(**layer_kwargs)`` forwards and (by default) the same
    layer with ``go_backwards`` flipped backwards, their outputs merged with
    ``merge_mode`` (``"concat"``, ``"sum"``, ``"mul"``, ``"ave"`` or None for both).

    The sub-layers are named ``forward_layer`` and ``backward_layer``, as the Keras
    attributes.  ``initial_state`` holds the forward states, then the backward ones.
    """

    layer: Any  # a recurrent module class, e.g. rt.LSTM
    layer_kwargs: dict
    backward_layer: Any = None  # default: ``layer``
    backward_kwargs: dict | None = None  # default: ``layer_kwargs``, go_backwards flipped
    merge_mode: str | None = "concat"

    @nn.compact
    def __call__(self, x, initial_state=None, mask=None):
        fwd_kwargs = dict(self.layer_kwargs)
        if self.backward_kwargs is None:
            bwd_kwargs = dict(fwd_kwargs, go_backwards=not fwd_kwargs.get("go_backwards", False))
        else:
            bwd_kwargs = dict(self.backward_kwargs)
        forward = self.layer(**fwd_kwargs, name="forward_layer")
        backward = (self.backward_layer or self.layer)(**bwd_kwargs, name="backward_layer")
        fwd_state = bwd_state = None
        if initial_state is not None:
            half = len(initial_state) // 2
            fwd_state, bwd_state = list(initial_state[:half]), list(initial_state[half:])
        y = forward(x, fwd_state, mask)
        y_rev = backward(x, bwd_state, mask)
        return_state = fwd_kwargs.get("return_state", False)
        states = ()
        if return_state:
            states = tuple(y[1:]) + tuple(y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        if fwd_kwargs.get("return_sequences", False):
            y_rev = jnp.flip(y_rev, axis=1)
        if self.merge_mode == "concat":
            output = (jnp.concatenate([y, y_rev], axis=-1),)
        elif self.merge_mode == "sum":
            output = (y + y_rev,)
        elif self.merge_mode == "ave":
            output = ((y + y_rev) / 2,)
        elif self.merge_mode == "mul":
            output = (y * y_rev,)
        elif self.merge_mode is None:
            output = (y, y_rev)
        else:
            raise ValueError(f"unknown merge_mode {self.merge_mode!r}")
        if len(output) == 1 and not states:
            return output[0]
        return output + states
