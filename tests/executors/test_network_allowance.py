"""A plan's network allowance: an allowed destination is reachable, anything else is not.

Each attempt's network namespace has only its own loopback; a destination its plan allows
gets one forwarder there (and its name in the sandbox's ``/etc/hosts``). The probes of
:func:`tests.escapes.network_script` try the allowed destination and others for real, as
a shell task and as the real Claude Code CLI's Bash tool; the host side counts what each
server accepted.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.abc
import pytest

from claudecluster.domain.network import Destination
from claudecluster.events import TaskProgress, TaskRateLimited
from claudecluster.executors.base import AttemptRun
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.executors.confinement import (
    Confinement,
    Forward,
    Mechanism,
    Sandbox,
    bwrap_command,
    forward_layout,
    hosts_text,
)
from claudecluster.executors.shell import ShellExecutor
from claudecluster.scripted_model import Script, open_scripted_model
from tests.escapes import network_script, parse_network_report

_MECHANISM = Mechanism(
    bwrap="bwrap", socat="/usr/bin/socat", system=(("bind", "/usr"),), setpriv="/usr/bin/setpriv"
)
_NO_CAPS = "0000000000000000"


@asynccontextmanager
async def _greeter(port: int = 0) -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback server that greets each connection with a line and counts them."""
    accepted: list[str] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def greet(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            accepted.append("connected")
            await stream.send(b"hello\n")

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, greet)
        try:
            yield bound, accepted
        finally:
            group.cancel_scope.cancel()


def _job(tmp_path: Path, prompt: str, allow: tuple[str, ...]) -> AttemptRun:
    workspace = tmp_path / "workspaces" / "run-1-t-1" / "ws"
    workspace.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    return AttemptRun(
        run_id="r1",
        task_id="t1",
        attempt=1,
        prompt=prompt,
        workspace=workspace,
        scratch=workspace.parent,
        session_id=str(uuid.uuid4()),
        network_allow=allow,
    )


async def _run_shell(sandbox: Mechanism, job: AttemptRun) -> tuple[bool, list[str]]:
    lines: list[str] = []

    async def sink(update: TaskProgress | TaskRateLimited) -> None:
        assert isinstance(update, TaskProgress)
        lines.append(update.text)

    outcome = await ShellExecutor(confinement=Confinement(mechanism=sandbox)).run(job, sink)
    return outcome.succeeded, lines


# ----------------------------------------------------------------------------------------
# The pure layout
# ----------------------------------------------------------------------------------------


def test_each_allowed_name_gets_a_loopback_address_of_its_own_and_loopback_stays() -> None:
    layout = forward_layout(
        [
            Destination("pypi.org", 443),
            Destination("127.0.0.1", 5432),
            Destination("files.pythonhosted.org", 443),
            Destination("pypi.org", 8080),
            Destination("localhost", 5432),  # the same place as 127.0.0.1:5432
            Destination("api.anthropic.com", 9000),
        ],
        api_name="api.anthropic.com",
    )
    assert [(str(d), address) for d, address in layout] == [
        ("pypi.org:443", "127.0.1.1"),
        ("127.0.0.1:5432", "127.0.0.1"),
        ("files.pythonhosted.org:443", "127.0.1.2"),
        ("pypi.org:8080", "127.0.1.1"),
        ("api.anthropic.com:9000", "127.0.0.1"),
    ]
    assert hosts_text(layout, api_name="api.anthropic.com") == (
        "127.0.0.1 localhost api.anthropic.com\n::1 localhost\n"
        "127.0.1.1 pypi.org\n127.0.1.2 files.pythonhosted.org\n"
    )


def test_forwarders_are_started_before_the_command_and_low_ports_drop_their_capability(
    tmp_path: Path,
) -> None:
    base = Sandbox(workspace=tmp_path / "ws", home=tmp_path / "home", tmp=tmp_path / "tmp")
    high = replace(base, forwards=(Forward("127.0.1.1", 5432, tmp_path / "f.sock"),))
    argv = bwrap_command(high, ["true"], _MECHANISM)
    assert "--unshare-net" in argv
    assert "--cap-add" not in argv
    assert argv[argv.index(str(tmp_path / "f.sock")) + 1] == "/run/cc/fwd-0.sock"
    inner = argv[argv.index("--") + 1 :]
    assert inner[3:9] == ["forwarder", "1", "0", "127.0.1.1", "5432", "/run/cc/fwd-0.sock"]
    assert inner[-1] == "true"

    low = replace(base, forwards=(Forward("127.0.1.1", 443, tmp_path / "f.sock"),))
    argv = bwrap_command(low, ["true"], _MECHANISM)
    added = [argv[i + 1] for i, part in enumerate(argv) if part == "--cap-add"]
    assert added == ["CAP_NET_BIND_SERVICE", "CAP_SETPCAP"]
    assert argv[argv.index("/usr/bin/setpriv") + 1] == "/run/cc/setpriv"
    with pytest.raises(ValueError, match="setpriv"):
        bwrap_command(low, ["true"], replace(_MECHANISM, setpriv=None))
    twice = replace(base, forwards=(*low.forwards, *low.forwards))
    with pytest.raises(ValueError, match=r"two forwarders on 127\.0\.1\.1:443"):
        bwrap_command(twice, ["true"], _MECHANISM)


# ----------------------------------------------------------------------------------------
# For real, in the sandbox
# ----------------------------------------------------------------------------------------


async def test_a_shell_task_reaches_the_address_its_plan_allows_and_no_other(
    sandbox: Mechanism, tmp_path: Path
) -> None:
    async with _greeter() as (allowed, reached), _greeter() as (other, refused):
        job = _job(
            tmp_path,
            network_script([("127.0.0.1", allowed)], [("127.0.0.1", other)]),
            allow=(f"127.0.0.1:{allowed}",),
        )
        succeeded, lines = await _run_shell(sandbox, job)
    report = parse_network_report(lines)
    assert succeeded, lines
    assert report[f"127.0.0.1:{allowed}"] == "reached", lines
    assert report[f"127.0.0.1:{other}"] == "denied", lines
    assert report["caps"].split("/")[0] == _NO_CAPS
    assert reached == ["connected"]
    assert refused == []


async def test_without_an_allowance_the_same_address_is_denied(
    sandbox: Mechanism, tmp_path: Path
) -> None:
    """The control: the probe does reach out, and only the allowance lets it through."""
    async with _greeter() as (port, accepted):
        job = _job(tmp_path, network_script([], [("127.0.0.1", port)]), allow=())
        succeeded, lines = await _run_shell(sandbox, job)
    assert succeeded, lines
    assert parse_network_report(lines)[f"127.0.0.1:{port}"] == "denied"
    assert accepted == []


def _loopback_name() -> str | None:
    """A host name (not localhost) this machine resolves to 127.0.0.1, from /etc/hosts."""
    try:
        lines = Path("/etc/hosts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or fields[0] != "127.0.0.1":
            continue
        for name in fields[1:]:
            if name != "localhost" and "." not in name.strip("."):
                try:
                    if socket.gethostbyname(name) == "127.0.0.1":
                        return name.lower()
                except OSError:
                    continue
    return None


async def test_an_allowed_host_name_leads_to_that_host_alone(
    sandbox: Mechanism, tmp_path: Path
) -> None:
    name = _loopback_name()
    if name is None:
        pytest.skip("no host name in /etc/hosts resolves to 127.0.0.1 here")
    async with _greeter() as (port, accepted):
        script = network_script([(name, port)], [("127.0.0.1", port)])
        job = _job(tmp_path, f"getent hosts {name}; {script}", allow=(f"{name}:{port}",))
        succeeded, lines = await _run_shell(sandbox, job)
    report = parse_network_report(lines)
    assert succeeded, lines
    # Inside, the name is the forwarder's own loopback address, not 127.0.0.1: the same
    # port on 127.0.0.1 has nothing behind it.
    assert any(line.split()[:2] == ["127.0.1.1", name] for line in lines), lines
    assert report[f"{name}:{port}"] == "reached", lines
    assert report[f"127.0.0.1:{port}"] == "denied", lines
    assert accepted == ["connected"]


def _free_low_port() -> int | None:
    for port in range(990, 1024):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return None


async def test_an_allowed_low_port_is_forwarded_and_the_command_holds_no_capability(
    sandbox: Mechanism, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("serving a port below 1024 on the host side needs root")
    free = _free_low_port()
    if free is None:
        pytest.skip("no free port below 1024 on 127.0.0.1")
    async with _greeter(free) as (port, accepted):
        job = _job(
            tmp_path,
            network_script([("127.0.0.1", port)], []),
            allow=(f"127.0.0.1:{port}",),
        )
        succeeded, lines = await _run_shell(sandbox, job)
    report = parse_network_report(lines)
    assert succeeded, lines
    assert report[f"127.0.0.1:{port}"] == "reached", lines
    # Its forwarder bound the port with CAP_NET_BIND_SERVICE; the command has none, and
    # cannot get one back (empty bounding set).
    assert report["caps"] == f"{_NO_CAPS}/{_NO_CAPS}", lines
    assert accepted == ["connected"]


async def test_the_agent_reaches_its_model_and_the_allowed_address_but_no_other(
    sandbox: Mechanism, tmp_path: Path
) -> None:
    lines: list[str] = []

    async def sink(update: TaskProgress | TaskRateLimited) -> None:
        if isinstance(update, TaskProgress) and update.kind == "tool_result":
            lines.append(update.text)

    async with _greeter() as (allowed, reached), _greeter() as (other, refused):
        probe = network_script([("127.0.0.1", allowed)], [("127.0.0.1", other)])
        script = Script.model_validate(
            {
                "tasks": [
                    {
                        "marker": "[[task:net]]",
                        "turns": [
                            {
                                "text": "Trying the network.",
                                "tools": [
                                    {
                                        "name": "Bash",
                                        "input": {"command": probe, "description": "probe"},
                                    }
                                ],
                            },
                            {"text": "Done."},
                        ],
                    }
                ]
            }
        )
        async with open_scripted_model(script) as model:
            job = replace(
                _job(tmp_path, "[[task:net]] probe", allow=(f"127.0.0.1:{allowed}",)),
                api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
            )
            executor = ClaudeCodeExecutor(confinement=Confinement(mechanism=sandbox))
            outcome = await executor.run(job, sink)
    report = parse_network_report(lines)
    assert outcome.succeeded, outcome
    assert outcome.summary == "Done."  # the model answered both turns through its forwarder
    assert report[f"127.0.0.1:{allowed}"] == "reached", lines
    assert report[f"127.0.0.1:{other}"] == "denied", lines
    assert reached == ["connected"]
    assert refused == []
