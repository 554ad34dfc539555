"""Every code block in the README runs, in order, in one working directory, offline.

- ``bash`` blocks run with ``bash -euo pipefail``; ``python`` blocks as scripts.  A
  ``print(...)  # text`` line in a block promises its output: the printed lines must
  begin with those comments, in order.
- ``<!-- readme: file -->`` blocks are files (their first line names the path): they are
  written, for later blocks to use.
- ``<!-- readme: setup -->`` blocks are the two set-up commands: CI's ``.ci/run`` runs
  the test command verbatim, and this test runs the main job's last step (``kgen demo``)
  after the install it has already done.
- ``<!-- readme: install -->`` blocks install the published distribution: each must name
  ``kgen-flax`` and extras that ``pyproject.toml`` defines (``test_base_install.py``
  installs the base distribution for real).

The directory holds what the README's commands take as given: ``model.keras`` (the
digits CNN), ``my.weights.h5`` (MobileNet's), ``cat.jpg``, a ``mypkg`` package and
``my_model.keras`` using its layer, and a Keras cache holding MobileNetV2's "ImageNet"
file, written from a model whose every variable is randomised, so that Keras's real
download code finds it and nothing is fetched.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib

from kgen.examples.digits import MODEL_PATH
from kgen.verify import randomize

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(
    r"(?:<!-- readme: (?P<directive>\w+) -->\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```$",
    re.S | re.M,
)

MYPKG_LAYERS = '''
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mypkg")
class ScaledDense(keras.layers.Layer):
    """x @ w * scale + b."""

    def __init__(self, units, scale=2.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale = units, scale

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1], self.units))
        self.b = self.add_weight(name="b", shape=(self.units,), initializer="random_normal")

    def call(self, x):
        return ops.matmul(x, self.w) * self.scale + self.b

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale}
'''

MYPKG_MODELS = """
import keras


class TwoLayers(keras.Model):
    def __init__(self):
        super().__init__(name="two_layers")
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(4)

    def call(self, x):
        return self.out(self.hidden(x))


def make():
    return TwoLayers()
"""

MY_MODEL = """
import keras
from mypkg.layers import ScaledDense

inputs = keras.Input((6,))
x = ScaledDense(8, scale=0.5, name="scaled")(inputs)
keras.Model(inputs, keras.layers.Dense(3)(x), name="my_model").save("my_model.keras")
"""


def blocks():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = [(m["directive"], m["lang"], m["body"]) for m in BLOCK.finditer(text)]
    assert len(found) == text.count("\n```") // 2, "a code block the pattern missed"
    return found


def _legacy_h5(model, path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    import keras
    from PIL import Image

    work = tmp_path_factory.mktemp("readme")
    shutil.copy(MODEL_PATH, work / "model.keras")
    keras_home = work / "keras_home"
    (keras_home / "models").mkdir(parents=True)
    imagenet = keras.applications.MobileNetV2(weights=None)
    randomize(imagenet, seed=3)
    _legacy_h5(
        imagenet,
        keras_home / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    )
    mobilenet = keras.applications.MobileNet(weights=None)
    randomize(mobilenet, seed=4)
    mobilenet.save_weights(work / "my.weights.h5")
    pixels = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(work / "cat.jpg")  # not square: (width, height) matters
    (work / "mypkg").mkdir()
    (work / "mypkg" / "__init__.py").write_text("")
    (work / "mypkg" / "layers.py").write_text(MYPKG_LAYERS)
    (work / "mypkg" / "models.py").write_text(MYPKG_MODELS)
    env = _env(work)
    made = subprocess.run(
        [sys.executable, "-c", MY_MODEL], cwd=work, env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr[-2000:]
    return work


def _env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env.update(
        KERAS_HOME=str(work / "keras_home"),
        KGEN_CACHE_DIR=str(work / "kgen_cache"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_PLATFORMS="cpu",
    )
    return env


def _promised(body: str) -> list[str]:
    """The ``# text`` comments of a block's ``print(...)`` lines, when every print has one."""
    prints = [line for line in body.splitlines() if line.lstrip().startswith("print(")]
    comments = [line.partition("  # ")[2] for line in prints]
    return comments if prints and all(comments) else []


def _check_install(body: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assert words[:2] == ["pip", "install"], line
        (requirement,) = words[2:]
        name, _, rest = requirement.partition("[")
        assert name == project["name"] == "kgen-flax", line
        assert set(filter(None, rest.rstrip("]").split(","))) <= extras, line


def _check_setup(body: str, work: Path) -> None:
    command = body.strip()
    if command.endswith("pytest"):  # the test command: CI runs it as written
        assert command in (ROOT / ".ci" / "run").read_text(), command
        return
    last = command.rsplit("&&", 1)[-1].strip()
    assert last == "kgen demo", command
    _run_bash(last, work)


def _run_bash(body: str, work: Path) -> str:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{body}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_readme_block_runs(workdir):
    ran = []
    for i, (directive, lang, body) in enumerate(blocks()):
        start = time.perf_counter()
        if directive == "install":
            _check_install(body)
        elif directive == "setup":
            _check_setup(body, workdir)
        elif directive == "file":
            first = body.splitlines()[0]
            assert first.startswith("# "), first
            path = workdir / first[2:].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
        elif lang == "bash":
            _run_bash(body, workdir)
        elif lang == "python":
            script = workdir / f"readme_block_{i}.py"
            script.write_text(body)
            proc = subprocess.run(
                [sys.executable, script.name],
                cwd=workdir,
                env=_env(workdir),
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, f"{body}\n{proc.stderr[-4000:]}"
            promised = _promised(body)
            if promised:
                printed = proc.stdout.splitlines()
                assert len(printed) == len(promised), (printed, promised)
                for line, comment in zip(printed, promised):
                    assert comment.startswith(line), (line, comment)
        else:
            raise AssertionError(f"README block {i} ({lang or 'no language'}) is not run:\n{body}")
        ran.append((directive, lang))
        print(f"README block {i} ({directive or lang}): {time.perf_counter() - start:.1f} s")
    assert ("setup", "bash") in ran and (None, "python") in ran and ("file", "python") in ran

    # What the blocks claim to write, they wrote.
    for path in (
        "generated/mobilenetv2.py",
        "generated/mobilenetv2.safetensors",
        "out/digit_net.py",
        "out/two_layers.py",
        "out/my_model.py",
        "model.svg",
    ):
        assert (workdir / path).is_file(), path
    assert "nn.Dense" in (workdir / "out" / "my_model.py").read_text()  # the plug-in's lowering


def test_readme_python_blocks_are_formatted_code():
    """The python blocks are ruff-formatted with the repository's config (test_lint runs
    ruff over README.md too); this checks that they also compile."""
    for _, lang, body in blocks():
        if lang == "python":
            compile(textwrap.dedent(body), "<README>", "exec")
