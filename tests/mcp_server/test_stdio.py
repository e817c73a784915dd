"""``claudecluster mcp`` as a real process speaking MCP on stdio: first the SDK's client,
then the real Claude Code CLI as the MCP client, driven by the scripted model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from claudecluster.runtime.front_door import FrontDoor
from tests.mcp_server.claude_client import ask_claude_for_status

pytestmark = pytest.mark.nats

CLI = str(Path(sys.executable).parent / "claudecluster")


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
