"""Fine-tune a converted model written as Flax NNX (``--api nnx``), with ``nnx.Optimizer``.

The recipe of :mod:`kgen.examples.fine_tune`, the NNX way:

1. ``kgen.load(..., outputs=("gap",), api="nnx")``: the trained digits CNN that ships
   with kgen, cut at its pooled features, as an ``nnx.Module`` holding its weights.
2. A ``FineTuned`` module puts a fresh ``nnx.Linear`` head on it for a new task (is the
   digit even, is it at least 5: four classes) and calls the backbone with
   ``train=False``, so its BatchNorm uses its moving statistics and updates nothing.
3. ``nnx.Optimizer(model, optax.adam(...), wrt=...)`` with a filter that takes only the
   head's parameters: the backbone is frozen because nothing differentiates or updates
   it.
4. A few epochs under ``nnx.jit``, then held-out accuracy; the model's state is saved
   with ``flax.serialization`` and restored into a fresh model.

Run it with ``python -m kgen.examples.fine_tune_nnx`` (one JSON line).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization

import kgen
from kgen.examples.digits.data import MODEL_PATH, load_split
from kgen.examples.fine_tune import new_task_labels

__all__ = ["FineTuned", "run"]


class FineTuned(nnx.Module):
    """A converted backbone (kept in inference mode) and a fresh classification head."""

    def __init__(self, backbone: nnx.Module, features: int, classes: int, *, rngs: nnx.Rngs):
        self.backbone = backbone
        self.head = nnx.Linear(features, classes, rngs=rngs)

    def __call__(self, x):
        return self.head(self.backbone(x, train=False))  # frozen: moving statistics


#: What the optimizer trains: the head's parameters, nothing of the backbone.
HEAD = nnx.All(nnx.Param, nnx.PathContains("head"))


def _model(seed: int):
    backbone, _ = kgen.load(str(MODEL_PATH), outputs=("gap",), api="nnx")
    x_train = load_split()[0]
    features = int(backbone(jnp.asarray(x_train[:1])).shape[-1])
    return FineTuned(backbone, features, 4, rngs=nnx.Rngs(seed))


def run(epochs: int = 8, batch: int = 64, seed: int = 0) -> dict:
    """Fine-tune the head; returns accuracies and whether the backbone stayed frozen."""
    x_train, y_train, x_test, y_test = load_split()
    y_train, y_test = new_task_labels(y_train), new_task_labels(y_test)
    model = _model(seed)
    backbone_before = jax.tree_util.tree_map(np.array, nnx.to_pure_dict(nnx.state(model.backbone)))
    head_before = np.array(model.head.kernel[...])
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=HEAD)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, HEAD))(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def predict(model, x):
        return jnp.argmax(model(x), -1)

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            step(model, optimizer, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]))
    accuracy = float(np.mean(np.asarray(predict(model, jnp.asarray(x_test))) == y_test))

    saved = serialization.to_bytes(nnx.to_pure_dict(nnx.state(model)))
    restored = _model(seed + 1)  # another head: the restore must bring the trained one
    state = nnx.state(restored)
    nnx.replace_by_pure_dict(state, serialization.msgpack_restore(saved))
    nnx.update(restored, state)
    restored_accuracy = float(np.mean(np.asarray(predict(restored, jnp.asarray(x_test))) == y_test))

    backbone_after = nnx.to_pure_dict(nnx.state(model.backbone))
    unchanged = jax.tree_util.tree_all(
        jax.tree_util.tree_map(
            lambda a, b: bool(np.array_equal(a, b)), backbone_before, backbone_after
        )
    )
    return {
        "epochs": epochs,
        "test_images": len(x_test),
        "accuracy": accuracy,
        "restored_accuracy": restored_accuracy,
        "chance": float(np.max(np.bincount(y_test)) / len(y_test)),
        "backbone_unchanged": bool(unchanged),
        "head_trained": not np.array_equal(np.asarray(model.head.kernel[...]), head_before),
        "saved_bytes": len(saved),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run()))
