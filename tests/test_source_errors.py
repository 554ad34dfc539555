"""Application options that cannot work together are told apart from network trouble."""

from __future__ import annotations

from helpers import run_cli
from test_errors import assert_user_error


def test_a_new_head_on_imagenet_weights_offline_says_how_to_go_on(monkeypatch):
    """``--classes 10`` with the ImageNet weights is a pretrained backbone under a new head
    (tests/test_fine_tune.py); without the download it is one line, like plain imagenet."""
    import urllib.error

    import kgen.tracer.catalog as catalog

    def offline(app, *, weights=None, **options):
        if weights == "imagenet":
            raise urllib.error.URLError("no network")
        raise AssertionError("the new-head model is built after the download")

    monkeypatch.setattr(catalog, "build", offline)
    line = assert_user_error(run_cli("emit", "MobileNet", "--classes", "10"), "ImageNet weights")
    assert "--weights none" in line and "offline" in line
