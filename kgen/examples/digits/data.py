"""The digits data and its fixed train / held-out split (no download: scikit-learn ships it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kgen.errors import KgenError

__all__ = ["MODEL_PATH", "SEED", "TEST_FRACTION", "load_split"]

MODEL_PATH = Path(__file__).with_name("digits_cnn.keras")
SEED = 0
TEST_FRACTION = 0.2


def load_split():
    """``(x_train, y_train, x_test, y_test)``: images ``(n, 8, 8, 1)`` float32 with pixel
    values 0..16 (the model rescales them itself), labels int32.  Stratified, seeded split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise KgenError(
            "the digits example needs scikit-learn (pip install scikit-learn); "
            "it ships the 8x8 digits data set"
        ) from None
    digits = load_digits()
    x = digits.images.astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    return x_train, y_train, x_test, y_test
