"""Data-parallel inference and training of a generated module over several devices.

The batch is sharded over a one-axis device mesh and the variables are replicated, with
:mod:`jax.sharding`; ``jax.jit`` partitions the computation (BatchNorm's training-mode
statistics are still those of the whole batch).  The results are compared with the same
computation on one device.  On a CPU, make host devices with::

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m kgen.examples.data_parallel

The model is the digits CNN that ships with kgen, loaded with :func:`kgen.load` (the
first run converts it; later runs are served from kgen's cache).  Prints one JSON line.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import kgen
from kgen.examples.digits.data import MODEL_PATH, load_split

__all__ = ["run"]


def _train_step(module, optimizer):
    def loss_fn(params, state, x, y, rng):
        logits, updates = module.apply(
            {"params": params, **state},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},  # the same mask however the batch is sharded
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates

    def step(params, state, opt_state, x, y, rng):
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y, rng)
        changes, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, changes), updates, opt_state, loss

    return step


def _rel(reference, got) -> float:
    leaves = zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(got))
    worst = 0.0
    for r, g in leaves:
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        worst = max(worst, float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-30)))
    return worst


def run(batch_per_device: int = 8) -> dict:
    """Run inference and one SGD step sharded and on one device; return the comparison."""
    module, variables = kgen.load(str(MODEL_PATH))
    _, _, x_test, y_test = load_split()
    devices = jax.devices()
    n = batch_per_device * len(devices)
    x, y = jnp.asarray(x_test[:n]), jnp.asarray(y_test[:n])

    mesh = Mesh(np.array(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    by_batch = NamedSharding(mesh, P("data"))
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    optimizer = optax.sgd(0.1)
    step = jax.jit(_train_step(module, optimizer))
    forward = jax.jit(module.apply)

    def on(sharding_vars, sharding_batch):
        p, s = jax.device_put((params, state), sharding_vars)
        opt_state = jax.device_put(optimizer.init(params), sharding_vars)
        xs, ys = jax.device_put((x, y), sharding_batch)
        logits = forward({"params": p, **s}, xs)
        new_params, new_state, _, loss = step(p, s, opt_state, xs, ys, jax.random.key(0))
        return logits, new_params, new_state, loss

    single = jax.sharding.SingleDeviceSharding(devices[0])
    logits_1, params_1, state_1, loss_1 = on(single, single)
    logits_n, params_n, state_n, loss_n = on(replicated, by_batch)
    return {
        "devices": len(devices),
        "batch": n,
        "logits_sharding": str(logits_n.sharding.spec),
        "logits_max_rel": _rel(logits_1, logits_n),
        "params_max_rel": _rel(params_1, params_n),
        "batch_stats_max_rel": _rel(state_1, state_n),
        "loss": [float(loss_1), float(loss_n)],
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run()))
