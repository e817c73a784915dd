"""Nothing recorded can stop a reader, on a real nats-server with a real driver and workers.

Hostile bytes (``[[[[...``, nested past msgspec's depth limit) are published on the event,
command and work subjects, and a well-formed RunPlanned with a cycle is recorded. The
driver still starts (and starts again), the run with the cycle fails once naming it, the
poison messages are quarantined with their reasons and never redelivered, a front door's
status still reads the log, and another run completes on the same workers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from claudecluster.events import RunCompleted, RunFailed, RunPlanned, RunSubmitted, wrap_event
from claudecluster.events.model import Event
from claudecluster.runtime import driver as driver_runtime
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.driver import DRIVER_CONSUMER
from claudecluster.runtime.front_door import open_front_door
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.topology import COMMANDS_STREAM, QUARANTINE_STREAM, WORK_STREAM
from tests.runtime.test_driver import open_cluster, repo, running_driver, shell

__all__ = ["repo"]  # the fixture, shared with the driver tests

#: Nested deeper than msgspec decodes: it raised RecursionError out of every reader.
POISON = b"[" * 2_000
#: The same as an object (a typed decoder refuses an array at once, an object it descends).
DEEP_OBJECT = b'{"a":' * 2_000
_SETTLE_S = 30.0


async def _record(log: JetStreamEventLog, event: Event, event_id: str) -> None:
    await log.append(wrap_event(event, event_id=event_id, now=datetime.now(UTC)))


async def _quarantine_reason(js: JetStreamContext, origin: str) -> str:
    """The reason of the last quarantine record from ``origin``, waiting for it."""
    with anyio.fail_after(_SETTLE_S):
        while True:
            try:
                msg = await js.get_last_msg(QUARANTINE_STREAM, f"cc.quarantine.{origin}")
            except nats.js.errors.NotFoundError:  # not there yet: wait for it
                await anyio.sleep(0.1)
                continue
            return str((msg.headers or {}).get("Cc-Reason", ""))


async def _settled(js: JetStreamContext, stream: str, durable: str) -> None:
    """Wait until the consumer has nothing pending or unacknowledged (nothing redelivered)."""
    with anyio.fail_after(_SETTLE_S):
        while True:
            info = await js.consumer_info(stream, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await anyio.sleep(0.1)


async def test_poison_messages_and_a_cyclic_plan_stop_no_reader(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    log, client = world
    js = client.jetstream()
    # Recorded before any driver runs: each of these stopped the driver at every start.
    await js.publish("cc.evt.poison._.run.submitted", POISON)
    cyclic = (shell("a", "true", "b"), shell("b", "true", "a"))
    await _record(log, RunSubmitted(run_id="cyclic", goal="g", repo=str(repo), plan=()), "s-c")
    planned = RunPlanned(run_id="cyclic", tasks=cyclic, base_commit="0" * 40,
                         integration_branch="claudecluster/cyclic")  # fmt: skip
    await _record(log, planned, "p-c")
    async with open_cluster(world, repo, tmp_path, workers=1) as cluster:
        async with running_driver(cluster):
            events = await cluster.wait_end("cyclic")
            # On the command subjects (the driver's durable consumer, and every worker's
            # subscription) and on the pool's work queue, while everything runs.
            await js.publish("cc.cmd.poison.run.submit", POISON)
            await js.publish("cc.work.default", DEEP_OBJECT)
            assert "nested too deeply" in await _quarantine_reason(js, "cmd")
            assert "nested too deeply" in await _quarantine_reason(js, "work")
            await _settled(js, COMMANDS_STREAM, DRIVER_CONSUMER)
            await cluster.submit("good", [shell("t", "echo ok > ok.txt")])
            events = await cluster.wait_end("good")
        # A restarted driver replays all of it again, and records nothing twice.
        async with running_driver(cluster):
            # Recorded, not sent: a command right after a restart can wait out the ack wait
            # of the previous driver's pull request, which is not what this test is about.
            after = RunSubmitted(run_id="after", goal="g", repo=str(repo),
                                 plan=(shell("u", "echo ok > u.txt"),))  # fmt: skip
            await _record(log, after, "s-after")
            events = await cluster.wait_end("after")
        await _settled(js, WORK_STREAM, "worker__default")

    failed = [e for e in events if isinstance(e, RunFailed) and e.run_id == "cyclic"]
    assert len(failed) == 1
    assert "cycle" in failed[0].reason
    assert "a -> b -> a" in failed[0].reason
    completed = {e.run_id for e in events if isinstance(e, RunCompleted)}
    assert completed == {"good", "after"}
    (record,) = await log.quarantined()
    assert record.origin_subject == "cc.evt.poison._.run.submitted"
    assert "nested too deeply" in record.reason
    assert record.data == POISON

    # A front door (what status, the gateway and the MCP server read) reads past all of it.
    connection = Connection(cluster_url(client), client, log, embedded=False)
    async with open_front_door(connection, answer_timeout_s=5) as door:
        states = {run.run_id: run.state.value for run in door.runs()}
    assert states == {"cyclic": "failed", "good": "completed", "after": "completed"}


def cluster_url(client: Any) -> str:
    """The URL the test's client is connected to."""
    server = client.connected_url
    return f"nats://{server.hostname}:{server.port}"


async def test_a_planner_that_blows_up_fails_its_run_once_and_a_restart_does_not_ask_again(
    world: tuple[JetStreamEventLog, Any],
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    class Exploding:
        async def tasks(self, submitted: Any, *_: object) -> list[Any]:
            calls.append(submitted.run_id)
            raise MemoryError("what str.format('{path:>4000000000}') raised")

    monkeypatch.setattr(driver_runtime, "planner_for", lambda *_, **__: Exploding())
    async with open_cluster(world, repo, tmp_path, workers=1) as cluster:
        async with running_driver(cluster):
            await cluster.submit("boom", [shell("t", "true")])
            await cluster.wait_end("boom")
        async with running_driver(cluster):  # Resume: the run is over, nothing is planned
            await _record(
                world[0],
                RunSubmitted(run_id="next", goal="g", repo=str(repo), plan=()),
                "s-next",
            )
            events = await cluster.wait_end("next")
    (failed,) = [e for e in events if isinstance(e, RunFailed) and e.run_id == "boom"]
    assert "planning failed: MemoryError" in failed.reason
    assert calls == ["boom", "next"]
