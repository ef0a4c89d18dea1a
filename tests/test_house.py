"""House rules for the library: typed public functions, no reaching into other modules' private names."""

import ast
import importlib
import inspect
import pkgutil
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
