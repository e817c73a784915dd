"""The Claude planner with the real claude CLI on the scripted model: its first answer
is a graph with a cycle, the problem is fed back, the second answer is recorded."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from claudecluster.events import CancelRun, RunCancelled, RunPlanned, SubmitRun
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.base import read_all
from claudecluster.transport.commands import publish_command
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.support import make_repo, wait_for_events

CYCLIC = {"tasks": [{"id": "a", "prompt": "do a", "depends_on": ["b"]},
                    {"id": "b", "prompt": "do b", "depends_on": ["a"]}]}  # fmt: skip
GOOD = {
    "goal": "split the module",
    "tasks": [
        {"id": "models", "prompt": "Move the models out", "kind": "refactor",
         "files": ["app.py"]},
        {"id": "tests", "prompt": "Test the models", "kind": "test", "depends_on": ["models"]},
    ],
}  # fmt: skip


def _answer(plan: dict[str, Any]) -> str:
    return "Here is the plan.\n```json\n" + json.dumps(plan, indent=1) + "\n```"


SCRIPT = Script.model_validate(
    {
        "tasks": [
            {"marker": "was not a valid plan", "turns": [{"text": _answer(GOOD)}]},
            {"marker": "Plan how several agents", "turns": [{"text": _answer(CYCLIC)}]},
        ]
    }
)


async def _wait_for(log: JetStreamEventLog, kind: type[Any], limit_s: float) -> None:
    await wait_for_events(log, lambda es: any(isinstance(e, kind) for e in es), limit_s=limit_s)


async def test_the_claude_planner_retries_with_the_problem_and_records_a_valid_plan(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path
) -> None:
    log, client = world
    repo = make_repo(tmp_path / "repo", {"app.py": "class A: ...\n"})
    async with open_scripted_model(SCRIPT) as model, anyio.create_task_group() as group:
        options = DriverOptions(
            work_dir=tmp_path / "driver",
            tick_s=0.1,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
            planner_executor=ClaudeCodeExecutor(),
        )
        await group.start(Driver(log, client.jetstream(), options).run)
        js = client.jetstream()
        submit = SubmitRun(run_id="planned", goal="split the module", repo=str(repo),
                           planner="claude")  # fmt: skip
        await publish_command(js, submit, command_id="s1", now=datetime.now(UTC))
        await _wait_for(log, RunPlanned, 120)
        await publish_command(js, CancelRun(run_id="planned"), command_id="c1",
                              now=datetime.now(UTC))  # fmt: skip
        await _wait_for(log, RunCancelled, 30)
        group.cancel_scope.cancel()
    planned = next(s.envelope.payload for s in await read_all(log)
                   if isinstance(s.envelope.payload, RunPlanned))  # fmt: skip
    assert isinstance(planned, RunPlanned)
    assert [(t.task_id, t.kind, t.depends_on) for t in planned.tasks] == [
        ("models", "refactor", ()),
        ("tests", "test", ("models",)),
    ]
    # Two planning conversations: the cyclic answer, then the corrected one.
    asked = [s.task for s in model.served if s.task is not None]
    assert asked == ["Plan how several agents", "was not a valid plan"]
