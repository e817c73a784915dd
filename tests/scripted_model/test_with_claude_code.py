"""The real Claude Code CLI (bundled with claude-agent-sdk) against the scripted model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import claude_agent_sdk
import pytest

from claudecluster.scripted_model import Script, open_scripted_model

CLAUDE = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
TOOLS = "Write,Edit,Bash,Read"


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


async def run_claude(
    base_url: str,
    prompt: str,
    cwd: Path,
    tmp_path: Path,
    *,
    retries: int = 0,
    extra: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """One headless run, isolated: its own HOME and config dir, the scripted API, no retries.

    Non-essential traffic is off so the CLI reaches nothing but the scripted Messages API.
    """
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}
    env.update(
        HOME=str(home),
        CLAUDE_CONFIG_DIR=str(home / ".claude"),
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY="sk-scripted-test",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_MAX_RETRIES=str(retries),
    )
    command = [
        str(CLAUDE), "-p", prompt, "--output-format", "stream-json", "--verbose",
        "--permission-mode", "acceptEdits", "--allowedTools", TOOLS, *extra,
    ]  # fmt: skip
    with anyio.fail_after(120):
        done = await anyio.run_process(command, cwd=cwd, env=env, check=False)
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


def _result(events: list[dict[str, Any]]) -> dict[str, Any]:
    results = [e for e in events if e.get("type") == "result"]
    assert len(results) == 1, events[-3:]
    return results[0]


def _script(task: dict[str, Any]) -> Script:
    return Script.model_validate({"tasks": [task]})


WRITE_THEN_DONE = {
    "marker": "[[task:hello]]",
    "turns": [
        {
            "text": "I'll write the greeting.",
            "tools": [
                {
                    "name": "Write",
                    "input": {"file_path": "{cwd}/hello.py", "content": "print('hello')\n"},
                }
            ],
        },
        {"text": "Done: hello.py prints a greeting."},
    ],
}


async def test_claude_code_writes_the_scripted_file_and_succeeds(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    async with open_scripted_model(_script(WRITE_THEN_DONE)) as model:
        events = await run_claude(model.url, "[[task:hello]] add a greeting", repo, tmp_path)
    assert (repo / "hello.py").read_text() == "print('hello')\n"
    result = _result(events)
    assert result["is_error"] is False
    assert result["result"] == "Done: hello.py prints a greeting."
    tool_uses = [
        block["name"]
        for event in events if event.get("type") == "assistant"
        for block in event["message"]["content"] if block.get("type") == "tool_use"
    ]  # fmt: skip
    assert tool_uses == ["Write"]
    assert model.statistics()["[[task:hello]]"] == 2
    assert all(served.stream for served in model.served)


async def test_bash_runs_in_the_agents_working_directory(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    task = {
        "marker": "[[task:bash]]",
        "turns": [
            {"tools": [{"name": "Bash", "input": {"command": "echo ran > out.txt",
                                                  "description": "write out.txt"}}]},
            {"text": "Ran it."},
        ],
    }  # fmt: skip
    async with open_scripted_model(_script(task)) as model:
        events = await run_claude(model.url, "[[task:bash]]", repo, tmp_path)
    assert (repo / "out.txt").read_text() == "ran\n"
    assert _result(events)["is_error"] is False


@pytest.mark.parametrize("kind", ["http_500", "cut_stream"])
async def test_a_transient_error_is_retried_by_the_cli_and_the_task_completes(
    tmp_path: Path, kind: str
) -> None:
    repo = _repo(tmp_path)
    task = {**WRITE_THEN_DONE, "errors": [{"turn": 0, "kind": kind, "times": 1}]}
    async with open_scripted_model(_script(task)) as model:
        events = await run_claude(model.url, "[[task:hello]]", repo, tmp_path, retries=2)
    assert _result(events)["is_error"] is False
    assert (repo / "hello.py").exists()
    assert [s.error for s in model.served].count(kind) == 1
    assert any(e.get("subtype") == "api_retry" for e in events)


async def test_an_auth_error_fails_the_run_with_its_status(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    task = {**WRITE_THEN_DONE, "errors": [{"turn": 0, "kind": "http_401", "times": 99}]}
    async with open_scripted_model(_script(task)) as model:
        events = await run_claude(model.url, "[[task:hello]]", repo, tmp_path, retries=0)
    result = _result(events)
    assert result["is_error"] is True
    assert result["api_error_status"] == 401
    assert not (repo / "hello.py").exists()


async def test_the_command_line_server_serves_a_script_until_interrupted(tmp_path: Path) -> None:
    script = tmp_path / "script.yaml"
    script.write_text(json.dumps({"tasks": [WRITE_THEN_DONE]}))
    command = [str(Path(sys.executable).parent / "claudecluster"), "scripted-model",
               "--script", str(script)]  # fmt: skip
    repo = _repo(tmp_path)
    async with await anyio.open_process(command) as process:
        try:
            assert process.stdout is not None
            output = ""
            with anyio.fail_after(30):
                while (found := re.search(r"http://127\.0\.0\.1:\d+", output)) is None:
                    output += (await process.stdout.receive()).decode()
            url = found.group(0)
            events = await run_claude(url, "[[task:hello]]", repo, tmp_path)
            assert _result(events)["is_error"] is False
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(30):
                code = await process.wait()
        finally:
            # Leaving the block waits for the process without a bound: a server that
            # ignored the signal must fail this test, not hang the suite.
            if process.returncode is None:
                process.kill()
    assert code == 130  # interrupted, as documented


async def test_the_command_line_server_stops_on_sigterm_with_exit_code_0(tmp_path: Path) -> None:
    script = tmp_path / "script.yaml"
    script.write_text(json.dumps({"tasks": [WRITE_THEN_DONE]}))
    command = [str(Path(sys.executable).parent / "claudecluster"), "scripted-model",
               "--script", str(script)]  # fmt: skip
    async with await anyio.open_process(command) as process:
        try:
            assert process.stdout is not None
            output = ""
            with anyio.fail_after(30):
                while "listening on" not in output:
                    output += (await process.stdout.receive()).decode()
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
    assert code == 0
