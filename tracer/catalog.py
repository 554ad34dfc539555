"""The application catalog: every model kgen converts by name, and how to build it."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from kgen.errors import SourceError

__all__ = [
    "APPLICATIONS",
    "OPTION_KEYS",
    "Application",
    "build",
    "get",
    "keras_model_name",
    "names",
    "recognise",
    "variant_names",
]


@dataclass(frozen=True)
class Application:
    name: str  # catalog / CLI name, e.g. "InceptionV3"
    family: str
    input_size: int  # default square input size
    preprocess: str  # preprocess_input mode: caffe, tf, torch or none (built in)
    source: str = "keras3"  # "keras3" (keras.applications) or "tf_keras"
    smallest: bool = False  # the family's smallest model: in the default test suite


def _family(family, names_sizes, preprocess, source="keras3"):
    return [
        Application(n, family, s, preprocess, source, smallest=(i == 0))
        for i, (n, s) in enumerate(names_sizes)
    ]


_REGNET_SIZES = ("002", "004", "006", "008", "016", "032", "040", "064", "080", "120", "160", "320")

_ALL = [
    *_family(
        "convnext",
        [
            ("ConvNeXtTiny", 224),
            ("ConvNeXtSmall", 224),
            ("ConvNeXtBase", 224),
            ("ConvNeXtLarge", 224),
            ("ConvNeXtXLarge", 224),
        ],
        "none",
    ),
    *_family(
        "densenet", [("DenseNet121", 224), ("DenseNet169", 224), ("DenseNet201", 224)], "torch"
    ),
    *_family(
        "efficientnet",
        [
            ("EfficientNetB0", 224),
            ("EfficientNetB1", 240),
            ("EfficientNetB2", 260),
            ("EfficientNetB3", 300),
            ("EfficientNetB4", 380),
            ("EfficientNetB5", 456),
            ("EfficientNetB6", 528),
            ("EfficientNetB7", 600),
        ],
        "none",
    ),
    *_family(
        "efficientnet_v2",
        [
            ("EfficientNetV2B0", 224),
            ("EfficientNetV2B1", 240),
            ("EfficientNetV2B2", 260),
            ("EfficientNetV2B3", 300),
            ("EfficientNetV2S", 384),
            ("EfficientNetV2M", 480),
            ("EfficientNetV2L", 480),
        ],
        "none",
    ),
    *_family("inception_resnet_v2", [("InceptionResNetV2", 299)], "tf"),
    *_family("inception_v3", [("InceptionV3", 299)], "tf"),
    *_family("mobilenet", [("MobileNet", 224)], "tf"),
    *_family("mobilenet_v2", [("MobileNetV2", 224)], "tf"),
    *_family("mobilenet_v3", [("MobileNetV3Small", 224), ("MobileNetV3Large", 224)], "none"),
    *_family("nasnet", [("NASNetMobile", 224), ("NASNetLarge", 331)], "tf"),
    *_family("resnet", [("ResNet50", 224), ("ResNet101", 224), ("ResNet152", 224)], "caffe"),
    *_family("resnet_v2", [("ResNet50V2", 224), ("ResNet101V2", 224), ("ResNet152V2", 224)], "tf"),
    *_family("vgg", [("VGG16", 224), ("VGG19", 224)], "caffe"),
    *_family("xception", [("Xception", 299)], "tf"),
    # Only in legacy tf.keras (the tf_keras package): built with Keras 2 semantics.
    *_family(
        "resnet_rs",
        [(f"ResNetRS{d}", 224) for d in (50, 101, 152, 200, 270, 350, 420)],
        "none",
        "tf_keras",
    ),
    *_family("regnetx", [(f"RegNetX{s}", 224) for s in _REGNET_SIZES], "none", "tf_keras"),
    *_family("regnety", [(f"RegNetY{s}", 224) for s in _REGNET_SIZES], "none", "tf_keras"),
]
APPLICATIONS: dict[str, Application] = {a.name: a for a in _ALL}


def names() -> list[str]:
    return list(APPLICATIONS)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def close_names(name: str, limit: int = 3) -> list[str]:
    """Up to ``limit`` application names close to ``name`` (case-insensitive edit
    distance at most a third of its length, else names it begins), closest first."""
    wanted = name.lower()
    exact = [n for n in APPLICATIONS if n.lower() == wanted]
    if exact:
        return exact
    budget = max(1, min(3, len(wanted) // 3))
    scored = sorted(
        (d, i, n)
        for i, n in enumerate(APPLICATIONS)
        if (d := _edit_distance(wanted, n.lower())) <= budget
    )
    if not scored:  # a family name: "densenet", "VGG"
        return [n for n in APPLICATIONS if n.lower().startswith(wanted)][:limit]
    return [n for _, _, n in scored[:limit]]


def get(name: str) -> Application:
    try:
        return APPLICATIONS[name]
    except KeyError:
        close = close_names(name)
        if not close:
            hint = " (see `kgen list`)"
        elif len(close) == 1:
            hint = f" (did you mean {close[0]}?)"
        else:
            hint = f" (did you mean {', '.join(close[:-1])} or {close[-1]}?)"
        raise SourceError(f"unknown application {name!r}{hint}") from None


def build(app: Application, *, weights=None, **options):
    """Build the Keras model for ``app`` (``weights``: None, "imagenet" or a file path)."""
    return _constructor(app)(weights=weights, **options)


# Options users set on applications, with the constructor keyword each maps to.
OPTION_KEYS = (
    "include_top",
    "pooling",
    "input_shape",
    "classes",
    "classifier_activation",
    "alpha",
    "depth_multiplier",
    "minimalistic",
    "include_preprocessing",
)


def _token(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "" if value else "no"
    if isinstance(value, float):
        return f"{value:g}".replace(".", "")
    if isinstance(value, (tuple, list)):
        return "x".join(
            "".join(ch for ch in str(v) if ch.isascii() and ch.isalnum()) for v in value
        )
    return "".join(ch for ch in str(value) if ch.isalnum())


_LABELS = {
    "outputs": "out",
    "include_top": "top",
    "pooling": "pool",
    "input_shape": "input",
    "classes": "classes",
    "classifier_activation": "act",
    "alpha": "alpha",
    "depth_multiplier": "depth",
    "minimalistic": "minimalistic",
    "include_preprocessing": "preprocessing",
}


def variant_names(app: Application, options: dict) -> tuple[str, str]:
    """(class name, module name) for ``app`` built with non-default ``options``.

    Options that change the architecture or outputs give a distinct, stable name, e.g.
    MobileNet(alpha=0.5, input_shape=(160, 160, 3)) -> ``MobileNetAlpha05Input160x160x3``
    in ``mobilenet_alpha05_input160x160x3.py``.
    """
    parts = []
    for key in (*OPTION_KEYS, "outputs"):
        if key not in options:
            continue
        value = options[key]
        if isinstance(value, bool):
            parts.append(f"{_token(value)}{_LABELS[key]}")
        else:
            parts.append(f"{_LABELS[key]}{_token(value)}")
    class_name = app.name + "".join(p[:1].upper() + p[1:] for p in parts)
    module_name = "_".join([app.name.lower(), *parts])
    return class_name, module_name


def _constructor(app: Application):
    if app.source == "tf_keras":
        import tf_keras.applications as apps
    else:
        import keras.applications as apps
    return getattr(apps, app.name)


@functools.cache
def keras_model_name(app: Application) -> str | None:
    """The name Keras gives ``app``'s model when built with default options (None where
    the constructor's signature does not say)."""
    import inspect

    params = inspect.signature(_constructor(app)).parameters
    for key in ("name", "model_name"):
        default = params[key].default if key in params else None
        if isinstance(default, str):
            return default
    if app.name.startswith("ResNetRS"):  # tf_keras's ResNetRS(model_name=...) calls
        return f"resnet-rs-{app.name.removeprefix('ResNetRS')}"
    prefix = {"MobileNet": "mobilenet", "MobileNetV2": "mobilenetv2"}.get(app.name)
    if prefix is None:
        return None
    return f"{prefix}_1.00_{app.input_size}"  # f"{name}_{alpha:0.2f}_{rows}"


def _layer_signature(model) -> list:
    """Each layer's class and config, without the names Keras numbers per session."""
    return [
        (type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
        for layer in model.layers
    ]


def recognise(model) -> tuple[Application, bool] | None:
    """``(app, default)`` when ``model`` is a live ``keras.applications`` model: ``app``
    by the model's name and layer names, ``default`` when it was built with the default
    options (its layers' configs equal a fresh default build's).  None for any other
    model (one that only shares an application's name).  Builds that application once,
    without weights."""
    import re

    source = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras3"
    name = getattr(model, "name", None)
    if not isinstance(name, str):
        return None
    for app in APPLICATIONS.values():
        if app.source != source:
            continue
        default_name = keras_model_name(app)
        if default_name is None:
            continue
        if app.name in ("MobileNet", "MobileNetV2"):  # the name records alpha and size
            pattern = re.escape(default_name.split("_")[0]) + r"_\d\.\d\d_\d+"
            if not re.fullmatch(pattern, name):
                continue
        elif name != default_name:
            continue
        try:
            reference = build(app)
            if name == default_name and _layer_signature(reference) == _layer_signature(model):
                return app, True
        except Exception:  # a model of that name that Keras cannot compare: not an app
            return None
        # Other options (no top, another input size, alpha): most of the application's
        # layer names are there.  A user's own model that only shares the name is not.
        names = {layer.name for layer in model.layers}
        wanted = [layer.name for layer in reference.layers]
        if sum(n in names for n in wanted) >= 0.8 * len(wanted):
            return app, False
        return None
    return None
