"""A worker while the event store fails over (a new stream leader being elected): once an
attempt is claimed, it ends with a recorded outcome, whatever failed under it.

Nothing else would end it: a redelivered item of a taken-over attempt is dropped (its
attempt number is behind the task's), and the driver declares an attempt lost only when
its holder goes silent. A claimed attempt that ended unrecorded held its task for good
while the worker went on serving: a 3-node cluster run whose log leader was killed
never ended (tests/faults/test_nats_cluster.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from claudecluster.errors import EventStoreError
from claudecluster.events import (
    TaskAssigned,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.events.envelope import EventEnvelope
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.base import AppendResult, read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.runtime.conftest import Driver

#: Generous: the task is one shell command; a stuck attempt never finishes at all.
#: Nothing here waits on a redelivery: the ack wait only has to outlast the keep-alives of
#: a loaded machine, or the worker's own item comes back mid-attempt and supersedes it
#: (seen with 2 s under a second suite beside this one).
ACK_WAIT_S = 30.0

FINISHED_WITHIN_S = 90


async def _serve_until_finished(
    worker: Worker, log: JetStreamEventLog, task_id: str
) -> TaskSucceeded | TaskFailed:
    """Serve until the task's attempt records how it ended; that event."""
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        with anyio.fail_after(FINISHED_WITHIN_S):
            async with log.open_reader(follow=True) as events:
                async for stored in events:
                    payload = stored.envelope.payload
                    if (
                        isinstance(payload, TaskSucceeded | TaskFailed)
                        and payload.task_id == task_id
                    ):
                        worker.stop()
                        return payload
    raise AssertionError("the reader of a followed log ended")


class _SessionsFailOnce:
    """The transcript store, except that the first load fails, as a store failing over does."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def load(self, key: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise EventStoreError("cannot read CC_SESSIONS: TimeoutError()")
        return await self._store.load(key)


async def test_a_store_failure_after_a_take_over_is_claimed_is_the_attempts_recorded_failure(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    # The first holder went silent mid-attempt; its item comes to this worker, which takes
    # the task over (attempt 2, on the item of attempt 1) and then cannot read the silent
    # attempt's transcript. Handing the item back would not do: redelivered, it is
    # attempt 1's item and is dropped, and attempt 2 would stay claimed by a live worker.
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    await driver.submit("held", "feature", "echo done > done.txt", executor="shell")
    await driver.record(TaskAssigned(run_id="held", task_id="feature", attempt=1,
                                     worker_id="silent"))  # fmt: skip
    await driver.record(TaskStarted(run_id="held", task_id="feature", attempt=1,
                                    worker_id="silent", session_id="s-silent"))  # fmt: skip
    config = WorkerConfig(worker_id="w-taker", workspace_root=tmp_path / "ws",
                          ack_wait_s=ACK_WAIT_S)  # fmt: skip
    worker = Worker(config, log, client)
    sessions = _SessionsFailOnce(worker._sessions)
    worker._sessions = sessions
    ended = await _serve_until_finished(worker, log, "feature")
    assert sessions.failed
    assert isinstance(ended, TaskFailed)
    assert (ended.attempt, ended.worker_id) == (2, "w-taker")
    assert ended.failure_class == "infrastructure"
    assert ended.retryable  # the driver retries it as a new attempt
    assert "CC_SESSIONS" in ended.reason


class _OutcomeAppendFails:
    """The event log, except that the first ``times`` appends of a success fail as they do
    while the stream's leader is elected; with ``stored``, the store kept the event and
    only the acknowledgement was lost."""

    def __init__(self, log: JetStreamEventLog, *, times: int, stored: bool) -> None:
        self._log = log
        self._times = times
        self._stored = stored
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def append(
        self, envelope: EventEnvelope, *, expected_last: int | None = None
    ) -> AppendResult:
        if isinstance(envelope.payload, TaskSucceeded) and self.failures < self._times:
            self.failures += 1
            if self._stored:
                await self._log.append(envelope, expected_last=expected_last)
            raise EventStoreError("appending cc.evt.x failed: TimeoutError()")
        return await self._log.append(envelope, expected_last=expected_last)


@pytest.mark.parametrize("stored", [False, True], ids=["not stored", "stored, ack lost"])
async def test_an_outcome_whose_append_fails_over_is_recorded_once_by_the_same_attempt(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path, stored: bool
) -> None:
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    await driver.submit("fo", "feature", "echo done > done.txt", executor="shell")
    flaky = _OutcomeAppendFails(log, times=2, stored=stored)
    config = WorkerConfig(worker_id="w-patient", workspace_root=tmp_path / "ws",
                          ack_wait_s=ACK_WAIT_S)  # fmt: skip
    ended = await _serve_until_finished(Worker(config, flaky, client), log, "feature")
    events = [s.envelope.payload for s in await read_all(log)]
    assert flaky.failures == 2
    assert isinstance(ended, TaskSucceeded)
    assert ended.attempt == 1
    # The same attempt, recorded once: not a failure recorded instead, not a second run.
    assert [type(e).__name__ for e in events if isinstance(e, TaskSucceeded | TaskFailed)] == [
        "TaskSucceeded"
    ]
    assert [e.attempt for e in events if isinstance(e, TaskStarted)] == [1]


TALKING = Script.model_validate(
    {
        "tasks": [
            {
                "marker": "[[task:talk]]",
                "turns": [
                    {
                        "text": "Looking first.",
                        "tools": [
                            {
                                "name": "Bash",
                                "input": {"command": "echo one", "description": "look"},
                            }
                        ],
                    },
                    # A pause while the first turn is in the transcript: the mirror copies it.
                    {"latency_s": 3, "text": "Done."},
                ],
            }
        ]
    }
)


class _MirrorFails:
    """The transcript store, except that every append fails, as a store failing over does."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append(self, key: Any, entries: Any) -> None:
        self.failures += 1
        raise EventStoreError("cannot append to CC_SESSIONS: TimeoutError()")


async def test_a_transcript_mirror_that_fails_mid_attempt_is_the_attempts_recorded_failure(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    # The mirror runs in the attempt's task group, so its failure arrives wrapped in one.
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    await driver.submit("mirror", "talk", "[[task:talk]] go")
    async with open_scripted_model(TALKING) as model:
        config = WorkerConfig(
            worker_id="w-mirror", workspace_root=tmp_path / "ws", ack_wait_s=ACK_WAIT_S,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )  # fmt: skip
        worker = Worker(config, log, client)
        mirror = _MirrorFails(worker._sessions)
        worker._sessions = mirror
        ended = await _serve_until_finished(worker, log, "talk")
    assert mirror.failures >= 1
    assert isinstance(ended, TaskFailed)
    assert (ended.attempt, ended.failure_class, ended.retryable) == (1, "infrastructure", True)
    assert "CC_SESSIONS" in ended.reason
