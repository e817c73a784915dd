"""kill -9 a worker mid-task: another worker takes the redelivered item over as a new
attempt, resumes the agent's conversation from its mirrored transcript, the task completes
once, and the dead attempt can record nothing more."""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
import pytest
from claude_agent_sdk import SessionKey

from claudecluster.errors import ConcurrencyError
from claudecluster.events import (
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
    task_filter,
    wrap_event,
)
from claudecluster.executors.process import tree_members
from claudecluster.projections import replay
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.base import read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.transcripts import JetStreamTranscriptStore
from tests.runtime.conftest import Driver
from tests.support import wait_for_events

SCRIPT = Script.model_validate(
    {
        "tasks": [
            {
                "marker": "[[task:long]]",
                "latency_s": 2,
                "turns": [
                    {
                        "text": "Step one.",
                        "tools": [
                            {
                                "name": "Bash",
                                "input": {"command": "echo one", "description": "step one"},
                            }
                        ],
                    },
                    {
                        # A long think before the edit: the worker is killed in it, so the
                        # dead attempt never writes and the mirrored transcript ends at turn 0.
                        "latency_s": 6,
                        "tools": [
                            {
                                "name": "Write",
                                "input": {"file_path": "{cwd}/done.txt", "content": "ok\n"},
                            }
                        ],
                    },
                    {"text": "Wrote done.txt."},
                ],
            }
        ]
    }
)
CLI = str(Path(sys.executable).parent / "claudecluster")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _start_worker(nats_url: str, model_url: str, tmp_path: Path, name: str) -> Any:
    # Both workers share one workspace root, as workers on one machine do by default.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    env.update(ANTHROPIC_BASE_URL=model_url, ANTHROPIC_API_KEY="sk-x")
    return await anyio.open_process(
        [CLI, "worker", "--nats", nats_url, "--ack-wait", "3",
         "--workspace-root", str(tmp_path / "workspaces")],
        env=env,
    )  # fmt: skip


# A take-over waits out the ack wait and a worker's start: generous for a loaded machine.
_PROGRESS_WITHIN_S = 90.0


async def _wait_for(log: JetStreamEventLog, check: Any) -> list[Any]:
    return await wait_for_events(log, check, limit_s=_PROGRESS_WITHIN_S)


def _holds_tool_result(transcript: list[Any] | None) -> bool:
    return "tool_result" in json.dumps(transcript or [])


def _asked_for_turn(model: Any, turn: int) -> bool:
    return any(s.task == "[[task:long]]" and s.turn == turn for s in model.served)


def _first_tool_result(events: list[Any]) -> bool:
    return any(isinstance(e, TaskProgress) and e.kind == "tool_result" for e in events)


async def test_a_killed_workers_task_is_taken_over_and_completes_once(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path, nats_url: str
) -> None:
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    async with open_scripted_model(SCRIPT) as model:
        first = await _start_worker(nats_url, model.url, tmp_path, "a")
        second: anyio.abc.Process | None = None
        try:
            await driver.submit("run5", "long", "[[task:long]] write done.txt")
            events = await _wait_for(log, _first_tool_result)
            started = next(e for e in events if isinstance(e, TaskStarted))
            store = JetStreamTranscriptStore(client.jetstream())
            key: SessionKey = {"project_key": "run5/long", "session_id": started.session_id}
            with anyio.fail_after(30):
                # The transcript of the first turn has been mirrored to the store, and the
                # agent is waiting on its second turn.
                while not (_holds_tool_result(await store.load(key)) and _asked_for_turn(model, 1)):  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            agents = tree_members(first.pid)[1:]  # its reaper, claude and their children
            first.send_signal(signal.SIGKILL)  # no chance to clean up or to ack
            await first.wait()
            second = await _start_worker(nats_url, model.url, tmp_path, "b")
            events = await _wait_for(log, lambda es: any(isinstance(e, TaskSucceeded) for e in es))
        finally:
            for process in (first, second):
                if process is not None and process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with anyio.fail_after(60):
                        await process.wait()
    succeeded = [e for e in events if isinstance(e, TaskSucceeded)]
    assert len(succeeded) == 1
    assert succeeded[0].attempt == 2  # taken over as a new attempt
    assert succeeded[0].worker_id != started.worker_id
    assert [a.name for a in succeeded[0].artifacts] == ["result.bundle", "diffstat.json"]
    resumed = [e for e in events if isinstance(e, TaskStarted) and e.attempt == 2]
    assert [(r.resumed, r.session_id) for r in resumed] == [(True, started.session_id)]
    # The conversation went on: the model never saw the first turn asked for again.
    assert [s.turn for s in model.served if s.task == "[[task:long]]"].count(0) == 1
    # The dead worker's agent died with it (it ran under the reaper).
    with anyio.fail_after(10):
        # The kernel ends them; there is no event to wait on, so their state is polled.
        while any(_alive(a) for a in agents):  # noqa: ASYNC110
            await anyio.sleep(0.1)
    # A late result from the dead attempt cannot be recorded: its fence has moved.
    stored = await read_all(log, subjects=task_filter("run5", "long"))
    dead_last = max(s.seq for s in stored if getattr(s.envelope.payload, "attempt", 0) == 1)
    late = TaskSucceeded(run_id="run5", task_id="long", attempt=1, worker_id=started.worker_id)
    with pytest.raises(ConcurrencyError):
        await log.append(
            wrap_event(late, event_id="late-1", now=datetime.now(UTC)),
            expected_last=dead_last,
        )
    # The killed worker's workspace was swept by the worker that started after it.
    assert list((tmp_path / "workspaces").iterdir()) == []
    view = replay(await read_all(log))
    assert view.tasks["run5/long"].attempt == 2
    assert view.tasks["run5/long"].state.value == "succeeded"
