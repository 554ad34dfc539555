"""Python API: ``kgen.convert(model)``."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kgen.codegen import Generated, generate
from kgen.codegen.names import snake_case
from kgen.runtime.variables import save_variables

__all__ = ["Conversion", "convert", "load_module"]


@dataclass
class Conversion:
    """A converted model: formatted source, class name and Flax variables."""

    source: str
    class_name: str
    variables: dict
    module_name: str
    n_layers: int
    seconds: float
    inputs: list  # InputSpec per model input, in Keras order
    input_structure: str  # "single", "list" or "dict"

    def write(
        self, directory: str | os.PathLike, *, weights: bool = True
    ) -> tuple[Path, Path | None]:
        """Write ``<module_name>.py`` (and ``.safetensors``) into ``directory``.

        Both files are written to temporary names first and renamed into place, so a
        failure leaves no half-written module or weights file behind (and no directory
        that this call created).
        """
        directory = Path(directory)
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        py_path = directory / f"{self.module_name}.py"
        st_path = directory / f"{self.module_name}.safetensors" if weights else None
        tmp_py = directory / f".{py_path.name}.{os.getpid()}.tmp"
        tmp_st = directory / f".{self.module_name}.safetensors.{os.getpid()}.tmp"
        done = False
        try:
            tmp_py.write_text(self.source, encoding="utf-8")
            if st_path is not None:
                save_variables(self.variables, tmp_st)
                os.replace(tmp_st, st_path)
            os.replace(tmp_py, py_path)
            done = True
        finally:
            for tmp in (tmp_py, tmp_st):
                tmp.unlink(missing_ok=True)
            if not done and created:
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only if still empty
        return py_path, st_path

    def load(self):
        """Import the generated source as a module object (without writing it)."""
        return load_module(self.source, self.module_name)

    @property
    def module(self):
        """A fresh instance of the generated top-level class."""
        return getattr(self.load(), self.class_name)()


def load_module(source: str, name: str):
    """Import generated source text as a module (kgen's own output only)."""
    spec = importlib.util.spec_from_loader(f"kgen_generated_{name}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass machinery (flax modules) looks it up
    exec(compile(source, f"<kgen:{name}>", "exec"), module.__dict__)
    return module


def count_layers(graph) -> int:
    n = 0
    for _, data in graph.nodes(data=True):
        if data.get("call_index", 0) != 0 or data["kind"] == "input":
            continue  # a shared layer or nested model counts once
        if data["kind"] == "model":
            n += count_layers(data["subgraph"])
        else:
            n += 1
    return n


def convert(
    model,
    *,
    module_name: str | None = None,
    class_name: str | None = None,
    regenerate: str = "",
    metadata: dict | None = None,
) -> Conversion:
    """Convert a Keras functional or Sequential model (Keras 3 or tf.keras).

    ``metadata`` (e.g. ``{"preprocess": "tf", "input_size": 299}``) gives the generated
    class ``preprocess_mode``/``input_size`` attributes and a ``preprocess`` staticmethod.
    """
    from kgen.tracer import trace

    start = time.perf_counter()
    graph = trace(model)
    gen: Generated = generate(
        graph, class_name=class_name, regenerate=regenerate, metadata=metadata
    )
    return Conversion(
        source=gen.source,
        class_name=gen.class_name,
        variables=gen.variables,
        module_name=module_name or snake_case(gen.class_name),
        n_layers=count_layers(graph),
        seconds=time.perf_counter() - start,
        inputs=list(graph.graph["inputs"]),
        input_structure=graph.graph["input_structure"],
    )
