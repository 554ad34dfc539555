"""``kgen.load``: a converted model in one call, served from a cache on the second.

Each cached conversion is a directory of ordinary kgen output, the same files
``kgen emit`` writes, plus a small JSON record::

    <cache dir>/<key>/
        mobilenetv2.py            # the generated module, readable and importable
        mobilenetv2.safetensors   # its variables
        entry.json                # source, weights, options, class, kgen version

The cache directory is ``$KGEN_CACHE_DIR``, else the user cache directory
(``~/.cache/kgen`` on Linux, from :mod:`platformdirs`).  The key hashes the source (an
application name, or a model file's bytes), the weights choice (a weights file's bytes),
the options, the class name and kgen's version: editing the model file, or upgrading
kgen, gives a new entry.  A hit imports only the generated module and
:mod:`kgen.runtime`, never TensorFlow or Keras.  ``kgen cache list`` and ``kgen cache
clear`` show and remove entries; deleting the directory by hand is fine too.

A ``module:factory`` source is the user's own code, which can change without kgen
seeing it, so it is converted every time and never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Entry", "cache_dir", "clear", "entries", "load"]

ENTRY_FILE = "entry.json"


def cache_dir() -> Path:
    """Where cached conversions live: ``$KGEN_CACHE_DIR`` or the user cache directory."""
    configured = os.environ.get("KGEN_CACHE_DIR")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("kgen", appauthor=False))


@dataclass(frozen=True)
class Entry:
    """One cached conversion (what ``entry.json`` records)."""

    key: str
    path: Path
    source: str
    weights: str | None
    options: dict
    module: str
    class_name: str
    kgen_version: str
    created: str
    api: str = "linen"

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else "").encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _is_file_choice(value: str | None) -> bool:
    return value is not None and value not in ("imagenet", "none", "model")


def _plain(options: dict) -> dict:
    """Options as JSON writes and reads them (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def cache_key(source, name: str | None = None, api: str = "linen") -> str:
    """The cache key of a :class:`~kgen.pipeline.Source` (see the module docstring)."""
    from kgen import __version__

    record = {
        "kgen": __version__,
        "source": source.spec,
        "weights": source.weights,
        "options": _plain(source.options),
        "name": name,
    }
    if api != "linen":  # linen keys stay what they were
        record["api"] = api
    if source.app is None:  # a model file: its bytes, not its path
        record["source_sha256"] = _file_digest(Path(source.spec))
    if _is_file_choice(source.weights):
        record["weights_sha256"] = _file_digest(Path(source.weights))
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read_entry(path: Path) -> Entry | None:
    try:
        data = json.loads((path / ENTRY_FILE).read_text(encoding="utf-8"))
        return Entry(
            key=path.name,
            path=path,
            source=data["source"],
            weights=data["weights"],
            options=data["options"],
            module=data["module"],
            class_name=data["class"],
            kgen_version=data["kgen"],
            created=data["created"],
            api=data.get("api", "linen"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # half-written, foreign or damaged: not an entry


def entries() -> list[Entry]:
    """The cached conversions, oldest first."""
    root = cache_dir()
    if not root.is_dir():
        return []
    found = [e for p in root.iterdir() if p.is_dir() and (e := _read_entry(p)) is not None]
    return sorted(found, key=lambda e: (e.created, e.key))


def clear(source: str | None = None) -> list[Entry]:
    """Remove every cached conversion, or those of ``source``; returns what was removed."""
    removed = [e for e in entries() if source in (None, e.source)]
    for entry in removed:
        shutil.rmtree(entry.path, ignore_errors=True)
    return removed


def _import_entry(entry: Entry):
    """The generated class of a cache entry, imported from its file."""
    name = f"kgen_cache_{entry.key}_{entry.module}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, entry.path / f"{entry.module}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # flax's dataclasses look their module up
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return getattr(module, entry.class_name)


def _open(entry: Entry):
    from kgen.runtime.variables import load_variables

    path = entry.path / f"{entry.module}.safetensors"
    if entry.api == "nnx":
        from kgen.runtime import nnx

        variables = load_variables(path)
        return nnx.load(_import_entry(entry), variables), variables
    module = _import_entry(entry)()
    variables = load_variables(path, module=module)
    return module, variables


def _store(source, name, key: str, root: Path, api: str = "linen") -> Entry:
    """Convert ``source`` into ``root/<key>``, written under a temporary name first so
    that a reader sees a whole entry or none."""
    from kgen import __version__, pipeline

    conversion = pipeline.convert(source, name=name, api=api)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        conversion.write(tmp, weights=True)
        record = {
            "source": source.spec,
            "weights": source.weights,
            "options": _plain(source.options),
            "module": conversion.module_name,
            "class": conversion.class_name,
            "kgen": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "api": api,
        }
        (tmp / ENTRY_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, root / key)
        except OSError:  # another process stored the same entry first: keep theirs
            if _read_entry(root / key) is None:
                raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp, ignore_errors=True)
    return _read_entry(root / key)


def load(
    source: str,
    weights: str | None = None,
    *,
    name: str | None = None,
    cache=True,
    api: str = "linen",
    **options,
):
    """``(module, variables)`` for ``source``, converted once and then served from the cache.

    ``source``: an application name (``"MobileNetV2"``), a ``.keras``/``.h5`` model
    file or SavedModel directory, or ``"package.module:factory"``.  ``weights`` and
    ``options`` are ``kgen emit``'s: ``weights="imagenet"`` (the applications' default),
    ``"none"`` (Keras's fresh initialisation, saved so every load gives the same
    variables) or a Keras weights file; ``options`` such as ``include_top=False``,
    ``input_shape=(160, 160, 3)``.  ``name`` sets the class name.  ``cache=False``
    converts without reading or writing the cache.  ``api="nnx"`` gives the Flax NNX
    module instead, already holding its variables (:func:`kgen.runtime.nnx.load`).

    >>> module, variables = kgen.load("MobileNetV2", weights="none")  # doctest: +SKIP
    >>> logits = module.apply(variables, x)  # doctest: +SKIP
    """
    from kgen import pipeline

    src = pipeline.Source.of(source, weights, **options)
    if src.app is None and not src.is_factory and not Path(source).exists():
        raise pipeline.SourceError(f"no such model file or application: {source!r}")
    if name is not None:
        pipeline.check_name(name)
    if api not in ("linen", "nnx"):
        raise ValueError(f"api {api!r}: expected 'linen' or 'nnx'")
    if not cache or src.is_factory:
        conversion = pipeline.convert(src, name=name, api=api)
        module = conversion.module
        return module, conversion.variables
    key = cache_key(src, name, api)
    root = cache_dir()
    entry = _read_entry(root / key)
    if entry is None:
        missing = pipeline.missing_packages()
        if missing:
            raise pipeline.SourceError(
                f"{source!r} is not in the cache ({root}), and converting it needs the "
                f"conversion packages ({', '.join(missing)} missing): {pipeline.INSTALL_CONVERT}"
            )
        entry = _store(src, name, key, root, api)
    return _open(entry)
