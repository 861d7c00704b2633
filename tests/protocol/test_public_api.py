"""The public surface is pinned, and the core imports no I/O."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

import parley.protocol

MODULES = [
    "bodies", "close", "codec", "frames", "ids", "inflight", "limits", "ratelimit", "schema",
]  # fmt: skip
PACKAGE_DIR = pathlib.Path(parley.protocol.__file__).parent


@pytest.mark.parametrize("name", MODULES)
def test_module_all_is_accurate(name: str) -> None:
    module = importlib.import_module(f"parley.protocol.{name}")
    assert module.__all__ == sorted(module.__all__, key=lambda s: (not s.isupper(), s))
    for symbol in module.__all__:
        assert hasattr(module, symbol), symbol


def test_package_reexports_exist() -> None:
    for symbol in parley.protocol.__all__:
        assert getattr(parley.protocol, symbol) is not None


def test_every_module_is_listed() -> None:
    found = {p.stem for p in PACKAGE_DIR.glob("*.py")} - {"__init__"}
    assert found == set(MODULES)


@pytest.mark.parametrize("name", [*MODULES, "__init__"])
def test_no_io_or_clock_imports(name: str) -> None:
    tree = ast.parse((PACKAGE_DIR / f"{name}.py").read_text())
    banned = {"asyncio", "socket", "time", "datetime", "threading", "selectors", "os", "random"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert not roots & banned, f"{name} imports {roots & banned}"
