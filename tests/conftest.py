"""Test setup: Keras 3 on the TensorFlow backend as the reference, everything on CPU."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Keep auto-generated Keras names (and memory) independent between tests."""
    yield
    import keras

    keras.backend.clear_session(free_memory=False)  # gc.collect() costs ~0.5 s a test


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="Rewrite tests/golden/*.py from the current generator instead of comparing.",
    )


@pytest.fixture
def update_golden(request) -> bool:
    """True when run with --update-golden (tests/test_golden.py rewrites its files)."""
    return request.config.getoption("--update-golden")
