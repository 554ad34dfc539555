"""``generated/`` holds the emitted modules (code only) and must match the generator.

Each application is converted in-process by the library pipeline that ``kgen emit NAME
--weights none -o generated`` calls (:func:`kgen.pipeline.convert`, with the same
"Regenerate with" header), written as emit writes it, and compared byte for byte with
the committed file.
After an intended change to the generated code, regenerate all of them with::

    for m in $(kgen list --only keras3); do kgen emit $m --weights none -o generated; done

The classic applications and the smallest model of every other family are re-emitted in
the default suite; the remaining big ones (each costs a Keras build) under ``catalog``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from kgen import pipeline
from kgen.tracer.catalog import APPLICATIONS as CATALOG

GENERATED = Path(__file__).resolve().parents[1] / "generated"
DEFAULT_SUITE = [
    "InceptionV3",
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "ResNet50V2",
    "ResNet101V2",
    "ResNet152V2",
    "VGG16",
    "VGG19",
    "DenseNet121",
    "DenseNet169",
    "DenseNet201",
    "MobileNet",
    "MobileNetV2",
    "Xception",
    # the smallest model of each remaining Keras 3 family
    "ConvNeXtTiny",
    "EfficientNetB0",
    "EfficientNetV2B0",
    "InceptionResNetV2",
    "MobileNetV3Small",
    "NASNetMobile",
]
APPLICATIONS = [name for name, app in CATALOG.items() if app.source == "keras3"]
PARAMS = [
    pytest.param(name, marks=() if name in DEFAULT_SUITE else pytest.mark.catalog)
    for name in APPLICATIONS
]


def _regenerate(name: str) -> str:
    return f"kgen emit {name} --weights none -o generated"


def test_generated_holds_exactly_the_listed_modules():
    present = {p.stem for p in GENERATED.glob("*.py")} - {"__init__"}
    expected = {name.lower() for name in APPLICATIONS}
    assert present == expected, (
        f"generated/ has {sorted(present - expected)} extra and {sorted(expected - present)} "
        "missing; see tests/test_generated.py for the command that regenerates them"
    )
    assert not list(GENERATED.glob("*.safetensors")), "generated/ holds code only"


@pytest.mark.parametrize("name", PARAMS)
def test_generated_module_is_up_to_date(name, tmp_path):
    conversion = pipeline.convert(pipeline.Source.of(name, "none"), output="generated")
    py_path, _ = conversion.write(tmp_path / "generated", weights=False)
    written = tmp_path / "generated" / f"{name.lower()}.py"
    assert py_path == written and [p.name for p in written.parent.iterdir()] == [written.name]
    committed = GENERATED / written.name
    assert committed.exists(), f"generated/{written.name} is missing: run `{_regenerate(name)}`"
    expected = committed.read_text(encoding="utf-8")
    source = written.read_text(encoding="utf-8")
    if source != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                source.splitlines(keepends=True),
                f"generated/{written.name} (committed)",
                "emitted now",
                n=2,
            )
        )
        lines = diff.splitlines(keepends=True)
        shown = "".join(lines[:80]) + (
            f"... {len(lines) - 80} more diff lines\n" if len(lines) > 80 else ""
        )
        pytest.fail(
            f"generated/{written.name} is out of date with the generator. If the change is "
            f"intended, run `{_regenerate(name)}` (or the loop in tests/test_generated.py's "
            f"docstring for all of them) and commit the result.\n{shown}"
        )
