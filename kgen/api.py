"""Python API: ``kgen.convert(model)``."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kgen.codegen import Generated, generate
from kgen.codegen.names import snake_case
from kgen.runtime.variables import save_variables

__all__ = ["convert", "Conversion", "load_module"]


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

    def write(self, directory: str | os.PathLike, *, weights: bool = True) -> tuple[Path, Path | None]:
        """Write ``<module_name>.py`` (and ``.safetensors``) into ``directory``.

        Both files are written to temporary names first and renamed into place, so a
        failure leaves no half-written module or weights file behind.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        py_path = directory / f"{self.module_name}.py"
        st_path = directory / f"{self.module_name}.safetensors" if weights else None
        tmp_py = Path(tempfile.mkstemp(dir=directory, prefix=".kgen-", suffix=".py.tmp")[1])
        try:
            tmp_py.write_text(self.source, encoding="utf-8")
            if st_path is not None:
                save_variables(self.variables, st_path)
            os.replace(tmp_py, py_path)
        finally:
            if tmp_py.exists():
                tmp_py.unlink()
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
    exec(compile(source, f"<kgen:{name}>", "exec"), module.__dict__)  # noqa: S102
    sys.modules.setdefault(spec.name, module)
    return module


def count_layers(graph) -> int:
    n = 0
    for _, data in graph.nodes(data=True):
        if data["kind"] == "model":
            n += count_layers(data["subgraph"])
        elif data["kind"] != "input" and data.get("call_index", 0) == 0:
            n += 1
    return n


def convert(
    model, *, module_name: str | None = None, class_name: str | None = None, regenerate: str = ""
) -> Conversion:
    """Convert a Keras functional or Sequential model (Keras 3 or tf.keras)."""
    from kgen.tracer import trace

    start = time.perf_counter()
    graph = trace(model)
    gen: Generated = generate(graph, class_name=class_name, regenerate=regenerate)
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
