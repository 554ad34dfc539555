"""Names read from a model file are untrusted: they must never become code.

Model, input, layer and op names and output dict keys below carry quotes, triple quotes,
newlines, a shell-command payload, Python keywords and builtins, the namespaces the
generated module uses (``jnp``, ``nn``, ``self``, ``train``...), unicode, leading digits
and names that differ only in illegal characters.  For each conversion we check that the
source compiles, passes ``ruff check``, runs without executing the payload, uses only
plain ASCII identifiers that sanitising explains, and still matches Keras numerically.

Keras refuses ``/`` in layer names, so the nastiest names (``/``, NUL, ``\\r``, bidi
overrides) are written straight into the traced graph, which is what a hand-edited
``.keras`` config could produce as well.
"""

from __future__ import annotations

import ast
import builtins
import copy
import dataclasses
import importlib.util
import io
import keyword
import re
import sys
import tokenize

import jax
import keras
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_parity

from kgen.api import load_module
from kgen.cli import main
from kgen.codegen import check_source, generate
from kgen.codegen.names import Namespace, pascal_case, sanitize, snake_case
from kgen.runtime import load_variables
from kgen.tracer import trace
from kgen.verify import compare, randomize

MARKER = "pwned"
#: Keras refuses "/" in names, so the Keras-built models touch a relative path.
PAYLOAD = f"__import__('os').system('touch {MARKER}')"

#: Names Keras accepts for layers.
LAYER_NAMES = [
    PAYLOAD,
    "'",
    '"',
    "'''",
    '"""',
    'a"""\n"""b',
    "x\ny",
    "\r\n",
    "\\",
    "# comment",
    "lambda",
    "return",
    "None",
    "True",
    "print",
    "len",
    "id",
    "slice",
    "input_shapes",
    "__call__",
    "__all__",
    "nn",
    "jax",
    "np",
    "rt",
    "lax",
    "einops",
    "train",
    "λ",
    "层",
    "😀",
    "\u202e",
    "\u2028",
    "1st",
    "0",
    "a-b",
    "a.b",
    "a b",
    "x",
    "_",
    "M1",
]
INPUT_NAMES = ["class", "x\n'''" + PAYLOAD.replace("pwned", "pwned2")]
OUTPUT_KEYS = [PAYLOAD, 'o"\'\n"""', "lambda", "层"]
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: What must never be an identifier in generated code, whatever the names.
FORBIDDEN = {"__import__", "eval", "exec", "compile", "open", "os", "system", "getattr"}


def hostile_model():
    """A Keras 3 functional model whose every name is hostile (all that Keras accepts)."""
    inputs = {name: keras.Input((6,), name=name) for name in INPUT_NAMES}
    a, b = inputs.values()
    shared = keras.layers.Dense(6, name="self")  # called twice
    h = keras.layers.Add(name="jnp")([shared(a), shared(b)])
    for name in LAYER_NAMES:
        h = keras.layers.Dense(6, activation="tanh", name=name)(h)
        if name in ("rt", "jax"):  # layers whose code uses rt.BatchNorm and jax.nn.relu
            h = keras.layers.BatchNormalization(name=f"{name}\n")(h)
            h = keras.layers.ReLU(name=f"{name}.")(h)
    h = keras.layers.ReLU(name="return_")(h)
    first = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(6, name="jnp"), keras.layers.ReLU(name=PAYLOAD)],
        name="m-1",
    )
    second = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="nn")], name="m.1")
    outputs = {
        OUTPUT_KEYS[0]: h,
        OUTPUT_KEYS[1]: first(h),
        OUTPUT_KEYS[2]: second(shared(a) * 0.5),
        OUTPUT_KEYS[3]: keras.ops.mean(h[:, 1:4], axis=-1, keepdims=True),
    }
    return keras.Model(inputs, outputs, name='m"""\n' + PAYLOAD + "'''")


# ---------------------------------------------------------------------------------------
# Traced-graph editing


def rename_graph(graph, rename, output_keys=None):
    """A deep copy of a traced graph with every name replaced by ``rename(old_name)``.

    The same old name maps to the same new name (a shared layer stays shared); nested
    model graphs are renamed too; ``output_keys`` maps top-level output dict keys.
    """
    graph = copy.deepcopy(graph)
    done: set[int] = set()

    def visit(g, top):
        if id(g) in done:
            return
        done.add(id(g))
        g.graph["name"] = rename(g.graph["name"])
        if top or g.graph["input_structure"] != "dict":  # nested dict keys are call args
            g.graph["inputs"] = [
                dataclasses.replace(s, name=rename(s.name)) for s in g.graph["inputs"]
            ]
        for _, data in g.nodes(data=True):
            data["name"] = rename(data["name"])
            if data["kind"] == "model":
                visit(data["subgraph"], False)

    visit(graph, True)
    if output_keys is not None:
        graph.graph["outputs"] = {output_keys[k]: v for k, v in graph.graph["outputs"].items()}
    return graph


def all_names(graph, out=None) -> list[str]:
    """Every name in a traced graph (nested graphs included), first-seen order."""
    out = [] if out is None else out
    for name in [graph.graph["name"], *(s.name for s in graph.graph["inputs"])]:
        if name not in out:
            out.append(name)
    for _, data in graph.nodes(data=True):
        if data["name"] not in out:
            out.append(data["name"])
        if data["kind"] == "model":
            all_names(data["subgraph"], out)
    return out


def structural_vocabulary(graph) -> set[str]:
    """Identifiers the generated code uses whatever the names: rename everything to
    ``zzN`` and keep the identifiers that did not come from a name."""
    benign = {name: f"zz{i}" for i, name in enumerate(all_names(graph))}
    source = generate(rename_graph(graph, benign.__getitem__)).source
    return {t for t in name_tokens(source) if not re.fullmatch(r"(?i)zz\d+(_\d*)*", t)}


# ---------------------------------------------------------------------------------------
# Checks on generated source


def name_tokens(source: str) -> list[str]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [t.string for t in tokens if t.type == tokenize.NAME]


def code_without_literals(source: str) -> str:
    """The source with every string literal and comment removed."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return " ".join(t.string for t in tokens if t.type not in (tokenize.STRING, tokenize.COMMENT))


def _derived(token: str, raw_names) -> bool:
    """Whether ``token`` is what sanitising makes of one of ``raw_names``."""
    for raw in raw_names:
        bases = {sanitize(raw, fb) for fb in ("x", "layer", "model", "v")} | {pascal_case(raw)}
        if any(re.fullmatch(re.escape(b) + r"(_\d*)*", token) for b in bases):
            return True
    return False


def assert_safe_source(source: str, raw_names, vocabulary: set[str]):
    compile(source, "<hostile>", "exec")  # a syntax error would fail here
    assert check_source(source) == []
    for token in name_tokens(source):
        assert token.isascii() and IDENTIFIER.fullmatch(token), token
        assert token not in FORBIDDEN, token
        assert keyword.iskeyword(token) or token in vocabulary or _derived(token, raw_names), (
            f"identifier {token!r} is neither generated vocabulary nor a sanitised name"
        )
    code = code_without_literals(source)
    for raw in raw_names:
        if re.search(r"[^A-Za-z0-9_]", raw):  # a plain word may be code (``nn``, ``x_1st``)
            assert raw not in code, f"name {raw!r} reached the code outside a literal"
    assert "__import__" not in code
    assert_unique_identifiers(source)


def assert_unique_identifiers(source: str):
    """Each class body assigns every local once (but the x/y chain), never shadowing an
    argument, a builtin, a module-level name or a namespace; Flax submodule names are
    unique per class."""
    tree = ast.parse(source)
    module_names = {
        a.asname or a.name.split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for a in node.names
    } | {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef))
        params = [a.arg for a in fn.args.args + fn.args.kwonlyargs]
        assigned = [
            t.id
            for stmt in fn.body
            if isinstance(stmt, ast.Assign)
            for target in stmt.targets
            for t in (target.elts if isinstance(target, ast.Tuple) else [target])
        ]
        everything = params + assigned
        # only the chain variables (codegen/render.py's _chain) are assigned again
        once = [n for n in everything if not re.fullmatch(r"[xy](_\d+)?", n)]
        assert len(once) == len(set(once)), f"{cls.name}: duplicate identifiers"
        assert not set(everything) & module_names, f"{cls.name}: shadows a module-level name"
        assert not set(assigned) & set(dir(builtins)), f"{cls.name}: shadows a builtin"
        flax_names = [
            kw.value.value
            for node in ast.walk(fn)
            if isinstance(node, ast.Call)
            for kw in node.keywords
            if kw.arg == "name"
        ]
        assert len(flax_names) == len(set(flax_names)), f"{cls.name}: duplicate submodule names"
        assert all(IDENTIFIER.fullmatch(n) and n.isascii() for n in flax_names)


def flax_names(source: str, class_name: str) -> list[str]:
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    return [
        kw.value.value
        for node in ast.walk(cls)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "name"
    ]


# ---------------------------------------------------------------------------------------
# Tests


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path, after proving the payload is live there (so its absence means
    something)."""
    monkeypatch.chdir(tmp_path)
    eval(PAYLOAD)  # the control: the payload does create the marker
    assert (tmp_path / MARKER).exists()
    (tmp_path / MARKER).unlink()
    return tmp_path


@pytest.mark.parametrize("name", [*LAYER_NAMES, *INPUT_NAMES, "", "/", "\x00", "a/b", "🙂" * 3])
def test_namespace_makes_plain_fresh_identifiers(name):
    ns = Namespace({"self", "train", "jnp"})
    first, second = ns.create(name), ns.create(name)
    for ident in (first, second, pascal_case(name), snake_case(name)):
        assert ident.isascii() and IDENTIFIER.fullmatch(ident), ident
    for ident in (first, second):
        assert not keyword.iskeyword(ident) and not keyword.issoftkeyword(ident)
        assert ident not in dir(builtins) and ident not in {"self", "train", "jnp"}
    assert first != second


def test_hostile_keras_model(in_tmp):
    model = hostile_model()
    conversion, _ = assert_parity(model)  # imports and runs the generated module
    source = conversion.source
    graph = trace(model)
    assert_safe_source(source, all_names(graph), structural_vocabulary(graph))
    assert not (in_tmp / MARKER).exists()
    assert not (in_tmp / "pwned2").exists()

    # Names that differ only in illegal characters get distinct submodules.
    top = flax_names(source, conversion.class_name)
    assert {"a_b", "a_b_1", "a_b_2"} <= set(top)
    # Nested model names "m-1" and "m.1" both sanitise to M1 (and a layer is named M1).
    classes = [n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef)]
    assert len(set(classes)) == len(classes) == 3
    assert {"M1", "M1_1"} <= set(classes)
    # The output dict keys survive exactly, as string literals.
    result = conversion.module.apply(conversion.variables, *[np.zeros((1, 6), np.float32)] * 2)
    assert set(result) == set(OUTPUT_KEYS)


HOSTILE_GRAPH_NAMES = [
    "__import__('os').system('touch {marker}')",
    "a/b",
    "a\x00b",
    "\r",
    "\u202eevil",
    "\\",
    "'''\"\"\"\n",
    "class",
    "lambda",
    "return",
    "print",
    "len",
    "id",
    "jnp",
    "nn",
    "jax",
    "np",
    "rt",
    "self",
    "train",
    "λ",
    "层",
    "😀",
    "9lives",
    "a-b",
    "a.b",
    "a b",
]


def _ops_model():
    """Shared layer, nested Sequential, op nodes: names edited into its traced graph."""
    x = keras.Input((8,), name="x")
    y = keras.Input((8,), name="y")
    shared = keras.layers.Dense(8, name="shared")
    inner = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, name="d"), keras.layers.ReLU(name="r")],
        name="inner",
    )
    h = shared(x) + shared(y) * 0.5
    h = inner(h)
    h2 = keras.ops.mean(h[:, 2:6], axis=-1, keepdims=True)
    return keras.Model([x, y], {"h": h, "m": h2, "n": -inner(h)}, name="ops_model")


def test_hostile_names_edited_into_traced_graph(tmp_path):
    marker = tmp_path / "pwned_graph"
    pool = [n.format(marker=marker) for n in HOSTILE_GRAPH_NAMES]
    model = _ops_model()
    randomize(model, seed=3)
    graph = trace(model)
    old = all_names(graph)
    # Distinct old names get distinct hostile names; past the pool's end, names that
    # differ only by illegal trailing characters.
    new = {name: pool[i % len(pool)] + "-" * (i // len(pool)) for i, name in enumerate(old)}
    keys = {"h": pool[0], "m": "m\n'", "n": "class"}
    hostile = rename_graph(graph, new.__getitem__, keys)
    assert len(set(all_names(hostile))) == len(old)

    gen = generate(hostile)
    assert_safe_source(gen.source, list(new.values()), structural_vocabulary(graph))
    module = getattr(load_module(gen.source, "hostile_graph"), gen.class_name)()
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, 8)).astype(np.float32) for _ in range(2)]
    got = jax.jit(module.apply)(gen.variables, *xs)
    reference = {keys[k]: np.asarray(v) for k, v in model(xs).items()}
    report = compare(reference, jax.device_get(got))
    assert report.ok, report.lines()
    assert not marker.exists()


def test_emit_hostile_keras_file(in_tmp):
    """The file path: save as .keras, `kgen emit FILE -o DIR`, import the written files."""
    model = hostile_model()
    randomize(model, seed=5)
    path = in_tmp / "hostile.keras"
    model.save(path)
    out = in_tmp / "out"
    result = CliRunner().invoke(main, ["emit", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    (py_path,) = out.glob("*.py")
    (st_path,) = out.glob("*.safetensors")
    assert py_path.stem == st_path.stem and IDENTIFIER.fullmatch(py_path.stem)

    source = py_path.read_text(encoding="utf-8")
    graph = trace(model)
    assert_safe_source(source, all_names(graph), structural_vocabulary(graph))

    spec = importlib.util.spec_from_file_location(f"hostile_{py_path.stem}", py_path)
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    sys.modules.pop(spec.name, None)
    module = getattr(generated, generated.__all__[0])()
    variables = load_variables(st_path, module=module)
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(2, 6)).astype(np.float32) for _ in INPUT_NAMES]
    reference = {k: np.asarray(v) for k, v in model(dict(zip(INPUT_NAMES, xs))).items()}
    report = compare(reference, jax.device_get(jax.jit(module.apply)(variables, *xs)))
    assert report.ok, report.lines()
    assert not (in_tmp / MARKER).exists() and not (in_tmp / "pwned2").exists()
