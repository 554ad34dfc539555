"""From a source to a conversion: the library steps behind ``kgen emit`` and ``kgen verify``.

A :class:`Source` says what to convert: an application name and its constructor
options, a model file (or tf.keras SavedModel directory) and a weights choice, or a
``module:factory`` of the user's own code.  :func:`load` builds or loads the Keras
model, :func:`convert` turns it into a :class:`~kgen.api.Conversion` with the names,
preprocessing metadata and regenerate header the command line gives, and :func:`verify`
compares it with Keras.  The command line parses, calls these and prints; the Python API
(``kgen.convert``, ``kgen.load``) calls the same steps.

Messages name the keyword arguments (``input_shape``); the command line adds its flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kgen.errors import SourceError

__all__ = [
    "CONVERT_PACKAGES",
    "OptionError",
    "Source",
    "check_name",
    "convert",
    "draw",
    "load",
    "missing_packages",
    "verify",
]

#: What converting needs beyond the runtime install (the ``[convert]`` extra), by
#: import name.  The runtime (generated modules, ``kgen.runtime``, ``kgen.load`` from
#: its cache) needs none of them.
CONVERT_PACKAGES = ("tensorflow", "keras", "tf_keras", "h5py", "networkx", "jinja2", "ruff")
INSTALL_CONVERT = "pip install 'kgen-flax[convert]'"


def missing_packages() -> list[str]:
    """The conversion packages that are not installed (found without importing them)."""
    import importlib.util

    return [name for name in CONVERT_PACKAGES if importlib.util.find_spec(name) is None]


def check_name(name: str) -> str:
    """``name`` if it can be a generated class name: an ASCII identifier, not a keyword,
    starting with a letter, at most 100 characters."""
    import keyword

    if not (
        name.isascii()
        and name.isidentifier()
        and name[:1].isalpha()
        and not keyword.iskeyword(name)
        and len(name) <= 100
    ):
        raise SourceError(
            f"name {name!r} is not a class name: use letters, digits and underscores, "
            "starting with a letter (e.g. MyNet)"
        )
    return name


class OptionError(SourceError):
    """Options that do not apply to a source; ``options`` names them (keywords)."""

    def __init__(self, options: list[str], what: str):
        self.options = list(options)
        self.what = what
        super().__init__(f"{', '.join(self.options)} {what}")


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Source:
    """What to convert.

    ``spec``: an application name (``"MobileNetV2"``), a ``.keras``/``.h5`` file or
    SavedModel directory, or ``"package.module:factory"``.  ``weights``: for
    applications ``"imagenet"`` (the default), ``"none"`` or a Keras weights file; for
    model files ``None`` (the file's own), ``"none"`` or a weights file.  ``options``:
    the ``keras.applications`` constructor options (``include_top``, ``input_shape``,
    ...), or only ``input_shape`` for a factory's subclassed model.
    """

    spec: str
    weights: str | None = None
    options: dict = field(default_factory=dict)

    @classmethod
    def of(cls, spec: str, weights: str | None = None, **options) -> Source:
        """A checked source: options that are ``None`` are left out, ``pooling="none"``
        and ``classifier_activation="none"`` mean ``None``."""
        from kgen.tracer import catalog
        from kgen.tracer.load import is_factory, looks_like_path

        opts = {k: _freeze(v) for k, v in options.items() if v is not None}
        if isinstance(opts.get("outputs"), str):
            opts["outputs"] = tuple(n.strip() for n in opts["outputs"].split(",") if n.strip())
        if "outputs" in opts:
            names = opts["outputs"]
            if not names or not all(isinstance(n, str) and n for n in names):
                raise OptionError(["outputs"], "must be layer names, e.g. ('conv3', 'gap')")
            opts["outputs"] = tuple(names)
        unknown = sorted(set(opts) - set(catalog.OPTION_KEYS) - {"outputs"})
        if unknown:
            raise OptionError(unknown, "are not application options")
        if is_factory(spec):
            extra = sorted(set(opts) - {"input_shape"})  # a subclassed model has no layer graph
            if extra:
                raise OptionError(extra, f"do not apply to a module:factory source ({spec!r})")
            return cls(spec, weights, opts)
        if spec not in catalog.APPLICATIONS and not looks_like_path(spec):
            catalog.get(spec)  # raises: unknown application, with the closest names
        app_only = [k for k in opts if k != "outputs"]
        if app_only and spec not in catalog.APPLICATIONS:
            raise OptionError(app_only, f"only apply to application names, not to {spec!r}")
        shape = opts.get("input_shape")
        if shape is not None and len(shape) != 3:
            raise OptionError(
                ["input_shape"], f"{shape}: an application takes (H, W, C) such as (160, 160, 3)"
            )
        for key in ("pooling", "classifier_activation"):
            if isinstance(opts.get(key), str) and opts[key].lower() == "none":
                opts[key] = None
        return cls(spec, weights, opts)

    @property
    def app(self):
        """The catalog entry for an application name, else None."""
        from kgen.tracer import catalog

        return catalog.APPLICATIONS.get(self.spec)

    @property
    def is_factory(self) -> bool:
        from kgen.tracer.load import is_factory

        return is_factory(self.spec)

    def names(self) -> tuple[str | None, str | None]:
        """(class name, module name) for an application, distinct per option; for other
        sources ``(None, None)``: they come from the model's own name."""
        from kgen.tracer import catalog

        app = self.app
        if app is None:
            return None, None
        if not self.options:
            return app.name, app.name.lower()
        return catalog.variant_names(app, self.options)

    def command(self, output: str, *, fold: bool = True, api: str = "linen") -> str:
        """The ``kgen emit`` command line that writes this source to ``output``."""
        words = ["kgen emit", self.spec]
        if self.weights is not None:
            words.append(f"--weights {self.weights}")
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag if value else flag.replace("--", "--no-", 1))
            elif isinstance(value, tuple):
                words.append(f"{flag} {','.join(str(v) for v in value)}")
            else:
                words.append(f"{flag} {'none' if value is None else value}")
        if not fold:
            words.append("--no-fold")
        if api != "linen":
            words.append(f"--api {api}")
        return " ".join([*words, "-o", output])


def load(source: Source, *, logits: bool = False):
    """Build or load the Keras model (a :class:`~kgen.tracer.load.LoadedModel`).

    ``logits``: an application's classifier activation defaults to none, so that a
    comparison sees logits rather than a saturated softmax.
    """
    from kgen.tracer.load import load_source, with_outputs

    options = dict(source.options)
    outputs = options.pop("outputs", None)
    if logits and source.app is not None:
        options.setdefault("classifier_activation", None)
    loaded = load_source(source.spec, source.weights, **options)
    if outputs:
        loaded.model = with_outputs(loaded.model, outputs)
    return loaded


def application_metadata(app, input_shape=None) -> dict:
    """The generated class's ``preprocess_mode`` and ``input_size`` (height, width)."""
    size = tuple(input_shape[:2]) if input_shape else (app.input_size,) * 2
    return {"preprocess": app.preprocess, "input_size": size}


def convert(
    source: Source,
    *,
    name: str | None = None,
    output: str = "generated",
    loaded=None,
    fold: bool = True,
    api: str = "linen",
    logical_axes: bool | None = None,
):
    """Convert ``source``: a :class:`~kgen.api.Conversion` named as ``kgen emit`` names it.

    ``name``: the class name (and, snake-cased, the module name) instead of the default.
    ``output`` only goes into the generated file's "Regenerate with" line.  ``loaded``:
    the model :func:`load` gave, when the caller already has it.  ``fold=False``: the
    flat form, one statement per Keras layer, without classes for repeated blocks (its
    variables are one submodule per layer, as kgen wrote them before folding).
    ``api="nnx"``: a Flax NNX module instead of a linen one.
    """
    from kgen.api import convert_model, module_file_name
    from kgen.codegen.names import snake_case

    if name is not None:
        check_name(name)
    if loaded is None:
        loaded = load(source)
    class_name, module_name = source.names()
    if name is not None:
        class_name, module_name = name, snake_case(name)
    metadata = None
    if loaded.app is not None:
        metadata = application_metadata(loaded.app, source.options.get("input_shape"))
    conversion = convert_model(
        loaded.model,
        class_name=class_name,
        regenerate=source.command(output, fold=fold, api=api) if loaded.app else "",
        metadata=metadata,
        input_shapes=loaded.input_shapes,
        # a file's code is never run (and the allowlist agrees); a factory's is the user's
        trace_lambdas=loaded.from_code,
        fold=fold,
        api=api,
        logical_axes=logical_axes,
    )
    if module_name is not None:
        conversion.module_name = module_file_name(module_name)
    return conversion


def _app_inputs(loaded, batch: int, seed: int):
    """A random batch for an application: raw pixels in [0, 255] for models with built-in
    preprocessing, [-1, 1] otherwise, at the catalog input size where the spatial dims
    are free (MobileNetV3, include_top=False; an 8x8 default would shrink to nothing in
    a stride-32 stack).  None (check_model's own inputs) for model files."""
    from kgen.tracer.graph import InputSpec
    from kgen.verify import random_inputs

    if loaded.app is None:
        return None
    shapes = [tuple(t.shape) for t in loaded.model.inputs]
    size = loaded.app.input_size
    specs = [
        InputSpec(str(i), str(i), (None, *(size if d is None else int(d) for d in shape[1:])))
        for i, shape in enumerate(shapes)
    ]
    low, high = (0.0, 255.0) if loaded.app.preprocess == "none" else (-1.0, 1.0)
    return random_inputs(specs, batch=batch, seed=seed + 1, low=low, high=high)


@dataclass
class Verified:
    """What :func:`verify` found: the conversion, the comparison and the model's size."""

    conversion: object  # kgen.api.Conversion
    report: object  # kgen.verify.Report
    params: int
    randomized: bool


def verify(
    source: Source,
    *,
    randomize: bool = True,
    seed: int = 0,
    batch: int = 2,
    taps: int = 8,
    fold: bool = True,
    api: str = "linen",
    packed: bool = True,
) -> Verified:
    """Convert ``source`` and compare it with Keras on a random batch (logits for
    applications), after setting every Keras variable to random values unless
    ``randomize`` is false (then the source's own weights are compared).  ``fold=False``
    checks the flat form (see :func:`convert`); ``api="nnx"`` the Flax NNX module.
    ``packed``: compare the linen module once more with its convolution kernels packed
    (``rt.pack``), where any pack here (:func:`kgen.verify.check_model`)."""
    from kgen.verify import check_model

    loaded = load(source, logits=True)
    conversion, report = check_model(
        loaded.model,
        seed=seed,
        batch=batch,
        randomize_weights=randomize,
        inputs=_app_inputs(loaded, batch, seed),
        taps=taps,
        input_shapes=loaded.input_shapes,
        fold=fold,
        api=api,
        packed=packed,
    )
    return Verified(conversion, report, int(loaded.model.count_params()), randomize)


def draw(source: Source, path, *, loaded=None):
    """Trace ``source`` and draw its graph to ``path`` (``.svg``, ``.png`` or ``.pdf``)."""
    from kgen.codegen.registry import has_lowering
    from kgen.plot import draw_graph
    from kgen.tracer import trace

    if loaded is None:
        loaded = load(source)
    specs = None
    if loaded.input_shapes is not None:
        specs = [((None, *shape), "float32") for shape in loaded.input_shapes]
    graph = trace(
        loaded.model,
        has_lowering=has_lowering,
        trace_lambdas=loaded.from_code,
        input_specs=specs,
    )
    what = source.spec if source.app is not None else Path(source.spec).name
    return draw_graph(graph, path, title=f"{what}: {graph.graph['name']}")
