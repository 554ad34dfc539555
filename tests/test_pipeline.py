"""One library pipeline behind the CLI and the API: the same source gives the same
module name, class and metadata either way; ``--name``; plug-ins and factories import
from the current directory; ``python -m kgen``; typos answered before heavy imports."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import import_file, run_cli

import kgen
from kgen import pipeline
from kgen.errors import SourceError
from kgen.examples.digits import MODEL_PATH

KGEN = Path(sys.executable).with_name("kgen")  # the console script pip installed


def _without_header(source: str) -> str:
    lines = (line for line in source.splitlines() if not line.startswith("# Regenerate"))
    return "\n".join(lines)


def test_convert_of_a_live_application_names_it_as_emit_does():
    import keras

    # Keras numbers unnamed layers per session: each model is built in a fresh one.
    keras.utils.clear_session()
    api = kgen.convert(keras.applications.MobileNetV2(weights=None))
    keras.utils.clear_session()
    cli = pipeline.convert(pipeline.Source.of("MobileNetV2", "none"))
    assert (api.module_name, api.class_name) == (cli.module_name, cli.class_name)
    assert (api.module_name, api.class_name) == ("mobilenetv2", "MobileNetV2")
    assert _without_header(api.source) == _without_header(cli.source)
    cls = api.load().MobileNetV2
    assert cls.preprocess_mode == "tf" and cls.input_size == (224, 224)


def test_convert_of_an_application_with_other_options_keeps_its_metadata():
    import keras

    model = keras.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(96, 96, 3), classes=7
    )
    conversion = kgen.convert(model)
    assert conversion.class_name == "Mobilenetv203596"  # the Keras model's name
    cls = getattr(conversion.load(), conversion.class_name)
    assert cls.preprocess_mode == "tf" and cls.input_size == (96, 96)


def test_a_user_model_named_like_an_application_is_not_one():
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="resnet50")
    conversion = kgen.convert(model)
    assert conversion.class_name == "Resnet50"
    assert not hasattr(conversion.load().Resnet50, "preprocess_mode")


def test_name_sets_the_class_and_module(tmp_path):
    result = run_cli("emit", MODEL_PATH, "-o", tmp_path, "--name", "DigitNet")
    assert result.exit_code == 0, result.output
    module = import_file(tmp_path / "digit_net.py")
    assert hasattr(module, "DigitNet") and (tmp_path / "digit_net.safetensors").exists()
    assert kgen.convert(_tiny(), name="MyNet").module_name == "my_net"


@pytest.mark.parametrize("bad", ["my net", "1Net", "class", "Net-2", "Ñet"])
def test_a_bad_name_is_a_one_line_usage_error(tmp_path, bad):
    result = run_cli("emit", MODEL_PATH, "-o", tmp_path / "out", "--name", bad)
    assert result.exit_code == 2 and "is not a class name" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()
    with pytest.raises(SourceError, match="is not a class name"):
        kgen.convert(_tiny(), name=bad)


def _tiny():
    import keras

    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs), name="tiny")


PLUGIN = textwrap.dedent(
    """
    import keras
    from keras import ops


    @keras.saving.register_keras_serializable(package="cwd_plugin")
    class Shift(keras.layers.Layer):
        def __init__(self, by=1.0, **kwargs):
            super().__init__(**kwargs)
            self.by = by

        def call(self, x):
            return ops.tanh(x) + self.by

        def get_config(self):
            return {**super().get_config(), "by": self.by}


    def make():
        inputs = keras.Input((5,))
        return keras.Model(inputs, Shift(0.5)(keras.layers.Dense(3)(inputs)), name="shifted")
    """
)


def _run(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_plugins_and_factories_import_from_the_current_directory(tmp_path):
    (tmp_path / "cwd_plugin_layers.py").write_text(PLUGIN)
    spec = importlib.util.spec_from_file_location(
        "cwd_plugin_layers", tmp_path / "cwd_plugin_layers.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["cwd_plugin_layers"] = module
    try:
        spec.loader.exec_module(module)
        module.make().save(tmp_path / "shifted.keras")
    finally:
        del sys.modules["cwd_plugin_layers"]

    # Without the plug-in the file's class is refused; with it, from the cwd, it converts.
    refused = _run([KGEN, "emit", "shifted.keras", "-o", "out"], tmp_path)
    assert refused.returncode == 2 and "refusing model file shifted.keras" in refused.stderr
    done = _run(
        [KGEN, "--plugin", "cwd_plugin_layers", "emit", "shifted.keras", "-o", "out"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "class Shift(nn.Module)" in (tmp_path / "out" / "shifted.py").read_text()
    factory = _run([KGEN, "emit", "cwd_plugin_layers:make", "-o", "out2"], tmp_path)
    assert factory.returncode == 0, factory.stderr
    assert (tmp_path / "out2" / "shifted.py").exists()
    missing = _run([KGEN, "--plugin", "no_such_plugin_mod", "list"], tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith(
        "kgen: error: cannot import plugin 'no_such_plugin_mod'"
    )
    assert len(missing.stderr.splitlines()) == 1


def test_python_dash_m_kgen(tmp_path):
    listed = _run([sys.executable, "-m", "kgen", "list", "--only", "tf_keras"], tmp_path)
    assert listed.returncode == 0 and "RegNetX002" in listed.stdout.split()
    version = _run([sys.executable, "-m", "kgen", "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"kgen, version {kgen.__version__}"


def test_a_typo_is_answered_before_heavy_imports(tmp_path):
    start = time.perf_counter()
    result = _run([KGEN, "emit", "MobileNett"], tmp_path)
    seconds = time.perf_counter() - start
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "kgen: error: unknown application 'MobileNett' (did you mean MobileNet or MobileNetV2?)"
    )
    # Not a timing assertion: what matters is that nothing heavy was imported.
    probe = _run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom kgen.cli import main\n"
            "try:\n    main(['emit', 'MobileNett'], standalone_mode=False)\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'jax', 'tensorflow', 'keras', 'tf_keras', 'flax', 'networkx'}))",
        ],
        tmp_path,
    )
    assert probe.stdout.strip().splitlines()[-1] == "[]", (probe.stdout, probe.stderr, seconds)


def test_without_the_conversion_packages_emit_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "missing_packages", lambda: ["tensorflow", "keras"])
    result = run_cli("emit", "MobileNet", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "kgen: error: kgen emit needs the conversion packages (tensorflow, keras missing): "
        "pip install 'kgen-flax[convert]'"
    )
    assert not (tmp_path / "out").exists()


def test_library_messages_name_keywords_and_the_cli_its_flags(tmp_path):
    with pytest.raises(SourceError) as raised:
        pipeline.load(pipeline.Source.of(str(MODEL_PATH), "imagenet"))
    assert str(raised.value).startswith("weights=imagenet only applies to application names")
    assert "--" not in str(raised.value)
    result = run_cli("emit", MODEL_PATH, "--weights", "imagenet", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.startswith("kgen: error: --weights imagenet only applies to application")
