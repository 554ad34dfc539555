"""What a model file may contain before any Keras rebuilds it: an allowlist.

A model file is untrusted.  Rebuilding a model from its config runs code the config
chooses: tf.keras calls the TF function of every op layer (``TFOpLambda``,
``ClassMethod``, ``InstanceMethod``), eagerly when its inputs are constants, imports the
``module`` a config names, and lookup layers read the file a ``vocabulary`` names.  So
the config, read as plain JSON, is checked here first, and every object in it must be
one of these:

* a layer or op class that Keras itself defines (module ``keras``/``tf_keras``) and kgen
  lowers, or a model container kgen traces (``Functional``, ``Sequential``, ``Model``,
  ``InputLayer``);
* a layer class found in Keras's registry of custom objects (so Keras resolves it
  without importing anything the file names), which only code the user runs -- a
  ``--plugin`` module, trusted -- can have put there; kgen converts it by the plug-in's
  lowering or traces into its ``call()`` (see tracer/custom.py);
* for Keras 3 files, a function in that registry (a user activation, which kgen traces);
* for Keras 3 ``.keras`` files only, a class of a first-party Keras package (``keras_hub``,
  ``keras_cv``, ``keras_nlp``), which Keras imports under its own safe mode;
* an inert Keras object: an initializer, regularizer, constraint or dtype policy from
  Keras's public namespaces, a Keras activation function, or one of Keras 3's
  serialisation markers for tuples, arrays, slices and symbolic tensors;

and further:

* every ``TFOpLambda``/``SlicingOpLambda`` calls a TF symbol kgen lowers, and no op
  node takes only constant inputs (Keras would run it while loading);
* no config field that Keras reads as a file path (``vocabulary``, ``idf_weights``,
  ...) holds a string;
* the config is at most :data:`MAX_CONFIG_BYTES` long and nested at most
  :data:`MAX_DEPTH` deep.

Anything else is refused with one line that names each offending class, symbol or
field with its layer name.  This module only reads plain data; the caller passes the
lowering registry's answer (``has_lowering``) and the Keras namespaces are read from
the installed Keras's public API, never from the file.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

from kgen.errors import SourceError

__all__ = ["MAX_CONFIG_BYTES", "MAX_DEPTH", "check_config", "check_size", "parse_config"]

#: Largest model config accepted, in bytes of JSON (the biggest application,
#: ResNetRS420, is 1.6 MB).
MAX_CONFIG_BYTES = 32 * 1024 * 1024
#: Deepest nesting of lists and dicts accepted (applications reach about 12).
MAX_DEPTH = 100

CONTAINERS = frozenset({"Functional", "Sequential", "Model", "InputLayer"})
TF_OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})
#: Serialisation markers whose rebuilding is plain data (Keras 3's, and tf.keras's
#: SavedModel JSON encoding of shapes).
MARKERS = frozenset(
    {"__tuple__", "__numpy__", "__tensor__", "__bytes__", "__ellipsis__", "__slice__"}
    | {"TensorShape"}
)
KERAS_TENSOR = "__keras_tensor__"
#: Keras 3 imports a config's module under safe mode only from these packages.
FIRST_PARTY = frozenset({"keras_hub", "keras_cv", "keras_nlp"})
#: Config fields that Keras layers read as file paths when they hold a string.
PATH_FIELDS = frozenset(
    {"vocabulary", "idf_weights", "initial_vocabulary", "merges", "proto", "filepath"}
)
_CONSTANT = "_CONSTANT_VALUE"  # tf.keras's marker for a constant node input

HasLowering = Callable[..., bool]


def check_size(n_bytes: int, path: str) -> None:
    """Refuse a model config of more than :data:`MAX_CONFIG_BYTES` before reading it."""
    if n_bytes > MAX_CONFIG_BYTES:
        raise SourceError(
            f"refusing model file {path}: its model config is {n_bytes / 2**20:.0f} MiB, "
            f"more than the {MAX_CONFIG_BYTES // 2**20} MiB kgen reads"
        )


def parse_config(text: str | bytes, path: str) -> dict:
    """A model config as plain JSON, bounded in size and depth."""
    check_size(len(text), path)
    try:
        config = json.loads(text)
    except RecursionError:
        raise SourceError(
            f"refusing model file {path}: its model config is nested too deeply"
        ) from None
    except ValueError as exc:
        raise SourceError(f"model file {path}: its model config is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise SourceError(f"model file {path}: its model config is not a JSON object")
    return config


def check_config(config: dict, path: str, *, source: str, has_lowering: HasLowering) -> None:
    """Refuse ``config`` unless everything in it is allowed (see the module docstring).

    ``source`` is ``"keras3"`` or ``"tf_keras"``: the Keras that would rebuild it.
    """
    checker = _Checker(source, has_lowering)
    problems = checker.run(config)
    if checker.classes:
        total = sum(len(names) for names in checker.classes.values())
        problems.insert(
            0,
            f"{total} layer(s) of {len(checker.classes)} class(es) that kgen does not "
            "convert and no --plugin registers with Keras: "
            + "; ".join(
                f"{cls} x{len(names)} ({_names(names)})" for cls, names in checker.classes.items()
            ),
        )
    if problems:
        shown = "; ".join(dict.fromkeys(problems))  # each once, in file order
        raise SourceError(
            f"refusing model file {path} before loading it: {shown}. kgen loads only "
            "Keras layers it converts and the classes a --plugin module defines and "
            "registers with Keras (README, 'Untrusted model files')"
        )


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


class _Checker:
    def __init__(self, source: str, has_lowering: HasLowering):
        self.source = source
        self.has_lowering = has_lowering
        self.keras = _keras_namespace(source)
        self.problems: list[str] = []
        self.classes: dict[str, list[str]] = {}  # refused class -> its layers' names

    def run(self, config: dict) -> list[str]:
        # Iterative, so a deep config cannot exhaust Python's stack here.
        stack = [(config, 0, "the model")]
        while stack:
            value, depth, where = stack.pop()
            if depth > MAX_DEPTH:
                return [f"its config is nested more than {MAX_DEPTH} levels deep"]
            if isinstance(value, list):
                stack.extend((v, depth + 1, where) for v in reversed(value))
                continue
            if not isinstance(value, dict):
                continue
            if "class_name" in value:
                where = self.check_object(value, where)
            else:
                self.check_fields(value, where)
            for key, item in reversed(list(value.items())):
                if key != "compile_config":  # never rebuilt: kgen loads with compile=False
                    stack.append((item, depth + 1, where))
        return self.problems

    # -- one serialised object ----------------------------------------------------------
    def check_object(self, obj: dict, where: str) -> str:
        """Check one ``{"class_name": ...}`` object; returns where its children are."""
        cls = obj.get("class_name")
        inner = obj.get("config")
        name = _layer_name(obj)
        here = f"{cls!s:.60} {name!r}" if name is not None else f"{cls!s:.60} in {where}"
        if not isinstance(cls, str):
            self.problems.append(f"an object in {where} has a non-text class_name")
            return where
        if cls in MARKERS or (cls == KERAS_TENSOR and self.source == "keras3"):
            return where
        # (the fields of ``inner`` are checked when the walk reaches it)
        if cls in CONTAINERS and isinstance(inner, dict) and isinstance(inner.get("layers"), list):
            self.check_layer_names(inner["layers"], here)
        if cls == "function":
            if not self.is_keras_function(obj):
                self.problems.append(
                    f"function {str(inner)[:60]!r} in {where} is not a Keras activation"
                )
            return where
        if self.is_inert(obj):
            return where
        if not self.is_layer_allowed(obj, cls):
            reason = self.describe_refused(obj, cls, here)
            if reason is None:  # a plain unknown class: listed with the others
                shown = cls.split(">")[-1][:60]
                self.classes.setdefault(shown, []).append(str(name)[:60])
            else:
                self.problems.append(reason)
            return here
        if cls in TF_OP_LAYERS:
            symbol = inner.get("function") if isinstance(inner, dict) else None
            if not isinstance(symbol, str) or not self.has_lowering("tfop", symbol):
                self.problems.append(
                    f"{here} calls tf.{str(symbol)[:60]}, which kgen does not lower"
                )
        if self.is_op(obj, cls) and not self.has_symbolic_input(obj):
            self.problems.append(
                f"{here} takes only constant inputs, so Keras would run it while loading"
            )
        return here

    def check_fields(self, config: dict, where: str) -> None:
        if config.get("_TYPE") == "COMPOSITE":  # tf.keras would rebuild a TF TypeSpec
            self.problems.append(f"{where} has a composite-tensor constant")
        for key in PATH_FIELDS & set(config):
            if isinstance(config[key], str):
                self.problems.append(
                    f"{where} has {key}={config[key][:60]!r}, a file path Keras would read"
                )

    def check_layer_names(self, layers: list, where: str) -> None:
        for i, layer in enumerate(layers):
            if isinstance(layer, dict) and not isinstance(_layer_name(layer), str):
                cls = str(layer.get("class_name", "?"))[:60]
                self.problems.append(f"layer #{i + 1} ({cls}) of {where} has no name")

    # -- the allowlist -------------------------------------------------------------------
    def is_inert(self, obj: dict) -> bool:
        module, cls = obj.get("module"), obj["class_name"]
        if module is None:  # tf.keras .h5/SavedModel configs name classes only
            return cls in self.keras.inert
        return isinstance(module, str) and cls in self.keras.inert_by_module.get(module, ())

    def is_keras_function(self, obj: dict) -> bool:
        module, fn = obj.get("module"), obj.get("config")
        keras_module = module in ("builtins", None) or (
            isinstance(module, str) and module.split(".")[0] in ("keras", "tf_keras")
        )
        if keras_module and isinstance(fn, str) and fn in self.keras.activations:
            return True
        # Keras 3 saves a registered function as {"config": "package>name"}.
        if self.source != "keras3" or not isinstance(fn, str) or ">" not in fn:
            return False
        found = self.keras.registered(fn)  # put there by a trusted --plugin
        return callable(found) and not isinstance(found, type)

    def is_op(self, obj: dict, cls: str) -> bool:
        if cls in TF_OP_LAYERS:
            return True
        module = obj.get("module")
        return (
            self.source == "keras3"
            and isinstance(module, str)
            and module.startswith("keras.src.ops.")
        )

    def is_layer_allowed(self, obj: dict, cls: str) -> bool:
        module = obj.get("module")
        registered = obj.get("registered_name")
        if module is not None and not isinstance(module, str):
            return False
        if registered is not None and not isinstance(registered, str):
            return False
        custom = (registered is not None and ">" in registered) or ">" in cls
        keras_own = module is None or module.split(".")[0] in self.keras.packages
        if keras_own and not custom:
            if cls in CONTAINERS or (cls in TF_OP_LAYERS and self.source == "tf_keras"):
                return True
            kind = "op" if self.is_op(obj, cls) else "layer"
            return self.has_lowering(kind, cls, builtin=True)
        if self.source == "keras3" and module is not None and module.split(".")[0] in FIRST_PARTY:
            return True  # Keras's safe mode imports these; kgen reports what it lacks
        return self.is_plugin_class(registered or cls)

    def is_plugin_class(self, registered: str) -> bool:
        """A class Keras finds in its registry of custom objects (never by importing the
        file's module): a layer class, which kgen traces into, or one a plug-in
        registered a lowering for."""
        found = self.keras.registered(registered)
        if not isinstance(found, type):
            return False
        if issubclass(found, self.keras.layer_class):
            return True
        return self.has_lowering(
            "layer",
            found.__name__,
            builtin=False,
            module=found.__module__,
            registered_name=registered,
        )

    def has_symbolic_input(self, obj: dict) -> bool:
        nodes = obj.get("inbound_nodes")
        if self.source == "keras3":
            return _contains_class(nodes, KERAS_TENSOR)
        return _contains_tf_keras_ref(nodes)

    def describe_refused(self, obj: dict, cls: str, here: str) -> str | None:
        """Why an object is refused, or None for a layer class kgen does not know."""
        if cls in ("Lambda", "__lambda__"):
            return f"{here} holds Python code that Keras would run"
        if cls.startswith("__") or cls in ("TypeSpec", "CompositeTensor"):
            return f"{here} is a serialised Python or TF object Keras would rebuild"
        if _layer_name(obj) is None:
            return f"{here} is not a Keras object kgen allows"
        return None


def _layer_name(obj: dict):
    name = obj.get("name")
    inner = obj.get("config")
    if name is None and isinstance(inner, dict):
        name = inner.get("name")
    return name


def _contains_class(value, class_name: str) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == class_name:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _contains_tf_keras_ref(value) -> bool:
    """Whether tf.keras node data refers to another layer's output anywhere: a
    ``[layer_name, node_index, tensor_index(, kwargs)]`` entry not marked constant."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            if (
                len(item) in (3, 4)
                and isinstance(item[0], str)
                and item[0] != _CONSTANT
                and all(isinstance(i, int) and not isinstance(i, bool) for i in item[1:3])
            ):
                return True
            stack.extend(item)
    return False


class _KerasNamespace:
    """The installed Keras's own public classes and functions, for one source."""

    def __init__(self, source: str):
        if source == "keras3":
            import keras

            root, names = keras, ("keras",)
            self.registered = keras.saving.get_registered_object
        else:
            import tf_keras

            root, names = tf_keras, ("tf_keras", "keras")
            self.registered = tf_keras.saving.get_registered_object
        self.packages = frozenset(names)
        self.layer_class = root.layers.Layer
        self.inert_by_module: dict[str, frozenset] = {}
        namespaces = {
            "initializers": root.initializers,
            "regularizers": root.regularizers,
            "constraints": root.constraints,
        }
        if hasattr(root, "dtype_policies"):
            namespaces["dtype_policies"] = root.dtype_policies
        if hasattr(root, "mixed_precision"):
            namespaces["mixed_precision"] = root.mixed_precision
        for key, namespace in namespaces.items():
            classes = frozenset(
                n for n in dir(namespace) if isinstance(getattr(namespace, n), type)
            )
            for package in names:
                self.inert_by_module[f"{package}.{key}"] = classes
        if source == "keras3":
            policies = self.inert_by_module.get("keras.dtype_policies", frozenset())
            self.inert_by_module["keras"] = policies  # DTypePolicy is saved as keras.X
        self.inert = frozenset().union(*self.inert_by_module.values())
        activations = root.activations
        self.activations = frozenset(
            n
            for n in dir(activations)
            if not n.startswith("_") and callable(getattr(activations, n))
        )


@functools.cache
def _keras_namespace(source: str) -> _KerasNamespace:
    return _KerasNamespace(source)
