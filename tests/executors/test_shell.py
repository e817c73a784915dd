"""The shell executor: a command line in the workspace, with limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

from claudecluster.events import TaskLimits, TaskProgress, TaskRateLimited
from claudecluster.executors.base import AttemptRun
from claudecluster.executors.shell import ShellExecutor


def _job(tmp_path: Path, command: str, **limits: Any) -> AttemptRun:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    return AttemptRun(
        run_id="r", task_id="t", attempt=2, prompt=command, workspace=workspace,
        scratch=tmp_path / "scratch", session_id="", limits=TaskLimits(**limits),
        api_environment={"ANTHROPIC_API_KEY": "sk-not-for-shell-but-allowed"},
    )  # fmt: skip


async def test_a_command_runs_in_the_workspace_and_streams_its_lines(tmp_path: Path) -> None:
    lines: list[str] = []

    async def sink(update: TaskProgress | TaskRateLimited) -> None:
        assert isinstance(update, TaskProgress)
        assert (update.attempt, update.kind) == (2, "text")
        lines.append(update.text)

    job = _job(tmp_path, "echo one; echo two > made.txt; echo three; echo $HOME")
    outcome = await ShellExecutor().run(job, sink)
    assert outcome.succeeded
    assert (job.workspace / "made.txt").read_text() == "two\n"
    assert lines[:2] == ["one", "three"]
    assert lines[2].startswith(str(tmp_path))  # a private HOME
    assert outcome.summary == lines[-1]


async def test_a_failing_command_is_a_failure_naming_its_status_and_output(
    tmp_path: Path,
) -> None:
    async def sink(_: TaskProgress | TaskRateLimited) -> None:
        pass

    outcome = await ShellExecutor().run(_job(tmp_path, "echo broken >&2; exit 3"), sink)
    assert (outcome.succeeded, outcome.failure_class, outcome.retryable) == (
        False,
        "agent_error",
        False,
    )
    assert "status 3" in outcome.reason
    assert "broken" in outcome.reason


async def test_a_command_past_its_wall_time_is_ended_with_its_children(tmp_path: Path) -> None:
    async def sink(_: TaskProgress | TaskRateLimited) -> None:
        pass

    job = _job(tmp_path, "sleep 60 & sleep 60; wait", wall_time_s=0.5)
    outcome = await ShellExecutor(kill_grace_s=1).run(job, sink)
    assert outcome.failure_class == "timeout"
    sleepers = [
        p for p in psutil.process_iter(["cmdline", "cwd"])
        if p.info["cmdline"] == ["sleep", "60"] and str(tmp_path) in (p.info["cwd"] or "")
    ]  # fmt: skip
    assert sleepers == []
