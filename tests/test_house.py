"""House rules for the library: typed public functions, no reaching into other modules' private names."""

import ast
import importlib
import inspect
import pkgutil
import sys
import typing
from pathlib import Path

import pytest

import deepmr_utils

MODULES = [importlib.import_module(m.name) for m in pkgutil.walk_packages(deepmr_utils.__path__, "deepmr_utils.")]
PUBLIC = [
    (mod.__name__, name, getattr(mod, name))
    for mod in MODULES
    for name in getattr(mod, "__all__", [])
    if inspect.isfunction(getattr(mod, name)) and getattr(mod, name).__module__ == mod.__name__
]


@pytest.mark.parametrize("module, name, fn", PUBLIC, ids=[f"{m}.{n}" for m, n, _ in PUBLIC])
def test_public_functions_are_fully_typed(module, name, fn):
    hints = typing.get_type_hints(fn)  # also proves every annotation resolves at run time
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in params if p.name not in hints]
    assert not missing, f"{module}.{name}: parameters without a type hint: {missing}"
    assert "return" in hints, f"{module}.{name}: no return type"


def test_no_module_imports_another_modules_private_names():
    root = Path(deepmr_utils.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                last = node.module.split(".")[-1]
                private_names = [a.name for a in node.names if a.name.startswith("_")]
                # private *modules* (_torch, _io, _types, ...) are the shared helpers; private *names* are not
                if private_names and not last.startswith("_"):
                    offenders.append(f"{path.relative_to(root)}: from {node.module} import {private_names}")
    assert not offenders, offenders


def _imports(path: Path, package: str) -> set[str]:
    """The ``deepmr_utils`` modules ``path`` (module ``package``'s file) imports, anywhere in the file
    except under ``if TYPE_CHECKING`` (annotations only, never run)."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    base = package if path.name == "__init__.py" else package.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("deepmr_utils")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                mod = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("deepmr_utils"):
                continue
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in _MODULE_FILES}
    return {m for m in out if m in _MODULE_FILES}


_ROOT = Path(deepmr_utils.__file__).parent
_MODULE_FILES = {
    ".".join(("deepmr_utils", *p.relative_to(_ROOT).with_suffix("").parts)).removesuffix(".__init__"): p
    for p in _ROOT.rglob("*.py")
}
_GRAPH = {m: _imports(p, m) for m, p in _MODULE_FILES.items()}


def test_the_library_never_imports_the_book_wing():
    """Two wings: ``deepmr_utils.book`` serves the chapters; the library must work without it."""
    book = "deepmr_utils.book"
    offenders = {
        m: sorted(t for t in targets if t == book or t.startswith(book + "."))
        for m, targets in _GRAPH.items()
        if not (m == book or m.startswith(book + "."))
    }
    assert not {m: t for m, t in offenders.items() if t}, offenders


def test_the_import_graph_has_no_circle():
    """A module that imports one which imports it back (at any depth) is a circle; none may exist."""
    state: dict[str, int] = {}
    circles = []

    def visit(m, path):
        state[m] = 1
        for t in sorted(_GRAPH[m]):
            if state.get(t) == 1 and not m.startswith(t + "."):  # a submodule reaching its own package: no circle
                circles.append(" -> ".join(path[path.index(t) :] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(_GRAPH):
        if m not in state:
            visit(m, [m])
    assert not circles, circles


def test_the_graph_check_sees_a_circle_and_a_book_import(tmp_path, monkeypatch):
    """The two checks above must be able to fail: a library module importing the book, and a circle."""
    (tmp_path / "a.py").write_text("from .book import config\nfrom . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    graph = {
        "deepmr_utils.a": {"deepmr_utils.book.config", "deepmr_utils.b"},
        "deepmr_utils.b": {"deepmr_utils.a"},
        "deepmr_utils.book.config": set(),
    }
    files = dict.fromkeys(graph, None)
    monkeypatch.setattr(sys.modules[__name__], "_MODULE_FILES", files, raising=False)
    assert _imports(tmp_path / "a.py", "deepmr_utils.a") == {"deepmr_utils.book.config", "deepmr_utils.b"}
    assert _imports(tmp_path / "b.py", "deepmr_utils.b") == {"deepmr_utils.a"}
    monkeypatch.setattr(sys.modules[__name__], "_GRAPH", graph, raising=False)
    with pytest.raises(AssertionError, match="book.config"):
        test_the_library_never_imports_the_book_wing()
    with pytest.raises(AssertionError, match="deepmr_utils.a -> deepmr_utils.b -> deepmr_utils.a"):
        test_the_import_graph_has_no_circle()


def _parameter_counts(source: str) -> dict[str, int]:
    """Every function's parameter count (``self``/``cls`` not counted, ``*args`` and ``**kwargs`` one each)."""
    counts = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
            n = len(names) - (names[:1] in (["self"], ["cls"])) + bool(a.vararg) + bool(a.kwarg)
            counts[f"{node.name} (line {node.lineno})"] = n
    return counts


def test_no_function_takes_more_than_14_parameters():
    # options that travel together are one value (ism.ISMOptions, instruments.Selection), not a row of keywords
    assert _parameter_counts("def f(self, a, *b, c, **d): ...")["f (line 1)"] == 4  # the counter counts
    root = Path(deepmr_utils.__file__).parent
    long = {
        f"{path.relative_to(root)}: {name}": n
        for path in sorted(root.rglob("*.py"))
        for name, n in _parameter_counts(path.read_text()).items()
        if n > 14
    }
    assert not long, f"functions with more than 14 parameters: {long}"


# modules whose tests live in a file named for what they serve, not for the module (each checked to exist)
TESTED_ELSEWHERE = {
    "deepmr_utils._windowed": "tests/test_windowed.py",
    "deepmr_utils._windowed_rules": "tests/test_windowed.py",  # every rule's exactness case
    "deepmr_utils._robust": "tests/test_mr.py",  # robust MR-Egger's MM-estimator, against R's lmrob
    "deepmr_utils._dask": "tests/test_cli.py",  # the workers, their allocator and a killed worker
    "deepmr_utils._io": "tests/test_pipeline.py",  # durable writes: interrupted runs, truncated manifests
    "deepmr_utils._torch": "tests/test_ism.py",  # devices, ensembles and output selection
    "deepmr_utils._types": None,  # type aliases only
    "deepmr_utils.inputs": "tests/test_cli_inputs.py",
    "deepmr_utils.models._check": "tests/models/test_small_models.py",
    "deepmr_utils.models.scale": "tests/models/test_small_models.py",
    "deepmr_utils.models.pooled": "tests/models/test_small_models.py",
    "deepmr_utils.models.counts": "tests/models/test_small_models.py",
    "deepmr_utils.models.dilated": "tests/models/test_small_models.py",
    "deepmr_utils.simulate._common": "tests/simulate/test_cooperativity.py",
    "deepmr_utils.simulate.summary": "tests/test_mr.py",  # summary statistics with known local effects
    "deepmr_utils.book.claims": "tests/book/test_claims_ledger.py",
}


def test_tests_mirror_the_modules():
    """Every module has tests/<package path>/test_<module>.py (a private module's without its underscore), or a
    named file that tests it."""
    root = Path(__file__).parents[1]
    missing = []
    for mod in MODULES:
        if mod.__name__.endswith("__init__") or hasattr(mod, "__path__"):
            continue  # a package
        parts = mod.__name__.split(".")[1:]
        mirror = root / "tests" / Path(*parts[:-1]) / f"test_{parts[-1].lstrip('_')}.py"
        other = TESTED_ELSEWHERE.get(mod.__name__, "")
        if not mirror.is_file() and other is not None and not (other and (root / other).is_file()):
            missing.append(f"{mod.__name__} -> {mirror.relative_to(root)}")
    assert not missing, "modules without a test file: " + ", ".join(missing)
    stale = [f"{m}: {f}" for m, f in TESTED_ELSEWHERE.items() if f and not (root / f).is_file()]
    assert not stale, stale
