"""What the command line imports: only what the command that runs uses.

Each check runs in a fresh interpreter (a test process has imported everything already)
and dumps ``sys.modules`` as the program exits, so what is counted is what the command
really loaded, on the same path as the console script (``claudecluster.cli:main``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import cyclopts
import pytest

from claudecluster.cli import COMMANDS, app
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.fixtures.sample_runs import happy_path
from tests.support import free_port

#: Packages a front door or an agent needs, and a command that only prints must not load.
HEAVY = ("mcp", "starlette", "uvicorn", "claude_agent_sdk")
#: Loaded only when used: structlog at the first record that passes the level (a read
#: that logs nothing skips its ~70 ms), markdown-it for Markdown help text (the top-level
#: help is plain), each a cost start-up paid on every call before.
DEFERRED = ("structlog", "markdown_it")
#: What a read of an open server given a URL needs none of: the topology and permission
#: models (YAML read into pydantic, applied only by writers), the identities, the
#: embedded server; together about a fifth of such a call's start before.
NOT_FOR_READS = frozenset({
    "yaml", "claudecluster.transport.topology", "claudecluster.transport.permissions",
    "claudecluster.runtime.credentials", "claudecluster.runtime.embedded_nats", "psutil",
})  # fmt: skip
_SUBPROCESS_TIMEOUT_S = 120
_MAIN = "from claudecluster.cli import main\nmain()"


def modules_after(tmp_path: Path, code: str, *args: str) -> set[str]:
    """The top-level packages loaded by ``code`` run as a program with ``args``."""
    return program_run(tmp_path, code, *args)[0]


def program_run(
    tmp_path: Path, code: str, *args: str
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The top-level packages loaded by ``code`` run with ``args``, and how it ended."""
    dump = tmp_path / "modules.json"
    program = (
        "import atexit, json, sys\n"
        f"dump = open({str(dump)!r}, 'w')\n"
        "atexit.register(lambda: (dump.write(json.dumps(sorted(sys.modules))), dump.close()))\n"
        f"sys.argv = ['claudecluster', *{list(args)!r}]\n" + code
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=_SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert dump.is_file(), done.stderr
    loaded = {name.split(".")[0] for name in json.loads(dump.read_text(encoding="utf-8"))}
    return loaded, done


def test_importing_the_cli_loads_no_front_door_agent_or_nats_package(tmp_path: Path) -> None:
    loaded = modules_after(tmp_path, "import claudecluster.cli")
    assert "claudecluster" in loaded  # the dump is of a program that did import it
    assert loaded.isdisjoint({*HEAVY, "nats", "structlog"}), sorted(loaded)


def test_help_loads_no_front_door_agent_or_nats_package(tmp_path: Path) -> None:
    loaded = modules_after(tmp_path, "from claudecluster.cli import main\nmain()", "--help")
    assert "cyclopts" in loaded  # help was rendered
    assert loaded.isdisjoint({*HEAVY, *DEFERRED, "nats"}), sorted(loaded)


def test_a_commands_own_help_still_renders_its_markdown(tmp_path: Path) -> None:
    loaded, done = program_run(tmp_path, _MAIN, "status", "--help")
    assert done.returncode == 0, done.stderr
    assert "Show runs, one run with its tasks, or one task." in done.stdout
    assert "markdown_it" in loaded


async def test_status_of_a_run_and_of_every_run_load_no_front_door_agent_or_logging_package(
    tmp_path: Path, jetstream_log: JetStreamEventLog, nats_url: str
) -> None:
    # Against a real server holding a run: the path a status call takes when it succeeds.
    for envelope in happy_path().envelopes:
        await jetstream_log.append(envelope)
    for args in (("status", "sample-happy"), ("status",)):
        loaded, done = program_run(tmp_path, _MAIN, *args, "--nats", nats_url)
        assert done.returncode == 0, done.stderr
        assert "sample-happy" in done.stdout
        assert "nats" in loaded
        assert loaded.isdisjoint({*HEAVY, *DEFERRED}), (args, sorted(loaded))
        every = set(json.loads((tmp_path / "modules.json").read_text(encoding="utf-8")))
        assert every.isdisjoint(NOT_FOR_READS), (args, sorted(every & NOT_FOR_READS))


def test_status_loads_nats_but_no_front_door_or_agent_package(tmp_path: Path) -> None:
    # Nothing listens on the port: the command connects, fails, and exits 2; what it
    # imported on the way is what a status call imports.
    url = f"nats://127.0.0.1:{free_port()}"
    loaded = modules_after(
        tmp_path, "from claudecluster.cli import main\nmain()", "status", "--nats", url
    )
    assert "nats" in loaded  # it did get as far as talking to NATS
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_status_of_a_run_given_a_url_loads_no_embedded_server_decision_core_or_report(
    tmp_path: Path,
) -> None:
    # Each of these cost a CLI call a tenth of a second or more of start-up, and `status`
    # given a URL uses none of them (the embedded server's psutil, the driver's decision
    # core, the run report).
    url = f"nats://127.0.0.1:{free_port()}"
    dump = tmp_path / "full.json"
    program = (
        "import atexit, json, sys\n"
        f"out = open({str(dump)!r}, 'w')\n"
        "atexit.register(lambda: (out.write(json.dumps(sorted(sys.modules))), out.close()))\n"
        f"sys.argv = ['claudecluster', 'status', 'run-1', '--nats', {url!r}]\n"
        "from claudecluster.cli import main\nmain()"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
        timeout=_SUBPROCESS_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert dump.is_file(), done.stderr
    loaded = set(json.loads(dump.read_text(encoding="utf-8")))
    assert "claudecluster.runtime.connection" in loaded  # it got as far as connecting
    unused = {
        "psutil", "claudecluster.runtime.embedded_nats", "claudecluster.actors.driver",
        "claudecluster.reporting",
    }  # fmt: skip
    assert loaded.isdisjoint(unused), sorted(loaded & unused)


@pytest.mark.parametrize(("path", "name", "short_help"), COMMANDS, ids=[c[1] for c in COMMANDS])
def test_each_lazy_command_shows_the_first_line_of_its_own_docstring(
    path: str, name: str, short_help: str
) -> None:
    module, _, attribute = path.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, cyclopts.App):
        assert target.name[0] == name
        documented = str(target.help)
    else:
        documented = inspect.getdoc(target) or ""
    assert documented.splitlines()[0] == short_help


def test_every_registered_command_resolves_to_what_its_path_names() -> None:
    names = {name for _, name, _ in COMMANDS}
    assert names <= set(app)
    for name in names:
        assert isinstance(app[name], cyclopts.App)
