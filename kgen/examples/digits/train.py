"""Train the digits CNN and save it as ``digits_cnn.keras`` (next to this file by default).

    python -m kgen.examples.digits.train [--epochs N] [--output PATH]

Keras 3 on the TensorFlow backend, fixed seed, CPU.  The model ends in a ``Dense(10)``
without softmax, so it outputs logits (what ``kgen demo`` compares).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from kgen.examples.digits.data import MODEL_PATH, SEED, load_split

__all__ = ["build_model", "main", "train"]


def build_model():
    """Rescaling, three conv/BN/ReLU blocks with a max pool, global pooling, Dense logits."""
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 1), name="pixels")
    x = layers.Rescaling(1.0 / 16.0, name="rescale")(inputs)
    for i, filters in enumerate((32, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i == 2:
            x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    logits = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, logits, name="digits_cnn")


def train(output: str | os.PathLike = MODEL_PATH, *, epochs: int = 40, seed: int = SEED) -> dict:
    """Train from scratch and save an uncompiled copy (no optimizer state) to ``output``."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    x_train, y_train, x_test, y_test = load_split()
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    accuracy = {
        "train": float(np.mean(np.argmax(model.predict(x_train, verbose=0), -1) == y_train)),
        "held_out": float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test)),
    }
    inference = build_model()  # uncompiled: the saved file carries no optimizer state
    inference.set_weights(model.get_weights())
    output = Path(output)
    inference.save(output)
    return {"path": str(output), "epochs": epochs, "seed": seed, "accuracy": accuracy}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--output", default=str(MODEL_PATH))
    args = parser.parse_args(argv)
    result = train(args.output, epochs=args.epochs)
    acc = result["accuracy"]
    print(
        f"saved {result['path']}: train accuracy {acc['train']:.4f}, "
        f"held-out accuracy {acc['held_out']:.4f}"
    )


if __name__ == "__main__":
    main()
