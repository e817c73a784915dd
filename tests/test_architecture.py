"""The import direction and the purity of the core, enforced.

events <- domain <- projections <- actors <- runtime <- {cli, gateway, mcp_server};
transport depends only on events (and on cross-cutting observability and config helpers).
The pure layers never import an I/O library, read the clock or start processes; and, since
an import check cannot see ``datetime.now()`` or ``open()`` (``datetime`` and the builtins
are no I/O libraries), an AST walk also refuses every reach for the clock, randomness, the
environment or the file system in them: those are handed in (``now``, ids) by the shells.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

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
    "transport": {"events", "transport", "errors", "observability", "config_files"},
    "observability": {"observability"},
    # Adapters for processes and git: below runtime, beside transport.
    "executors": {"executors", "events", "domain", "errors", "observability"},
    "workspace": {"workspace", "events", "errors"},
    "runtime": {
        "events", "domain", "projections", "actors", "runtime", "transport", "errors",
        "observability", "config_files", "settings", "executors", "workspace",
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


#: Names that read the clock, draw randomness or read the environment, wherever they are
#: used (called, or handed on as a default factory).
FORBIDDEN_NAMES: Final = {
    "clock": {
        "datetime.now", "datetime.utcnow", "datetime.today", "date.today",
        "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.date.today",
        "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns",
        "time.perf_counter", "time.perf_counter_ns",
    },
    "randomness": {"uuid4", "uuid1", "uuid.uuid4", "uuid.uuid1", "os.urandom", "urandom"},
    "environment": {"os.environ", "os.getenv", "os.putenv", "environ", "getenv"},
    "files": {"open", "io.open", "Path.cwd", "Path.home"},
}  # fmt: skip
#: Modules any use of which is randomness.
RANDOM_MODULES: Final = ("random", "secrets")
#: Methods that touch the file system (``Path``'s): forbidden as calls on anything.
FILE_METHODS: Final = frozenset(
    {
        "read_text", "write_text", "read_bytes", "write_bytes", "open", "mkdir", "unlink",
        "rmdir", "touch", "iterdir", "glob", "rglob", "stat", "exists", "is_file", "is_dir",
        "expanduser", "resolve", "chmod", "symlink_to", "hardlink_to",
    }
)  # fmt: skip


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _forbidden_uses(path: Path) -> set[str]:
    """Every use of the clock, randomness, the environment or files, as "line: kind name"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute | ast.Name) and isinstance(node.ctx, ast.Load):
            name = _dotted(node)
            if name is None:
                continue
            for kind, names in FORBIDDEN_NAMES.items():
                # A dotted name matches at the end too: ``dt.datetime.now`` after an alias.
                if name in names or any("." in n and name.endswith(f".{n}") for n in names):
                    found.add(f"{node.lineno}: {kind} {name}")
            if name.split(".")[0] in RANDOM_MODULES and "." in name:
                found.add(f"{node.lineno}: randomness {name}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in FILE_METHODS
        ):
            found.add(f"{node.lineno}: files .{node.func.attr}()")
    return found


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


@pytest.mark.parametrize("layer", PURE_LAYERS)
def test_pure_layers_read_no_clock_randomness_environment_or_file(layer: str) -> None:
    offenders = sorted(
        f"{path.relative_to(PACKAGE)}:{use}"
        for path in _modules(layer)
        for use in _forbidden_uses(path)
    )
    assert not offenders, offenders


def test_the_checker_catches_every_kind_of_forbidden_use(tmp_path: Path) -> None:
    # Guard against a test that cannot fail: each form must be seen, and pure code not.
    module = tmp_path / "bad.py"
    module.write_text(
        "import datetime as dt\n"
        "from datetime import datetime\n"
        "a = datetime.now()\n"
        "b = dt.datetime.now(tz)\n"
        "c = time.monotonic()\n"
        "d = uuid.uuid4().hex\n"
        "e = random.choice(xs)\n"
        "f = secrets.token_hex(8)\n"
        "g = os.environ['HOME']\n"
        "h = os.getenv('HOME')\n"
        "with open('x') as i: pass\n"
        "j = Path('x').read_text()\n"
        "k = field(default_factory=datetime.now)\n"
        "path.write_bytes(b'')\n"
        "def pure(now, ids):\n"
        "    return msgspec.structs.replace(x, at=now, id=next(ids)).value.replace('a', 'b')\n",
        encoding="utf-8",
    )
    found = _forbidden_uses(module)
    assert {use.split(":")[0] for use in found} == {str(n) for n in range(3, 15)}
    assert "3: clock datetime.now" in found
    assert "7: randomness random.choice" in found
    assert "11: files open" in found
    assert "12: files .read_text()" in found


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
