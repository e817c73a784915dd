"""The gateway's modules import in one direction: the parts, then the document built
from the operation table, then the application that wires them (no import cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

_GATEWAY = Path(__file__).resolve().parents[2] / "src" / "claudecluster" / "gateway"
#: module -> the gateway modules it may import
_ALLOWED = {
    "schemas": set(),
    "problems": {"schemas"},
    "metrics": set(),
    "operations": {"problems", "schemas"},
    "run_events": {"problems", "metrics"},
    "openapi": {"operations", "schemas"},
    "app": {"metrics", "openapi", "operations", "problems", "run_events"},
}


def _gateway_imports(module: str) -> set[str]:
    tree = ast.parse((_GATEWAY / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.startswith("claudecluster.gateway."):
                found.add(name.removeprefix("claudecluster.gateway.").split(".")[0])
    return found


@pytest.mark.parametrize("module", sorted(_ALLOWED))
def test_each_gateway_module_imports_only_the_parts_below_it(module: str) -> None:
    assert _gateway_imports(module) <= _ALLOWED[module]


def test_every_gateway_module_has_its_place() -> None:
    modules = {p.stem for p in _GATEWAY.glob("*.py")} - {"__init__", "server"}
    assert modules == set(_ALLOWED)
