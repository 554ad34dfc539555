"""Test setup: Keras 3 on the TensorFlow backend as the reference, everything on CPU."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Keep auto-generated Keras names (and memory) independent between tests."""
    yield
    import keras

    keras.backend.clear_session()
