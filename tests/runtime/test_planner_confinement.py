"""The Claude planner's agent runs confined like an attempt: the real CLI, on the scripted
model, reaches its model but cannot read the driver's secrets.

The planning agent has only Read, Glob and Grep, and reads a repository anyone may have
written into. Its first turn reads what an injected instruction would reach for (the
driver's environment through ``/proc``, the project's credentials, the user's home); the
tool results it got back are what the executor reported. The same script without the
sandbox reads them all, so the probes are real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from claudecluster.domain.outcome import Outcome
from claudecluster.events import RunSubmitted, TaskProgress, TaskRateLimited
from claudecluster.executors.base import AttemptRun, ProgressSink
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.executors.confinement import Confinement, Mechanism
from claudecluster.runtime.planners import ClaudeCodePlanner
from claudecluster.scripted_model import Script, open_scripted_model
from tests.escapes import EscapeTargets
from tests.support import git_output, make_repo

GOOD = {"tasks": [{"id": "models", "prompt": "Move the models out", "files": ["app.py"]}]}


class Recording:
    """The real executor, keeping the tool results the planner itself does not look at."""

    def __init__(self, executor: ClaudeCodeExecutor) -> None:
        self._executor = executor
        self.tool_results: list[str] = []

    async def run(self, job: AttemptRun, on_progress: ProgressSink) -> Outcome:
        async def keep(update: TaskProgress | TaskRateLimited) -> None:
            if isinstance(update, TaskProgress) and update.kind == "tool_result":
                self.tool_results.append(update.text)
            await on_progress(update)

        return await self._executor.run(job, keep)


def _script(targets: EscapeTargets) -> Script:
    reads = [
        f"/proc/{os.getpid()}/environ",
        str(targets.creds),
        str(targets.user_home_file),
        str(targets.other_workspace_file),
    ]
    answer = "Here is the plan.\n```json\n" + json.dumps(GOOD) + "\n```"
    return Script.model_validate(
        {
            "tasks": [
                {
                    "marker": "Plan how several agents",
                    "turns": [
                        {
                            "text": "Looking around first.",
                            "tools": [{"name": "Read", "input": {"file_path": p}} for p in reads],
                        },
                        {"text": answer},
                    ],
                }
            ]
        }
    )


async def _plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, confinement: Confinement
) -> tuple[list[Any], list[str], EscapeTargets, int]:
    targets = EscapeTargets.make(tmp_path, port=9)
    monkeypatch.setenv("CC_TEST_DRIVER_SECRET", targets.secret)
    repo = make_repo(tmp_path / "repo", {"app.py": "class A: ...\n"})
    commit = git_output(repo, "rev-parse", "HEAD").strip()
    async with open_scripted_model(_script(targets)) as model:
        executor = Recording(ClaudeCodeExecutor(confinement=confinement))
        api = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"}
        planner = ClaudeCodePlanner(executor, tmp_path / "driver", api)
        submitted = RunSubmitted(run_id="r1", goal="split the module", repo=str(repo))
        tasks = await planner.tasks(submitted, repo, commit)
        requests = len(model.served)
    return tasks, executor.tool_results, targets, requests


async def test_the_planning_agent_reaches_its_model_and_reads_none_of_the_drivers_secrets(
    sandbox: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks, results, targets, requests = await _plan(
        tmp_path, monkeypatch, Confinement(mechanism=sandbox)
    )
    assert [task.task_id for task in tasks] == ["models"]
    assert requests == 2  # both turns went through the sandbox's forwarder to the model
    assert len(results) == 4, results
    # The CLI's Read refuses /proc files itself; the files outside are not there at all.
    assert all("File does not exist" in result for result in results[1:]), results
    joined = "\n".join(results)
    assert targets.secret not in joined
    assert "BEGIN NATS USER JWT" not in joined
    assert "AWS_SECRET_ACCESS_KEY" not in joined
    assert "someone else" not in joined


async def test_without_the_sandbox_the_same_planner_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the probes do read, and only the sandbox stops them."""
    tasks, results, _, _ = await _plan(tmp_path, monkeypatch, Confinement.unconfined())
    assert [task.task_id for task in tasks] == ["models"]
    joined = "\n".join(results)
    assert "BEGIN NATS USER JWT" in joined, results
    assert "someone else" in joined, results
