"""A small Keras 3 CNN trained on scikit-learn's 8x8 handwritten digits.

``digits_cnn.keras`` (next to this file) is rebuilt by ``python -m kgen.examples.digits.train``;
``kgen demo`` converts it and compares Keras with the generated Flax module on the held-out
split.  Importing this package does not import Keras.
"""

from kgen.examples.digits.data import MODEL_PATH, SEED, load_split

__all__ = ["MODEL_PATH", "SEED", "load_split"]
