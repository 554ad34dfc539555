"""Application options that cannot work together are told apart from network trouble."""

from __future__ import annotations

from helpers import run_cli
from test_errors import assert_user_error


def test_classes_with_imagenet_weights_says_what_is_wrong(monkeypatch):
    import kgen.tracer.catalog as catalog

    def no_build(*args, **kwargs):  # the message must come before any download
        raise AssertionError("the model was built")

    monkeypatch.setattr(catalog, "build", no_build)
    line = assert_user_error(run_cli("emit", "MobileNet", "--classes", "10"), "--classes 10")
    assert "1000" in line and "--no-include-top" in line
    assert "network" not in line and "offline" not in line
