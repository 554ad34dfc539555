"""The ``kgen`` command line: list, emit, verify.

User errors print one line (``kgen: error: ...``) and exit 2; nothing is half-written.
So do the machine's (a full disk, a file-size limit, a read-only directory) and click's
usage errors; exit 3 is for kgen's own bugs.  SIGINT and SIGTERM exit 130 and 143 and
leave no temporary file.  Set ``KGEN_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

from kgen.errors import KgenError

TF_LOG_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}


def _quiet_frameworks() -> None:
    for key, value in TF_LOG_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import warnings

    warnings.filterwarnings("ignore")


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def _framework_output(quiet: bool):
    """Keep stdout for results, and drop TensorFlow's native log lines.

    TensorFlow's C++ code writes to file descriptor 2 while it is imported (absl's
    "WARNING: All log messages before absl::InitializeLog() ...", CUDA probing), before
    ``TF_CPP_MIN_LOG_LEVEL`` can help.  Around loading and converting, fd 2 points at
    the null device and Python's ``sys.stderr`` at a copy of the real one, so kgen's own
    messages and the spinner still show.  What Keras prints to stdout (``Downloading
    data from ...`` and its progress bar) goes to stderr on a terminal, and nowhere
    otherwise or with ``--json``.  ``KGEN_DEBUG=1`` keeps everything.
    """
    with contextlib.ExitStack() as stack:
        if not os.environ.get("KGEN_DEBUG"):
            stack.enter_context(_native_stderr_silenced())
        show = os.environ.get("KGEN_DEBUG") or (not quiet and sys.stderr.isatty())
        stack.enter_context(contextlib.redirect_stdout(sys.stderr if show else io.StringIO()))
        yield


@contextlib.contextmanager
def _native_stderr_silenced():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    python_stderr = None
    if _fileno(sys.stderr) == 2:  # Python's stderr is fd 2 itself: give it a copy
        python_stderr = sys.stderr
        sys.stderr = os.fdopen(
            os.dup(saved),
            "w",
            buffering=1,
            encoding=python_stderr.encoding,
            errors="backslashreplace",
        )
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        if python_stderr is not None:
            copy, sys.stderr = sys.stderr, python_stderr
            copy.close()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _step(text: str, quiet: bool):
    """A spinner on stderr for a long step (silent with --json or when not a terminal)."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    with _console().status(text):
        yield


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"kgen: error: {message}", err=True)
    raise SystemExit(code)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the main thread is, so that cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []  # signals seen during this run, even if their exception was lost
_held = 0  # > 0: record signals, raise when the outermost _interrupts_held() ends


def _on_signal(signum, frame):
    _received.append(signum)
    if not _held:
        raise Interrupted(signum)


def _on_alarm(signum, frame):  # the re-delivery _unraisable schedules
    if _received and not _held:
        raise Interrupted(_received[0])


def _unraisable(hook):
    """``sys.unraisablehook`` for an :class:`Interrupted` lost where Python cannot
    raise (jax runs a callback on every garbage collection): print nothing and raise it
    again a few milliseconds later, out of that callback."""

    def unraisable(info):
        if not isinstance(info.exc_value, Interrupted):
            hook(info)
        elif hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0.005)

    return unraisable


@contextlib.contextmanager
def _interrupts_held():
    """Record SIGINT/SIGTERM without raising, and raise once the block is done."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1
    if not _held:
        _raise_if_interrupted()


def _import_frameworks() -> None:
    """Import jax with interrupts held, then Keras (and TensorFlow, its backend).

    jaxlib's nanobind module initialisation calls back into Python; an exception raised
    there cannot pass through its C++ and aborts the process (SIGABRT, a core dump)."""
    with _interrupts_held():
        import jax  # noqa: F401
    import keras  # noqa: F401


@contextlib.contextmanager
def _signals_handled():
    """SIGINT and SIGTERM raise :class:`Interrupted` (and are recorded, so that a
    library catching the exception cannot make the run succeed); SIGXFSZ is ignored, so
    that a file-size limit is an OSError (EFBIG) rather than a crash."""
    global _held
    _received.clear()
    _held = 0
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}
    handlers = (
        ("SIGINT", _on_signal),
        ("SIGTERM", _on_signal),
        ("SIGALRM", _on_alarm),
        ("SIGXFSZ", signal.SIG_IGN),
    )
    for name, handler in handlers:
        sig = getattr(signal, name, None)
        if sig is not None:
            saved[sig] = signal.signal(sig, handler)
    saved_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(saved_hook)
    try:
        yield
    finally:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
        sys.unraisablehook = saved_hook
        for sig, handler in saved.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _raise_if_interrupted() -> None:
    if _received:
        raise Interrupted(_received[0])


def _interrupted(exc: BaseException | None) -> None:
    signum = _received[0] if _received else getattr(exc, "signum", signal.SIGINT)
    word = "terminated" if signum == getattr(signal, "SIGTERM", None) else "interrupted"
    _fail(word, 128 + int(signum))


# OSErrors that are the machine's or the user's doing, not kgen's: exit 2.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOMEM,
    errno.EIO,
    *([errno.EDQUOT] if hasattr(errno, "EDQUOT") else []),
}


def _os_error_text(exc: OSError) -> str:
    text = exc.strerror or _one_line(exc) or type(exc).__name__
    if exc.errno == errno.EFBIG:
        text += " (a file-size limit, see `ulimit -f`)"
    return text


def _usage_error(exc: click.ClickException) -> None:
    message = _one_line(exc.format_message()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    _fail(message, 2)


class _Group(click.Group):
    """Turns every error into one line on stderr and a non-zero exit."""

    def main(self, *args, **kwargs):
        with _signals_handled():
            return super().main(*args, **kwargs)

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise  # plain `kgen`: the help text
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
        except BaseException as exc:
            if _received or isinstance(exc, KeyboardInterrupt):
                _interrupted(exc)
            if isinstance(exc, KgenError):
                _fail(_one_line(exc), exc.exit_code)
            if isinstance(exc, click.exceptions.NoArgsIsHelpError):
                raise
            if isinstance(exc, click.ClickException):
                _usage_error(exc)
            if isinstance(exc, (click.exceptions.Exit, click.exceptions.Abort, SystemExit)):
                raise
            if isinstance(exc, BrokenPipeError):  # e.g. `kgen list | head`
                sys.stderr.close()
                raise SystemExit(0) from None
            if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
                where = f": {exc.filename}" if exc.filename else ""
                _fail(f"{_os_error_text(exc)}{where}")
            if isinstance(exc, MemoryError):
                _fail("out of memory")
            if not isinstance(exc, Exception) or os.environ.get("KGEN_DEBUG"):
                raise
            # A kgen bug: still one line, traceback on request.
            _fail(
                f"internal error: {type(exc).__name__}: {_one_line(exc)[:300]} "
                "(set KGEN_DEBUG=1 for the traceback, and please report it)",
                3,
            )
        if _received:  # an interrupt that some library caught and dropped
            _interrupted(None)
        return result


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kgen")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE first (trusted code): the custom layer classes a model file names, "
    "or lowerings registered for them (repeatable).",
)
def main(plugins):
    """kgen: convert Keras models to readable Flax linen modules, with proven parity."""
    _quiet_frameworks()
    for name in plugins:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise KgenError(f"cannot import plugin {name!r}: {exc}") from None
        except Exception as exc:  # the plug-in's own code raised while importing
            if os.environ.get("KGEN_DEBUG"):
                raise
            text = _one_line(exc)
            raise KgenError(
                f"plugin {name!r} raised {type(exc).__name__} while importing"
                + (f": {text[:300]}" if text else "")
            ) from None


@main.command("list")
@click.option(
    "--only",
    type=click.Choice(["keras3", "tf_keras"]),
    default=None,
    help="Only applications of this Keras (tf_keras: legacy tf.keras 2).",
)
def list_cmd(only):
    """Print the application names kgen converts, one per line."""
    from kgen.tracer.catalog import APPLICATIONS

    for name, app in APPLICATIONS.items():
        if only in (None, app.source):
            click.echo(name)


_weights_help = (
    "imagenet (default for applications; Keras's download and cache), none (code only), "
    "or PATH to a Keras weights file (.weights.h5 or legacy .h5)."
)


def _parse_shape(ctx, param, value):
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected sizes such as 160,160,3") from None
    if not shape or min(shape) < 1:
        raise click.BadParameter(f"{value!r}: expected sizes such as 160,160,3")
    return shape


def _app_options(fn):
    """Options users set on keras.applications constructors (applications only)."""
    options = [
        click.option(
            "--include-top/--no-include-top",
            "include_top",
            default=None,
            help="Keep the classifier head (default: the application's).",
        ),
        click.option(
            "--pooling",
            type=click.Choice(["none", "avg", "max"]),
            default=None,
            help="Final pooling when the head is left out.",
        ),
        click.option(
            "--input-shape",
            callback=_parse_shape,
            default=None,
            metavar="H,W,C",
            help="Input shape without the batch, e.g. 160,160,3 (applications; and "
            "a subclassed model given as module:factory).",
        ),
        click.option(
            "--classes",
            type=click.IntRange(min=1),
            default=None,
            help="Number of classes (with --weights none/random or a weights file).",
        ),
        click.option(
            "--classifier-activation",
            default=None,
            metavar="NAME|none",
            help="Activation of the last layer, e.g. softmax or none (logits).",
        ),
        click.option("--alpha", type=float, default=None, help="Width multiplier (MobileNets)."),
        click.option(
            "--depth-multiplier",
            type=click.IntRange(min=1),
            default=None,
            help="Depth multiplier (MobileNet).",
        ),
        click.option(
            "--minimalistic",
            is_flag=True,
            default=None,
            help="MobileNetV3 without SE, hard-swish and 5x5 convolutions.",
        ),
        click.option(
            "--include-preprocessing/--no-include-preprocessing",
            "include_preprocessing",
            default=None,
            help="Built-in preprocessing layers (families that have them).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _collect_options(source: str, values: dict) -> dict:
    from kgen.tracer import catalog
    from kgen.tracer.load import is_factory

    options = {k: v for k, v in values.items() if v is not None}
    if is_factory(source):
        extra = sorted(set(options) - {"input_shape"})
        if extra:
            flags = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise KgenError(f"{flags} only apply to application names, not to {source!r}")
        return options
    shape = options.get("input_shape")
    if shape is not None and len(shape) != 3:
        raise KgenError(f"--input-shape {shape}: an application takes H,W,C such as 160,160,3")
    if "pooling" in options and options["pooling"] == "none":
        options["pooling"] = None
    if "classifier_activation" in options and options["classifier_activation"].lower() == "none":
        options["classifier_activation"] = None
    if options and source not in catalog.APPLICATIONS:
        flags = ", ".join("--" + k.replace("_", "-") for k in options)
        raise KgenError(f"{flags} only apply to application names, not to {source!r}")
    return options


def _load(source, weights, quiet, verify=False, options=None):
    _import_frameworks()
    from kgen.tracer import catalog
    from kgen.tracer.load import load_source

    options = dict(options or {})
    if verify and source in catalog.APPLICATIONS:
        options.setdefault("classifier_activation", None)  # compare logits, not softmax
    with _step(f"building {source}", quiet):
        return load_source(source, weights, **options)


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


def _app_names(loaded, options: dict) -> tuple[str | None, str | None]:
    """(class name, module name) for an application, distinct per architecture option."""
    from kgen.tracer import catalog

    if loaded.app is None:
        return None, None
    if not options:
        return loaded.app.name, loaded.app.name.lower()
    return catalog.variant_names(loaded.app, options)


def _check_output_dir(output: str) -> None:
    """Fail before the slow steps when the output cannot be a directory."""
    for parent in (Path(output), *Path(output).parents):
        if parent.exists():
            if not parent.is_dir():
                raise KgenError(f"output {output!r} is not a directory ({str(parent)!r} is a file)")
            if not os.access(parent, os.W_OK):
                raise KgenError(f"output directory {str(parent)!r} is not writable")
            return


def _regenerate_text(source: str, output: str, weights, app_options: dict) -> str:
    words = ["kgen emit", source]
    if weights is not None:
        words.append(f"--weights {weights}")
    for key, value in app_options.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else flag.replace("--", "--no-", 1))
        elif isinstance(value, tuple):
            words.append(f"{flag} {','.join(str(v) for v in value)}")
        else:
            words.append(f"{flag} {value}")
    return " ".join([*words, "-o", output])


@main.command()
@click.argument("source")
@click.option("-o", "--output", default="generated", show_default=True, help="Output directory.")
@click.option("--weights", default=None, metavar="imagenet|none|PATH", help=_weights_help)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line describing the result.")
@_app_options
def emit(source, output, weights, as_json, **app_options):
    """Convert SOURCE (an application name, a .keras/.h5 file or a tf.keras SavedModel
    directory) to a Flax module.

    Writes OUTPUT/<name>.py and, unless --weights none, OUTPUT/<name>.safetensors.
    """
    start = time.perf_counter()
    options = _collect_options(source, app_options)
    _check_output_dir(output)
    with _framework_output(as_json):
        _import_frameworks()
        from kgen.api import convert, module_file_name

        loaded = _load(source, weights, as_json, options=options)
        class_name, module_name = _app_names(loaded, options)
        metadata = None
        if loaded.app:
            size = options.get("input_shape", (loaded.app.input_size,) * 2)[:2]
            metadata = {"preprocess": loaded.app.preprocess, "input_size": tuple(size)}
        with _step("converting", as_json):
            conversion = convert(
                loaded.model,
                class_name=class_name,
                regenerate=_regenerate_text(source, output, weights, app_options)
                if loaded.app
                else "",
                metadata=metadata,
                input_shapes=loaded.input_shapes,
                # a file's code is never run (and the allowlist agrees); a factory's is
                # the user's own
                trace_lambdas=loaded.from_code,
            )
    if module_name is not None:
        conversion.module_name = module_file_name(module_name)
    _raise_if_interrupted()  # nothing is written after an interrupt, even a swallowed one
    with _step("writing", as_json):
        try:
            py_path, st_path = conversion.write(output, weights=weights != "none")
        except OSError as exc:
            raise KgenError(f"cannot write to {output}: {_os_error_text(exc)}") from None
    seconds = time.perf_counter() - start
    if as_json:
        click.echo(
            json.dumps(
                {
                    "module": str(py_path),
                    "weights": None if st_path is None else str(st_path),
                    "class": conversion.class_name,
                    "layers": conversion.n_layers,
                    "seconds": round(seconds, 3),
                }
            )
        )
    else:
        click.echo(f"wrote {py_path} (class {conversion.class_name}, {conversion.n_layers} layers)")
        if st_path is not None:
            click.echo(f"wrote {st_path}")


@main.command()
@click.argument("source", required=False)
@click.option(
    "--weights",
    default="random",
    show_default=True,
    metavar="random|imagenet|model|PATH",
    help="random: set EVERY Keras variable to random values first; imagenet: "
    "the ImageNet weights; model: a model file's own weights; PATH: a "
    "Keras weights file.",
)
@click.option("--seed", default=0, show_default=True, help="Seed for random weights and inputs.")
@click.option(
    "--batch",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Batch size of the random input.",
)
@click.option(
    "--taps",
    default=8,
    show_default=True,
    type=click.IntRange(min=0),
    help="Also compare this many evenly spaced intermediate layer outputs "
    "(with random weights a deep model's logits can hide early-layer bugs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line with the results.")
@click.option(
    "--all",
    "all_apps",
    is_flag=True,
    help="Verify every application, one subprocess each, and print a table.",
)
@click.option(
    "--markdown",
    default=None,
    metavar="PATH",
    help="With --all: also write the table as Markdown (e.g. docs/catalog.md).",
)
@click.option(
    "--only",
    type=click.Choice(["keras3", "tf_keras"]),
    default=None,
    help="With --all: only applications of this Keras.",
)
@_app_options
def verify(source, weights, seed, batch, taps, as_json, all_apps, markdown, only, **app_options):
    """Convert SOURCE and compare it with Keras on a random batch.

    By default EVERY Keras variable (BN statistics, gammas, betas, biases) is first set
    to random values.  Exits 1 if the relative error max|flax - keras| / max|keras| of
    any output is above 1e-4.  Applications are compared on logits
    (classifier_activation=None) unless --classifier-activation is given.
    """
    from kgen.tracer import catalog
    from kgen.verify import TOLERANCE, check_model

    if all_apps:
        return _verify_all(seed, markdown, only, as_json, source)
    if source is None:
        raise click.UsageError("give a SOURCE or --all")
    options = _collect_options(source, app_options)

    if weights == "model" and source in catalog.APPLICATIONS:
        raise KgenError(
            "--weights model means a model file's own weights; for an application use "
            "random, imagenet or a weights file PATH"
        )
    randomize = weights in ("random", "none")
    load_weights = {"random": "none", "model": None}.get(weights, weights)
    with _framework_output(as_json):
        loaded = _load(source, load_weights, as_json, verify=True, options=options)
        params = int(loaded.model.count_params())
        with _step(f"converting and comparing {source}", as_json):
            conversion, report = check_model(
                loaded.model,
                seed=seed,
                batch=batch,
                randomize_weights=randomize,
                inputs=_app_inputs(loaded, batch, seed),
                taps=taps,
                input_shapes=loaded.input_shapes,
            )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "source": source,
                    "class": conversion.class_name,
                    "layers": conversion.n_layers,
                    "params": params,
                    "convert_seconds": round(conversion.seconds, 3),
                    "randomized": randomize,
                    "max_rel": report.max_rel,
                    "tolerance": TOLERANCE,
                    "ok": report.ok,
                    "outputs": [o.__dict__ for o in report.outputs],
                }
            )
        )
    else:
        what = "every variable randomised" if randomize else "given weights"
        click.echo(
            f"{source}: {conversion.n_layers} layers, "
            f"converted in {conversion.seconds:.1f} s ({what})"
        )
        for line in report.lines():
            click.echo(f"  {line}")
        verdict = "PASS" if report.ok else "FAIL"
        sign = "<=" if report.ok else ">"
        click.echo(f"{verdict}: max rel {report.max_rel:.3e} {sign} {TOLERANCE:.0e}")
    if not report.ok:
        raise SystemExit(1)


def _verify_all(seed, markdown, only, as_json, source) -> None:
    from kgen import catalog_run
    from kgen.tracer.catalog import APPLICATIONS

    if source is not None:
        raise click.UsageError("give either a SOURCE or --all, not both")
    names = [n for n, app in APPLICATIONS.items() if only in (None, app.source)]

    def progress(name, row):
        if row is None:
            click.echo(f"verifying {name} ...", err=True)
        else:
            result = "pass" if row.ok else f"FAIL {row.error}"
            rel = "" if row.max_rel is None else f" max rel {row.max_rel:.2e}"
            click.echo(f"  {name}: {result}{rel} ({row.wall:.0f} s)", err=True)

    command = "kgen verify --all" + (f" --only {only}" if only else "") + f" --markdown {markdown}"

    def on_row(rows, pending):  # keep the report current, so an interrupted run still shows
        if markdown:
            catalog_run.write_markdown(rows, markdown, command, pending)

    rows = catalog_run.run_catalog(
        names, seed=seed, progress=None if as_json else progress, on_row=on_row
    )
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows]))
    else:
        click.echo(catalog_run.text_table(rows))
    if not all(r.ok for r in rows):
        raise SystemExit(1)


@main.command()
@click.option(
    "--markdown",
    default=None,
    metavar="PATH",
    help="Write the table to PATH (docs/layers.md) instead of printing it.",
)
def layers(markdown):
    """The supported Keras layers, ops and TF symbols, from the lowering registry."""
    from kgen.layer_table import layer_table_markdown

    text = layer_table_markdown()
    if markdown is None:
        click.echo(text, nl=False)
        return
    path = Path(markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path}")


@main.command()
@click.argument("source")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line with the results.")
@_app_options
def bench(source, batch, repeats, as_json, **app_options):
    """Inference time of the generated module vs Keras, in the same process and batch.

    Reports medians and the speed ratio (Keras time / Flax time, on this machine's
    devices); compile time of the jitted Flax module is reported separately.
    """
    from kgen.bench import bench_model

    options = _collect_options(source, app_options)
    with _framework_output(as_json):
        loaded = _load(source, "none", as_json, verify=True, options=options)
        with _step(f"benchmarking {source}", as_json):
            result = bench_model(loaded.model, source, batch=batch, repeats=repeats)
    if as_json:
        click.echo(json.dumps({**result.__dict__, "speedup": result.speedup}))
    else:
        click.echo(result.line())


@main.command()
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="DIR",
    help="Write the generated module here (default: a temporary directory).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line with the results.")
def demo(output, as_json):
    """Convert a real trained model and compare it with Keras, offline.

    The model is a small CNN trained on scikit-learn's 8x8 digits (shipped with kgen;
    rebuild it with `python -m kgen.examples.digits.train`).  Keras and the generated Flax
    module classify the held-out split; exits 1 unless at least 99.9% of predictions are
    identical and the logits' relative error is at most 1e-5.
    """
    from kgen.examples.digits import demo as digits_demo

    if output is not None:
        _check_output_dir(output)
    with _framework_output(as_json), _step("converting the digits CNN and comparing", as_json):
        result = digits_demo.run(output)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(f"{result.model}: {result.layers} layers -> {result.class_name}")
        if output is not None:
            click.echo(f"wrote {result.module} and {result.weights}")
        click.echo(f"held-out digits: {result.samples} images")
        click.echo(f"  {'':24}{'Keras':>8}{'Flax':>8}")
        click.echo(f"  {'accuracy':24}{result.keras_accuracy:8.2%}{result.flax_accuracy:8.2%}")
        same = round(result.same_predictions * result.samples)
        click.echo(
            f"  identical predictions   {result.same_predictions:.2%} ({same}/{result.samples})"
        )
        click.echo(
            f"  logits                  max abs {result.max_abs:.3e}  max rel {result.max_rel:.3e}"
        )
        verdict = "PASS" if result.ok else "FAIL"
        click.echo(
            f"{verdict}: identical predictions >= {digits_demo.MIN_SAME_PREDICTIONS:.1%}, "
            f"max rel <= {digits_demo.MAX_REL:.0e}"
        )
    if not result.ok:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
