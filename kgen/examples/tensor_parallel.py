"""Tensor-parallel inference and training of a converted transformer on a 2x2 device mesh.

A small keras.io-style text classifier (token and position embeddings, two transformer
blocks with ``MultiHeadAttention`` and a feed-forward ``Dense`` pair, a pooled
classifier) is built in Keras with random weights and converted.  Its generated module
names the axes of every kernel (``kgen emit --logical-axes``, the default for models
with attention): ``"embed"`` for the model width, ``"mlp"`` for the feed-forward width,
``"heads"``/``"kv"`` for attention, ``"vocab"`` for the embedding rows.

The shardings come from Flax's standard logical-axis machinery:
``nn.get_partition_spec(jax.eval_shape(module.init, ...))`` gives each variable's
logical axes, and :data:`RULES` maps them onto a ``("data", "model")`` mesh: heads and
the feed-forward width are split over ``"model"`` (Megatron-style tensor parallelism),
the batch over ``"data"``.  The converted weights are placed with those shardings and
``jax.jit`` partitions the computation.  The results (logits, and one SGD step's
updated parameters) are compared with the same computation on one device, and the
logits with Keras.  On a CPU, make host devices with::

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m kgen.examples.tensor_parallel

Prints one JSON line.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from kgen.examples.data_parallel import _rel

__all__ = ["RULES", "build_keras_model", "run"]

#: Logical axis -> mesh axis (None: replicated).
RULES = (
    ("batch", "data"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", None),
)


def build_keras_model(vocab: int = 64, steps: int = 12, dim: int = 32, heads: int = 4):
    """The Keras model: 2 transformer blocks of width ``dim``, feed-forward ``2 * dim``."""
    import keras

    layers = keras.layers
    tokens = keras.Input((steps,), dtype="int32", name="tokens")
    x = layers.Embedding(vocab, dim, name="token_embedding")(tokens)
    positions = layers.Embedding(steps, dim, name="position_embedding")(keras.ops.arange(steps))
    x = x + positions
    for i in range(2):
        attended = layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attention")(x, x)
        x = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm1")(x + attended)
        hidden = layers.Dense(2 * dim, activation="relu", name=f"block{i}_ff1")(x)
        x = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm2")(
            x + layers.Dense(dim, name=f"block{i}_ff2")(hidden)
        )
    pooled = layers.GlobalAveragePooling1D(name="pool")(x)
    logits = layers.Dense(4, name="logits")(pooled)
    return keras.Model(tokens, logits, name="text_classifier")


def run(batch: int = 8, seed: int = 0) -> dict:
    """Shard the converted model over a ("data", "model") mesh; compare with one device."""
    import kgen
    from kgen.verify import randomize

    model = build_keras_model()
    randomize(model, seed)
    conversion = kgen.convert(model)  # logical axes: on, the model has attention
    module, variables = conversion.module, conversion.variables
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, 64, (batch, 12)).astype(np.int32))
    labels = jnp.asarray(rng.integers(0, 4, (batch,)).astype(np.int32))

    devices = np.array(jax.devices())
    mesh = Mesh(devices.reshape(2, len(devices) // 2), ("data", "model"))
    abstract = jax.eval_shape(module.init, jax.random.key(0), tokens)
    specs = nn.get_partition_spec(abstract)  # logical axis names per variable
    shardings = nn.logical_to_mesh_sharding(specs, mesh, RULES)
    by_batch = NamedSharding(mesh, P("data"))
    optimizer = optax.sgd(0.1)

    def loss_fn(params, x, y):
        logits = module.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        changes, _ = optimizer.update(grads, optimizer.init(params), params)
        return optax.apply_updates(params, changes), loss

    forward = jax.jit(module.apply)
    single = jax.sharding.SingleDeviceSharding(devices.flat[0])
    params_1 = jax.device_put(variables["params"], single)
    logits_1 = forward({"params": params_1}, tokens)
    stepped_1, loss_1 = step(params_1, tokens, labels)

    params_n = jax.device_put(variables["params"], shardings["params"])
    x_n, y_n = jax.device_put((tokens, labels), by_batch)
    logits_n = forward({"params": params_n}, x_n)
    stepped_n, loss_n = step(params_n, x_n, y_n)

    flat = jax.tree_util.tree_leaves_with_path(params_n)
    split = {
        jax.tree_util.keystr(path): [list(a.shape), list(a.addressable_shards[0].data.shape)]
        for path, a in flat
        if a.addressable_shards[0].data.shape != a.shape
    }
    keras_logits = np.asarray(model(np.asarray(tokens)))
    return {
        "devices": int(devices.size),
        "mesh": dict(mesh.shape),
        "variables": len(flat),
        "sharded_variables": len(split),
        "example_shards": dict(sorted(split.items())[:3]),
        "logits_max_rel": _rel(logits_1, logits_n),
        "logits_vs_keras_max_rel": _rel(keras_logits, logits_n),
        "stepped_params_max_rel": _rel(stepped_1, stepped_n),
        "stepped_sharding_kept": all(
            a.sharding.is_equivalent_to(b.sharding, a.ndim)
            for a, b in zip(
                jax.tree_util.tree_leaves(stepped_n), jax.tree_util.tree_leaves(params_n)
            )
        ),
        "loss": [float(loss_1), float(loss_n)],
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run()))
