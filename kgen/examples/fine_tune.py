"""Fine-tune a converted model: a frozen backbone, a new head, optax and a flax TrainState.

The usual transfer-learning recipe, on data that ships with scikit-learn:

1. ``kgen.load(..., outputs=("gap",))``: the trained digits CNN that ships with kgen,
   cut at its pooled features (the layer named ``gap``) -- the backbone.
2. A new ``nn.Dense`` head for a new task: is the digit even, and is it at least 5
   (four classes), learnt from the same images.
3. ``optax.multi_transform`` trains the head with Adam and gives the backbone zero
   updates; the backbone runs with ``train=False``, so its BatchNorm uses its moving
   statistics and updates nothing.
4. A few epochs, then held-out accuracy; the state is saved with
   ``flax.serialization`` and restored.

Run it with ``python -m kgen.examples.fine_tune`` (one JSON line).
"""

from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, traverse_util
from flax.training import train_state

import kgen
from kgen.examples.digits.data import MODEL_PATH, load_split

__all__ = ["FineTuned", "new_task_labels", "run"]


def new_task_labels(digits: np.ndarray) -> np.ndarray:
    """The new task's four classes: 2 * (digit >= 5) + (digit is even)."""
    return (2 * (digits >= 5) + (digits % 2 == 0)).astype(np.int32)


class FineTuned(nn.Module):
    """A converted backbone (kept in inference mode) and a fresh classification head."""

    backbone: nn.Module
    classes: int

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        features = self.backbone(x, train=False)  # frozen: moving BatchNorm statistics
        return nn.Dense(self.classes, name="head")(features)


class TrainState(train_state.TrainState):
    batch_stats: Any = None


def _labels(params) -> dict:
    """ "frozen" for every backbone parameter, "trained" for the head's."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {path: "frozen" if path[0] == "backbone" else "trained" for path in flat}
    )


def run(epochs: int = 8, batch: int = 64, seed: int = 0) -> dict:
    """Fine-tune the head; returns accuracies and whether the backbone stayed frozen."""
    backbone, backbone_vars = kgen.load(str(MODEL_PATH), outputs=("gap",))
    x_train, y_train, x_test, y_test = load_split()
    y_train, y_test = new_task_labels(y_train), new_task_labels(y_test)
    model = FineTuned(backbone, classes=4)
    init = jax.jit(model.init)(jax.random.key(seed), jnp.asarray(x_train[:1]))
    params = {**init["params"], "backbone": backbone_vars["params"]}
    batch_stats = {"backbone": backbone_vars["batch_stats"]}
    optimizer = optax.multi_transform(
        {"trained": optax.adam(1e-2), "frozen": optax.set_to_zero()}, _labels(params)
    )
    state = TrainState.create(
        apply_fn=model.apply, params=params, tx=optimizer, batch_stats=batch_stats
    )

    @jax.jit
    def step(state, x, y):
        def loss_fn(params):
            logits = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    @jax.jit
    def predict(state, x):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return jnp.argmax(state.apply_fn(variables, x), -1)

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            state, _ = step(state, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]))
    accuracy = float(np.mean(np.asarray(predict(state, jnp.asarray(x_test))) == y_test))

    saved = serialization.to_bytes(state)
    restored = serialization.from_bytes(
        TrainState.create(
            apply_fn=model.apply, params=params, tx=optimizer, batch_stats=batch_stats
        ),
        saved,
    )
    restored_accuracy = float(np.mean(np.asarray(predict(restored, jnp.asarray(x_test))) == y_test))
    unchanged = jax.tree_util.tree_all(
        jax.tree_util.tree_map(
            lambda a, b: bool(jnp.array_equal(a, b)),
            state.params["backbone"],
            backbone_vars["params"],
        )
    )
    head_moved = not jnp.array_equal(state.params["head"]["kernel"], params["head"]["kernel"])
    return {
        "epochs": epochs,
        "test_images": len(x_test),
        "accuracy": accuracy,
        "restored_accuracy": restored_accuracy,
        "chance": float(np.max(np.bincount(y_test)) / len(y_test)),
        "backbone_unchanged": bool(unchanged),
        "head_trained": bool(head_moved),
        "saved_bytes": len(saved),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run()))
