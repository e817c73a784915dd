"""The import direction and the purity of the core, enforced.

events <- domain <- projections <- actors <- runtime <- {cli, gateway, mcp_server};
transport depends only on events (and on cross-cutting observability and config helpers).
The pure layers never import an I/O library, read the clock or start processes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "claudecluster"

PURE_LAYERS = ("events", "domain", "projections", "actors")
IO_MODULES = frozenset(
    {
        "anyio", "asyncio", "trio", "nats", "subprocess", "socket", "time", "psutil",
        "starlette", "uvicorn", "mcp", "httpx", "threading", "multiprocessing", "os",
        "random", "secrets", "uuid", "shutil", "signal",
    }
)  # fmt: skip
LAYER_ORDER = ("events", "domain", "projections", "actors", "runtime")
ALLOWED_INTERNAL = {
    "events": {"events", "errors"},
    "domain": {"events", "domain", "errors"},
    "projections": {"events", "domain", "projections", "errors"},
    "actors": {"events", "domain", "projections", "actors", "errors"},
    # Cross-cutting helpers (logging and redaction, data files, config errors) are the one
    # exception to "transport depends only on events": they do no I/O of their own.
    "transport": {"events", "transport", "errors", "observability", "resources", "validation"},
    "observability": {"observability"},
    # Adapters for processes and git: below runtime, beside transport.
    "executors": {"executors", "events", "domain", "errors", "observability"},
    "workspace": {"workspace", "errors"},
    "runtime": {
        "events", "domain", "projections", "actors", "runtime", "transport", "errors",
        "observability", "resources", "settings", "validation", "executors", "workspace",
    },
    # A front door: tools on runtime's FrontDoor, the gateway's token check (auth), the
    # run report (reporting).
    "mcp_server": {
        "events", "domain", "projections", "runtime", "transport", "errors",
        "observability", "settings", "auth", "mcp_server", "reporting",
    },
    # The run report every front door shows: projections and artifacts in, text out.
    "reporting": {
        "reporting", "events", "domain", "projections", "runtime", "transport", "errors",
    },
    # A front door: commands out, projections in, through the runtime's front-door service.
    "gateway": {
        "gateway", "auth", "runtime", "events", "domain", "projections", "errors",
        "observability", "settings",
    },
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", PURE_LAYERS)
def test_pure_layers_import_no_io_library(layer: str) -> None:
    offenders = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in _modules(layer)
        for name in _imports(path)
        if name.split(".")[0] in IO_MODULES
    }
    assert not offenders, sorted(offenders)


@pytest.mark.parametrize("layer", sorted(ALLOWED_INTERNAL))
def test_layers_import_only_what_is_below_them(layer: str) -> None:
    allowed = ALLOWED_INTERNAL[layer]
    offenders = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in _modules(layer)
        for name in _imports(path)
        if name.startswith("claudecluster.") and name.split(".")[1] not in allowed
    }
    assert not offenders, sorted(offenders)


def test_the_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    # Guard against a test that cannot fail: the scanner must see imports of every form.
    module = tmp_path / "bad.py"
    module.write_text("import nats.js\nfrom anyio import sleep\nfrom . import x\n")
    assert _imports(module) == {"nats.js", "anyio"}


def test_no_module_is_named_like_a_dependency() -> None:
    clashing = {"nats", "mcp", "msgspec", "anyio", "trio", "yaml", "structlog", "rich"}
    names = {path.stem for path in PACKAGE.rglob("*.py")}
    assert not names & clashing


def test_data_folders_hold_no_python() -> None:
    root = PACKAGE.parents[1]
    for folder in ("events", "projections", "nats", "simulations"):
        assert not list((root / folder).rglob("*.py")), folder


def test_the_package_layers_exist_in_order() -> None:
    for layer in LAYER_ORDER:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer
