"""``claudecluster mcp`` as a real process speaking MCP on stdio: first the SDK's client,
then the real Claude Code CLI as the MCP client, driven by the scripted model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from claudecluster.executors.claude_code import bundled_claude
from claudecluster.runtime.front_door import FrontDoor
from claudecluster.scripted_model import Script, open_scripted_model

pytestmark = pytest.mark.nats

CLI = str(Path(sys.executable).parent / "claudecluster")
CLAUDE_TIMEOUT_S = 120


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
    script = Script.model_validate(
        {
            "latency_s": 0,
            "tasks": [
                {
                    "marker": "[[task:status]]",
                    "turns": [
                        {
                            "text": "Checking the run.",
                            "tools": [
                                {
                                    "name": "mcp__claudecluster__run_status",
                                    "input": {"run_id": "sample-happy"},
                                }
                            ],
                        },
                        {"text": "The run completed."},
                    ],
                }
            ],
        }
    )
    command = server_command(nats_url, tmp_path)
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps({"mcpServers": {"claudecluster": {"command": command[0], "args": command[1:]}}})
    )
    work = tmp_path / "work"
    work.mkdir()
    async with open_scripted_model(script) as model:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ANTHROPIC_", "CLAUDE")) and key != "CLAUDECODE"
        }
        env.update(
            HOME=str(tmp_path / "home"),
            CLAUDE_CONFIG_DIR=str(tmp_path / "claude-config"),
            ANTHROPIC_BASE_URL=model.url,
            ANTHROPIC_API_KEY="sk-scripted-test",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            CLAUDE_CODE_MAX_RETRIES="0",
        )
        with anyio.fail_after(CLAUDE_TIMEOUT_S):
            done = await anyio.run_process(
                [
                    str(bundled_claude()),
                    "-p",
                    "[[task:status]] how is run sample-happy doing?",
                    "--output-format",
                    "stream-json",
                    "--verbose",
                    "--mcp-config",
                    str(config),
                    "--strict-mcp-config",
                    "--allowedTools",
                    "mcp__claudecluster__run_status",
                ],
                cwd=work,
                env=env,
                check=False,
                stdin=subprocess.DEVNULL,
            )
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    init = next(e for e in lines if e["type"] == "system" and e.get("subtype") == "init")
    servers = {server["name"]: server["status"] for server in init["mcp_servers"]}
    assert servers == {"claudecluster": "connected"}
    results = [
        block
        for event in lines
        if event["type"] == "user"
        for block in event["message"]["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert len(results) == 1, done.stderr.decode()[-2000:]
    assert not results[0].get("is_error"), results[0]
    status: dict[str, Any] = json.loads(_text(results[0]["content"]))
    assert status["run_id"] == "sample-happy"
    assert status["state"] == "completed"
    assert status["counts"] == {"merged": 6}
    final = lines[-1]
    assert final["type"] == "result"
    assert final["is_error"] is False
    assert [s.tools for s in model.served] == [("mcp__claudecluster__run_status",), ()]


def _text(content: Any) -> str:
    """A tool_result's text: a string, or the text of its first text block."""
    if isinstance(content, str):
        return content
    return str(next(block["text"] for block in content if block.get("type") == "text"))
