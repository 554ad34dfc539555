"""The ``kgen`` command line: list, emit, verify.

User errors print one line (``kgen: error: ...``) and exit 2; nothing is half-written.
Set ``KGEN_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time

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


class _Group(click.Group):
    """Turns every error into one line on stderr and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KgenError as exc:
            _fail(" ".join(str(exc).split()), exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except BrokenPipeError:  # e.g. `kgen list | head`
            sys.stderr.close()
            raise SystemExit(0) from None
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:  # a kgen bug: still one line, traceback on request
            if os.environ.get("KGEN_DEBUG"):
                raise
            _fail(
                f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                "(set KGEN_DEBUG=1 for the traceback, and please report it)",
                3,
            )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kgen")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE first, to register lowerings for custom layers (repeatable).",
)
def main(plugins):
    """kgen: convert Keras models to readable Flax linen modules, with proven parity."""
    _quiet_frameworks()
    for name in plugins:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise KgenError(f"cannot import plugin {name!r}: {exc}") from None


@main.command("list")
def list_cmd():
    """Print the application names kgen converts, one per line."""
    from kgen.tracer.catalog import APPLICATIONS

    for name in APPLICATIONS:
        click.echo(name)


_weights_help = (
    "imagenet (default for applications; Keras's download and cache), none (code only), "
    "or PATH to a Keras weights file (.weights.h5 or legacy .h5)."
)


def _load(source, weights, quiet, verify=False):
    from kgen.tracer.load import load_source

    options = {}
    from kgen.tracer import catalog

    if verify and source in catalog.APPLICATIONS:
        options["classifier_activation"] = None  # compare logits, not softmax
    with _step(f"building {source}", quiet):
        return load_source(source, weights, **options)


def _module_name(loaded, conversion_default: str) -> str:
    if loaded.app is not None:
        return loaded.app.name.lower()
    return conversion_default


@main.command()
@click.argument("source")
@click.option("-o", "--output", default="generated", show_default=True, help="Output directory.")
@click.option("--weights", default=None, metavar="imagenet|none|PATH", help=_weights_help)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line describing the result.")
def emit(source, output, weights, as_json):
    """Convert SOURCE (an application name or a .keras/.h5 file) to a Flax module.

    Writes OUTPUT/<name>.py and, unless --weights none, OUTPUT/<name>.safetensors.
    """
    from kgen.api import convert
    from kgen.codegen.names import snake_case

    start = time.perf_counter()
    loaded = _load(source, weights, as_json)
    model = loaded.model
    class_name = loaded.app.name if loaded.app else None
    with _step("converting", as_json):
        conversion = convert(
            model,
            class_name=class_name,
            regenerate=f"kgen emit {source} -o {output}" if loaded.app else "",
        )
    conversion.module_name = _module_name(loaded, snake_case(conversion.class_name))
    with _step("writing", as_json):
        py_path, st_path = conversion.write(output, weights=weights != "none")
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
@click.argument("source")
@click.option("--weights", default="random", show_default=True,
              metavar="random|imagenet|model|PATH",
              help="random: set EVERY Keras variable to random values first; imagenet: "
                   "the ImageNet weights; model: a model file's own weights; PATH: a "
                   "Keras weights file.")
@click.option("--seed", default=0, show_default=True, help="Seed for random weights and inputs.")
@click.option("--batch", default=2, show_default=True, help="Batch size of the random input.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line with the results.")
def verify(source, weights, seed, batch, as_json):
    """Convert SOURCE and compare it with Keras on a random batch.

    By default EVERY Keras variable (BN statistics, gammas, betas, biases) is first set
    to random values.  Exits 1 if the relative error max|flax - keras| / max|keras| of
    any output is above 1e-4.
    """
    from kgen.verify import TOLERANCE, check_model

    randomize = weights == "random"
    load_weights = {"random": "none", "model": None}.get(weights, weights)
    loaded = _load(source, load_weights, as_json, verify=True)
    with _step(f"converting and comparing {source}", as_json):
        conversion, report = check_model(
            loaded.model, seed=seed, batch=batch, randomize_weights=randomize
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "source": source,
                    "class": conversion.class_name,
                    "layers": conversion.n_layers,
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
            f"{source}: {conversion.n_layers} layers, converted in {conversion.seconds:.1f} s ({what})"
        )
        for line in report.lines():
            click.echo(f"  {line}")
        verdict = "PASS" if report.ok else "FAIL"
        sign = "<=" if report.ok else ">"
        click.echo(f"{verdict}: max rel {report.max_rel:.3e} {sign} {TOLERANCE:.0e}")
    if not report.ok:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
