"""The Claude Code executor against the real CLI and the scripted model: progress,
outcomes, limits and cancellation, and no process left behind on any path."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from claudecluster.events import TaskLimits, TaskProgress, TaskRateLimited
from claudecluster.executors.claude_code import (
    AttemptRun,
    ClaudeCodeExecutor,
    child_environment,
    claude_command,
)
from claudecluster.scripted_model import Script, open_scripted_model

WRITE = {
    "marker": "[[task:write]]",
    "turns": [
        {
            "text": "Writing the module.",
            "tools": [
                {"name": "Write", "input": {"file_path": "{cwd}/m.py", "content": "x = 1\n"}}
            ],
        },
        {"text": "Wrote m.py."},
    ],
}
SLOW = {"marker": "[[task:slow]]", "latency_s": 60, "turns": [{"text": "never"}]}
LOOP = {
    "marker": "[[task:loop]]",
    "turns": [
        {"tools": [{"name": "Bash", "input": {"command": f"echo {i}", "description": "x"}}]}
        for i in range(6)
    ],
}
SCRIPT = Script.model_validate({"tasks": [WRITE, SLOW, LOOP]})


def _job(tmp_path: Path, url: str, marker: str, **limits: Any) -> AttemptRun:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    return AttemptRun(
        run_id="r1",
        task_id="t1",
        attempt=1,
        prompt=f"{marker} do the task",
        workspace=workspace,
        scratch=tmp_path / "scratch",
        session_id=str(uuid.uuid4()),
        limits=TaskLimits(**limits),
        api_environment={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-scripted-x"},
    )


def _claude_processes_under(root: Path) -> list[psutil.Process]:
    """Live processes working inside ``root`` (the agent runs with its workspace as cwd)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.cwd().startswith(str(root)) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


async def test_a_run_streams_progress_in_order_and_succeeds(tmp_path: Path) -> None:
    progress: list[TaskProgress] = []

    async def sink(update: TaskProgress | TaskRateLimited) -> None:
        assert isinstance(update, TaskProgress)
        progress.append(update)

    async with open_scripted_model(SCRIPT) as model:
        job = _job(tmp_path, model.url, "[[task:write]]")
        outcome = await ClaudeCodeExecutor().run(job, sink)
    assert outcome.succeeded, outcome
    assert outcome.session_id == job.session_id
    assert outcome.summary == "Wrote m.py."
    assert (job.workspace / "m.py").read_text() == "x = 1\n"
    kinds = [p.kind for p in progress if p.kind != "usage"]
    assert kinds == ["text", "tool_use", "tool_result", "text"]
    assert (job.scratch / "claude-config").is_dir()  # the transcript stays out of ~/.claude
    assert not _claude_processes_under(tmp_path)


async def test_a_breached_wall_time_ends_the_tree_and_is_a_retryable_timeout(
    tmp_path: Path,
) -> None:
    async def ignore(_: TaskProgress | TaskRateLimited) -> None:
        pass

    async with open_scripted_model(SCRIPT) as model:
        job = _job(tmp_path, model.url, "[[task:slow]]", wall_time_s=2)
        outcome = await ClaudeCodeExecutor(kill_grace_s=2).run(job, ignore)
    assert (outcome.succeeded, outcome.failure_class, outcome.retryable) == (
        False,
        "timeout",
        True,
    )
    assert "wall-time limit of 2" in outcome.reason
    assert not _claude_processes_under(tmp_path)


async def test_a_memory_cap_below_the_cli_footprint_ends_it_with_the_limit_named(
    tmp_path: Path,
) -> None:
    async def ignore(_: TaskProgress | TaskRateLimited) -> None:
        pass

    async with open_scripted_model(SCRIPT) as model:
        job = _job(tmp_path, model.url, "[[task:slow]]", memory_mb=16)
        outcome = await ClaudeCodeExecutor(kill_grace_s=2).run(job, ignore)
    assert (outcome.failure_class, outcome.retryable) == ("limit", False)
    assert "memory limit of 16 MiB" in outcome.reason
    assert not _claude_processes_under(tmp_path)


async def test_the_turn_limit_is_passed_to_the_cli_and_reported(tmp_path: Path) -> None:
    async def ignore(_: TaskProgress | TaskRateLimited) -> None:
        pass

    async with open_scripted_model(SCRIPT) as model:
        outcome = await ClaudeCodeExecutor().run(
            _job(tmp_path, model.url, "[[task:loop]]", max_turns=2), ignore
        )
    assert outcome.failure_class == "max_turns"


async def test_cancelling_a_run_leaves_no_process_behind(tmp_path: Path) -> None:
    async def sink(_: TaskProgress | TaskRateLimited) -> None:
        pass

    async with open_scripted_model(SCRIPT) as model:
        job = _job(tmp_path, model.url, "[[task:slow]]")
        async with anyio.create_task_group() as group:

            async def run() -> None:
                await ClaudeCodeExecutor(kill_grace_s=2).run(job, sink)
                pytest.fail("the run should have been cancelled")

            group.start_soon(run)
            with anyio.fail_after(30):
                await model.wait_requests(1)  # the CLI has reached the model: it is mid-run
            group.cancel_scope.cancel()
    assert not _claude_processes_under(tmp_path)


def test_the_agent_sees_only_allowlisted_variables_and_its_own_home(tmp_path: Path) -> None:
    job = _job(tmp_path, "http://127.0.0.1:1", "[[task:write]]")
    parent = {"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "nope", "CLAUDECODE": "1",
              "CLAUDECLUSTER_NATS__URL": "nats://x"}  # fmt: skip
    env = child_environment(job, parent, cli_retries=1)
    assert env["PATH"] == "/bin"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "CLAUDECODE" not in env
    assert "CLAUDECLUSTER_NATS__URL" not in env
    assert env["ANTHROPIC_API_KEY"] == "sk-scripted-x"
    assert env["HOME"].startswith(str(tmp_path))
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "1"


def test_the_command_chooses_the_session_and_passes_limits(tmp_path: Path) -> None:
    job = _job(tmp_path, "u", "[[x]]", max_turns=7, max_cost_usd=0.25)
    command = claude_command(replace(job, mcp_config=tmp_path / "mcp.json"), Path("/bin/claude"))
    assert command[command.index("--session-id") + 1] == job.session_id
    assert command[command.index("--max-turns") + 1] == "7"
    assert command[command.index("--max-budget-usd") + 1] == "0.25"
    assert command[command.index("--mcp-config") + 1] == str(tmp_path / "mcp.json")
    assert "--strict-mcp-config" in command  # the plan's servers only, none of the repo's
    assert "--strict-mcp-config" not in claude_command(job, Path("/bin/claude"))
    assert "--dangerously-skip-permissions" not in command  # refused as root
    resumed = claude_command(
        replace(job, resume=True, model="claude-x", append_system_prompt="be brief"),
        Path("/bin/claude"),
    )
    assert resumed[resumed.index("--resume") + 1] == job.session_id
    assert "--session-id" not in resumed
    assert resumed[resumed.index("--model") + 1] == "claude-x"
    assert resumed[resumed.index("--append-system-prompt") + 1] == "be brief"


async def test_a_misbehaving_cli_that_prints_garbage_is_a_clear_retryable_failure(
    tmp_path: Path,
) -> None:
    fake = tmp_path / "fake-claude"
    fake.write_text("#!/bin/sh\necho 'this is not json'\necho '[1, 2]'\necho crashed >&2\nexit 3\n")
    fake.chmod(0o755)

    async def ignore(_: TaskProgress | TaskRateLimited) -> None:
        pass

    outcome = await ClaudeCodeExecutor(binary=fake).run(_job(tmp_path, "u", "[[x]]"), ignore)
    assert (outcome.succeeded, outcome.failure_class, outcome.retryable) == (
        False,
        "infrastructure",
        True,
    )
    assert "code 3" in outcome.reason
    assert "2 unreadable output lines" in outcome.reason
