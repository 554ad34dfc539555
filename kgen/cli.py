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
import re
import signal
import sys
import threading
import time
from pathlib import Path

import click

from kgen.bench import CALLS, SETTLE_S
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


# Library messages name options as keywords (``weights=none``); the CLI says its flags.
_OPTION_WORDS = re.compile(
    r"\b(weights|input_shape|include_top|pooling|classes|classifier_activation|alpha|"
    r"depth_multiplier|minimalistic|include_preprocessing|outputs)=([^\s,)]*)"
)


def _cli_flags(message: str) -> str:
    """``weights=none`` -> ``--weights none``; a bare ``input_shape=`` -> ``--input-shape``."""

    def flag(match: re.Match) -> str:
        name = "--" + match.group(1).replace("_", "-")
        return f"{name} {match.group(2)}" if match.group(2) else name

    return _OPTION_WORDS.sub(flag, message)


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
                _fail(_cli_flags(_one_line(exc)), exc.exit_code)
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
@click.version_option(package_name="kgen-flax")
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
    if plugins:
        _cwd_importable()
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
    """Options users set on keras.applications constructors (applications only), and
    ``--outputs`` (applications and model files)."""
    options = [
        click.option(
            "--outputs",
            default=None,
            metavar="LAYER[,LAYER...]",
            help="Return these layers' outputs instead of the model's (feature maps, a "
            "backbone's pooled features); applications and model files.",
        ),
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
            help="Number of classes; with the ImageNet weights the backbone gets them and "
            "the new head Keras's initialisation.",
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


def _cwd_importable() -> None:
    """Make the current directory importable first, as ``python -m`` does, for the
    user's own modules (``--plugin mypkg.layers``, ``mypkg.models:make``)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _check_name(value):
    from kgen.errors import SourceError
    from kgen.pipeline import check_name

    if value is None:
        return None
    try:
        return check_name(value)
    except SourceError as exc:
        raise click.BadParameter(str(exc)) from None


def _source(spec: str, weights, values: dict):
    """A checked :class:`~kgen.pipeline.Source`; an unknown name or a missing file is
    reported here, before jax, TensorFlow and Keras are imported, and so is an install
    without the conversion packages."""
    from kgen.pipeline import INSTALL_CONVERT, OptionError, Source, missing_packages

    missing = missing_packages()
    if missing:
        command = f"kgen {click.get_current_context().info_name}"
        raise KgenError(
            f"{command} needs the conversion packages ({', '.join(missing)} missing): "
            f"{INSTALL_CONVERT}"
        )
    try:
        source = Source.of(spec, weights, **values)
    except OptionError as exc:
        flags = ", ".join("--" + k.replace("_", "-") for k in exc.options)
        raise KgenError(f"{flags} {exc.what}") from None
    if source.is_factory:
        _cwd_importable()
    return source


def _load(source, quiet, verify=False):
    from kgen import pipeline

    _import_frameworks()
    with _step(f"building {source.spec}", quiet):
        return pipeline.load(source, logits=verify)


def _check_output_dir(output: str) -> None:
    """Fail before the slow steps when the output cannot be a directory."""
    for parent in (Path(output), *Path(output).parents):
        if parent.exists():
            if not parent.is_dir():
                raise KgenError(f"output {output!r} is not a directory ({str(parent)!r} is a file)")
            if not os.access(parent, os.W_OK):
                raise KgenError(f"output directory {str(parent)!r} is not writable")
            return


@main.command()
@click.argument("source")
@click.option("-o", "--output", default="generated", show_default=True, help="Output directory.")
@click.option("--weights", default=None, metavar="imagenet|none|PATH", help=_weights_help)
@click.option(
    "--name",
    default=None,
    callback=lambda ctx, param, value: _check_name(value),
    metavar="CLASS",
    help="Class name of the generated module (its snake case names the file).",
)
@click.option(
    "--fold/--no-fold",
    default=True,
    show_default=True,
    help="Write repeated blocks as classes (--no-fold: one statement per Keras layer, the "
    "form whose weights files kgen wrote before folding).",
)
@click.option(
    "--api",
    type=click.Choice(["linen", "nnx"]),
    default="linen",
    show_default=True,
    help="Flax API of the module: linen (nn.Module) or nnx (nnx.Module, built in __init__).",
)
@click.option(
    "--logical-axes/--no-logical-axes",
    default=None,
    help="Name the axes of Dense, EinsumDense, Embedding and attention kernels for tensor "
    "parallelism (nn.with_logical_partitioning). Default: on for linen modules of models "
    "with attention layers.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line describing the result.")
@_app_options
def emit(source, output, weights, name, fold, api, logical_axes, as_json, **app_options):
    """Convert SOURCE (an application name, a .keras/.h5 file or a tf.keras SavedModel
    directory) to a Flax module.

    Writes OUTPUT/<name>.py and, unless --weights none, OUTPUT/<name>.safetensors.
    """
    start = time.perf_counter()
    src = _source(source, weights, app_options)
    _check_output_dir(output)
    with _framework_output(as_json):
        from kgen import pipeline

        _import_frameworks()
        imported_at = time.perf_counter()
        loaded = _load(src, as_json)
        loaded_at = time.perf_counter()
        with _step("converting", as_json):
            conversion = pipeline.convert(
                src,
                name=name,
                output=output,
                loaded=loaded,
                fold=fold,
                api=api,
                logical_axes=logical_axes,
            )
    _raise_if_interrupted()  # nothing is written after an interrupt, even a swallowed one
    written_from = time.perf_counter()
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
                    "fresh_layers": list(loaded.fresh_layers),
                    "seconds": round(seconds, 3),
                    # where the time went: importing jax/TF/Keras, building or loading
                    # the Keras model, kgen's own steps, writing the files
                    "timings": {
                        k: round(v, 3)
                        for k, v in {
                            "import": imported_at - start,
                            "keras_load": loaded_at - imported_at,
                            **conversion.timings,
                            "write": time.perf_counter() - written_from,
                        }.items()
                    },
                }
            )
        )
    else:
        click.echo(f"wrote {py_path} (class {conversion.class_name}, {conversion.n_layers} layers)")
        if loaded.fresh_layers:
            click.echo(
                f"  ImageNet backbone; new head at Keras's initialisation: "
                f"{', '.join(loaded.fresh_layers)}"
            )
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
@click.option(
    "--fold/--no-fold",
    default=True,
    show_default=True,
    help="Check the module with repeated blocks as classes (--no-fold: the flat form).",
)
@click.option(
    "--api",
    type=click.Choice(["linen", "nnx"]),
    default="linen",
    show_default=True,
    help="Check the linen module or the Flax NNX one (kgen emit --api).",
)
@click.option(
    "--pack/--no-pack",
    default=True,
    show_default=True,
    help="Also compare the linen module with its convolution kernels packed for oneDNN "
    "(kgen.runtime.pack), as outputs named packed:NAME, where any kernel packs here.",
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
def verify(
    source,
    weights,
    seed,
    batch,
    taps,
    fold,
    api,
    pack,
    as_json,
    all_apps,
    markdown,
    only,
    **app_options,
):
    """Convert SOURCE and compare it with Keras on a random batch.

    By default EVERY Keras variable (BN statistics, gammas, betas, biases) is first set
    to random values.  Exits 1 if the relative error max|flax - keras| / max|keras| of
    any output is above 1e-4.  Applications are compared on logits
    (classifier_activation=None) unless --classifier-activation is given.
    """
    from kgen.tracer import catalog
    from kgen.verify import TOLERANCE

    if all_apps:
        return _verify_all(seed, markdown, only, as_json, source)
    if source is None:
        raise click.UsageError("give a SOURCE or --all")
    if weights == "model" and source in catalog.APPLICATIONS:
        raise KgenError(
            "--weights model means a model file's own weights; for an application use "
            "random, imagenet or a weights file PATH"
        )
    randomize = weights in ("random", "none")
    load_weights = {"random": "none", "model": None}.get(weights, weights)
    src = _source(source, load_weights, app_options)
    with _framework_output(as_json):
        from kgen import pipeline

        _import_frameworks()
        with _step(f"converting and comparing {source}", as_json):
            result = pipeline.verify(
                src,
                randomize=randomize,
                seed=seed,
                batch=batch,
                taps=taps,
                fold=fold,
                api=api,
                packed=pack,
            )
    conversion, report, params = result.conversion, result.report, result.params
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
@click.argument("source")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    help="The picture: FILE.svg, FILE.png or FILE.pdf.",
)
@click.option(
    "--weights",
    default="none",
    show_default=True,
    metavar="none|PATH|model",
    help="Weights do not change the picture; a model file's own are read with model.",
)
@_app_options
def graph(source, output, weights, **app_options):
    """Draw SOURCE's traced graph (as keras.utils.plot_model does) to FILE.

    One box per layer call, named as in Keras; nested models and custom layers kgen
    traces into, which become classes of their own, are drawn as rounded boxes.
    """
    from kgen.plot import FORMATS

    if Path(output).suffix.lower() not in FORMATS:
        raise click.BadParameter(
            f"{output!r}: the format comes from the suffix, one of {', '.join(FORMATS)}",
            param_hint="'-o'",
        )
    src = _source(source, None if weights == "model" else weights, app_options)
    _check_output_dir(str(Path(output).parent) or ".")
    with _framework_output(False):
        from kgen import pipeline

        loaded = _load(src, False)
        with _step("drawing", False):
            path = pipeline.draw(src, output, loaded=loaded)
    click.echo(f"wrote {path}")


@main.group()
def cache():
    """The conversions kgen.load keeps (ordinary generated .py and .safetensors files)."""


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per entry.")
def cache_list(as_json):
    """Print the cached conversions: key, source, weights, options, class, size."""
    from kgen import cache as kcache

    found = kcache.entries()
    for e in found:
        if as_json:
            record = {k: str(v) if k == "path" else v for k, v in e.__dict__.items()}
            click.echo(json.dumps({**record, "size": e.size}))
        else:
            opts = ",".join(f"{k}={v}" for k, v in e.options.items()) or "-"
            click.echo(
                f"{e.key}  {e.source}  weights={e.weights or 'default'}  {opts}  "
                f"{e.class_name}  {_size(e.size)}  kgen {e.kgen_version}  {e.created}"
            )
    if not as_json:
        click.echo(f"{len(found)} cached in {kcache.cache_dir()}", err=True)


@cache.command("clear")
@click.argument("source", required=False)
def cache_clear(source):
    """Remove every cached conversion, or only those of SOURCE."""
    from kgen import cache as kcache

    removed = kcache.clear(source)
    click.echo(f"removed {len(removed)} cached conversion{'s' * (len(removed) != 1)}")


@cache.command("dir")
def cache_dir_cmd():
    """Print the cache directory ($KGEN_CACHE_DIR, else the user cache directory)."""
    from kgen import cache as kcache

    click.echo(str(kcache.cache_dir()))


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


def _parse_batches(ctx, param, values):
    """``--batch 8 --batch 1`` or ``--batch 8,1``: batch sizes, in the order given."""
    sizes = []
    for value in values or ("8",):
        for word in value.split(","):
            try:
                size = int(word)
            except ValueError:
                raise click.BadParameter(f"{value!r}: expected batch sizes such as 8,1") from None
            if size < 1:
                raise click.BadParameter(f"{value!r}: a batch size is at least 1")
            sizes.append(size)
    return list(dict.fromkeys(sizes))


def _parse_engines(ctx, param, value):
    from kgen.bench import ENGINES

    if value is None:
        return None
    names = [w.strip() for w in value.split(",") if w.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        raise click.BadParameter(f"{value!r}: engines are {', '.join(ENGINES)} (comma-separated)")
    return names


@main.command()
@click.argument("source", required=False)
@click.option(
    "--batch",
    "batches",
    multiple=True,
    callback=_parse_batches,
    metavar="N[,N...]",
    help="Batch size; repeat it or give a list (--batch 8 --batch 1, --batch 8,1). Default 8.",
)
@click.option(
    "--repeats",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rounds per batch size: turns of each engine, engines alternated.",
)
@click.option(
    "--settle",
    default=SETTLE_S,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Pause before each engine's turn, so that the last engine's spinning threads "
    "have gone idle.",
)
@click.option(
    "--calls",
    default=CALLS,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="N",
    help="Timed calls per engine and round, back to back after the pause: the first is "
    "reported as the call after idle time, the others give the steady-state throughput.",
)
@click.option(
    "--engines",
    callback=_parse_engines,
    default=None,
    metavar="NAME[,NAME...]",
    help="Only these engines: keras_tf, keras_tf_xla, keras_jax, onnxruntime, kgen, "
    "kgen_flat (default: all; keras_tf is the baseline of the ratios).",
)
@click.option(
    "--flat/--no-flat",
    default=True,
    show_default=True,
    help="Also time the flat form (--no-fold): its XLA compile and run time.",
)
@click.option(
    "--keep-memory/--no-keep-memory",
    default=True,
    show_default=True,
    help="The kgen engines' processes call rt.keep_memory() before JAX starts, as kgen's "
    "serving recipe does (the buffers XLA frees are kept for the next call).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--all",
    "all_apps",
    is_flag=True,
    help="One application per family (random weights), and a Markdown table.",
)
@click.option(
    "--models",
    default=None,
    metavar="NAME[,NAME...]",
    help="With --all: these applications instead of one per family.",
)
@click.option(
    "--markdown",
    default=None,
    metavar="PATH",
    help="With --all: also write the tables as Markdown to PATH.",
)
@_app_options
def bench(
    source,
    batches,
    repeats,
    settle,
    calls,
    engines,
    flat,
    keep_memory,
    as_json,
    all_apps,
    models,
    markdown,
    **app_options,
):
    """Inference time of the generated module beside Keras on TF (graph and XLA), Keras
    on JAX, ONNX Runtime and the flat form: same batch, one process per engine, engines
    alternated.

    Per engine and batch: warm-up (compile) seconds, median and [min-max] milliseconds
    per batch in steady state, images/s, the ratio to Keras-TF graph (above 1: faster),
    the same for the first call after each idle pause, and the peak RSS of the engine's
    own process; and kgen's conversion and rt.init times.  Applications are built with
    random weights (offline).  ONNX Runtime needs the bench extra (pip install
    'kgen-flax[bench]'); an engine that cannot run is shown absent, with why.
    """
    from kgen import bench as kbench

    wanted = list(engines or kbench.ENGINES)
    if not flat and "kgen_flat" in wanted:
        wanted.remove("kgen_flat")
    if all_apps:
        if source is not None:
            raise click.UsageError("give either a SOURCE or --all, not both")
        if any(v is not None for v in app_options.values()):
            raise click.UsageError("application options do not apply with --all")
        names = kbench.family_representatives()
        if models is not None:
            names = [n.strip() for n in models.split(",") if n.strip()]
        sources = [_source(n, "none", {}) for n in names]
    else:
        if source is None:
            raise click.UsageError("give a SOURCE or --all")
        if models is not None or markdown is not None:
            raise click.UsageError("--models and --markdown go with --all")
        sources = [_source(source, "none", app_options)]

    def progress(text):
        if not as_json:
            click.echo(text, err=True)

    command = None
    if all_apps:
        command = "kgen bench --all" + (f" --models {models}" if models is not None else "")
        command += f" --batch {','.join(map(str, batches))} --repeats {repeats}"
        command += f" --settle {settle:g}" if settle != SETTLE_S else ""
        command += f" --calls {calls}" if calls != CALLS else ""
        command += f" --engines {','.join(engines)}" if engines is not None else ""
        command += " --no-flat" if not flat else ""
        command += " --no-keep-memory" if not keep_memory else ""
        command += f" --markdown {markdown}" if markdown else ""
    results = []
    for src in sources:
        with _framework_output(as_json):
            _import_frameworks()
            import keras

            keras.backend.clear_session()
            results.append(
                kbench.bench_source(
                    src,
                    batches=batches,
                    repeats=repeats,
                    engines=wanted,
                    progress=progress,
                    settle_s=settle,
                    calls=calls,
                    keep_memory=keep_memory,
                )
            )
        if not as_json:
            click.echo("\n".join(results[-1].lines()))
        if markdown:  # kept current, so that an interrupted run still shows its models
            path = Path(markdown)
            path.parent.mkdir(parents=True, exist_ok=True)
            pending = [src.spec for src in sources[len(results) :]]
            path.write_text(kbench.markdown_report(results, command, pending), encoding="utf-8")
    if as_json:
        data = [r.to_dict() for r in results]
        click.echo(json.dumps(data if all_apps else data[0]))
    elif all_apps:
        click.echo(kbench.markdown_report(results, command))
    if markdown:
        click.echo(f"wrote {markdown}", err=True)
    if any(r.error for r in results):
        raise SystemExit(1)


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
