"""``claudecluster mcp`` as a real process speaking MCP on stdio: first the SDK's client,
then the real Claude Code CLI as the MCP client, driven by the scripted model.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters

from claudecluster.runtime.front_door import FrontDoor
from tests.mcp_server.claude_client import ask_claude_for_status
from tests.mcp_server.conftest import initialize

pytestmark = pytest.mark.nats

CLI = str(Path(sys.executable).parent / "claudecluster")
#: How Claude Code ends a stdio server: SIGINT, SIGTERM this soon after, then SIGKILL
#: (docs/mcp.md). These are the schedule of the signals the test sends, not waits for
#: anything: the server gets no more time than Claude Code gives it.
SIGTERM_AFTER_S = 0.1
SIGKILL_AFTER_S = 0.5


def server_command(nats_url: str, repo: Path) -> list[str]:
    return [CLI, "mcp", "--nats", nats_url, "--repo", str(repo)]


async def test_the_sdk_client_talks_to_claudecluster_mcp_over_stdio(
    door: FrontDoor, nats_url: str, tmp_path: Path
) -> None:
    command = server_command(nats_url, tmp_path)
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=tmp_path)
    async with Client(params, mode="legacy") as client:
        assert client.server_info is not None
        assert client.server_info.name == "claudecluster"
        result = await client.call_tool("run_status", {"run_id": "sample-happy"})
        bad = await client.call_tool("task_status", {"task": "a/b/c"})
    assert (result.structured_content or {})["state"] == "completed"
    assert bad.is_error


async def test_claude_code_calls_run_status_and_gets_the_real_status(
    door: FrontDoor, nats_url: str, tmp_path: Path
) -> None:
    """Claude Code starts ``claudecluster mcp`` from ``--mcp-config`` and, told so by the
    scripted model, calls its run_status tool; the tool result it hands back to the model
    carries the status the cluster recorded."""
    command = server_command(nats_url, tmp_path)
    await ask_claude_for_status(
        tmp_path, {"type": "stdio", "command": command[0], "args": command[1:]}
    )


async def test_the_embedded_nats_server_stops_when_claude_code_ends_the_server(
    tmp_path: Path,
) -> None:
    """Claude Code ends a stdio server with SIGINT, SIGTERM 100 ms later, then SIGKILL;
    the nats-server that ``claudecluster mcp`` started for the project must not outlive it."""
    errors = tmp_path / "mcp-stderr.log"
    with errors.open("wb") as stderr:
        process = await anyio.open_process(
            [CLI, "mcp", "--workers", "0"], cwd=tmp_path, stderr=stderr
        )
    async with process:
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send(json.dumps(initialize()).encode() + b"\n")
        try:
            with anyio.fail_after(60):
                answer = await process.stdout.receive()
        except anyio.EndOfStream:
            await process.wait()
            pytest.fail(f"claudecluster mcp exited {process.returncode} before answering: "
                        f"{errors.read_text(errors='replace')[-2000:]}")  # fmt: skip
        assert b'"protocolVersion"' in answer
        (nats,) = [
            child
            for child in psutil.Process(process.pid).children()
            if child.name().startswith("nats-server")
        ]
        process.send_signal(signal.SIGINT)
        await anyio.sleep(SIGTERM_AFTER_S)  # the signals' schedule, not a wait
        process.send_signal(signal.SIGTERM)
        await anyio.sleep(SIGKILL_AFTER_S)  # the signals' schedule, not a wait
        if process.returncode is None:
            process.kill()
    _, alive = psutil.wait_procs([nats], timeout=15)
    for left in alive:  # a failure must not leave the server running
        left.kill()
    assert alive == [], "the embedded nats-server outlived claudecluster mcp"
