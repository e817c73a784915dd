"""Claude Code as an MCP client: the real CLI on the scripted model, told to call the
cluster's run_status tool, and the checks on what it hands back."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio

from claudecluster.executors.claude_code import bundled_claude
from claudecluster.scripted_model import Script, open_scripted_model

__all__ = ["ask_claude_for_status"]

CLAUDE_TIMEOUT_S = 120

STATUS_SCRIPT = Script.model_validate(
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


async def ask_claude_for_status(tmp_path: Path, server: dict[str, Any]) -> None:
    """Run Claude Code with ``server`` as its only MCP server, on the scripted model that
    makes it call run_status, and check the tool result it hands back to the model."""
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"claudecluster": server}}))
    work = tmp_path / "work"
    work.mkdir()
    async with open_scripted_model(STATUS_SCRIPT) as model:
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
            # Room for the MCP server to start on a loaded 2-core machine (milliseconds).
            MCP_TIMEOUT="60000",
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
    # Only the server's presence: the init line may be written before a server slowed
    # by a loaded machine has finished connecting; the tool result below is the proof.
    assert [entry["name"] for entry in init["mcp_servers"]] == ["claudecluster"]
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
