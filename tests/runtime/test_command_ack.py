"""No command lost between its acknowledgement and its record, none applied twice.

The driver acknowledges a command only once its outcome is recorded. Here it dies (its
task group is cancelled while the append is stuck) at the two points that matter:
before the outcome is stored, and after it is stored but before the acknowledgement.
The command is delivered again to the next driver: in the first case it records the
outcome; in the second it finds the outcome already in the log (its causation id names
the command) and only acknowledges it. Either way the run is submitted exactly once, and
nothing refuses it as "already exists".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from claudecluster.actors.driver import DriverConfig
from claudecluster.events import CommandRejected, RunPlanned, RunSubmitted, SubmitRun, TaskSpec
from claudecluster.events.envelope import EventEnvelope
from claudecluster.events.model import Event
from claudecluster.runtime.driver import DRIVER_CONSUMER, Driver, DriverOptions
from claudecluster.transport.base import AppendResult, read_all
from claudecluster.transport.commands import publish_command
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.topology import COMMANDS_STREAM
from tests.support import ForwardingLog, make_repo, wait_for_events

pytestmark = pytest.mark.anyio

#: the consumer's ack wait: the command comes back this long after the driver died
ACK_WAIT_S = 1.0
WITHIN_S = 60.0


class _DyingLog(ForwardingLog):
    """An event log whose append of RunSubmitted never returns: the driver "dies" there,
    before (``store=False``) or after (``store=True``) the event is stored."""

    def __init__(self, inner: JetStreamEventLog, *, store: bool) -> None:
        super().__init__(inner)
        self._store = store
        self.reached = anyio.Event()

    async def append(
        self, envelope: EventEnvelope, *, expected_last: int | None = None
    ) -> AppendResult:
        if isinstance(envelope.payload, RunSubmitted):
            if self._store:
                await self.inner.append(envelope, expected_last=expected_last)
            self.reached.set()
            await anyio.sleep_forever()
        return await self.inner.append(envelope, expected_last=expected_last)


@asynccontextmanager
async def _driver(log: Any, js: Any, tmp_path: Path) -> AsyncIterator[Driver]:
    options = DriverOptions(
        config=DriverConfig(lost_after_s=30), work_dir=tmp_path / "driver", tick_s=0.1,
        command_ack_wait_s=ACK_WAIT_S,
    )  # fmt: skip
    driver = Driver(log, js, options)
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        yield driver
        group.cancel_scope.cancel()


async def _wait(log: JetStreamEventLog, check: Callable[[list[Event]], bool]) -> list[Event]:
    return await wait_for_events(log, check, limit_s=WITHIN_S)


async def _acknowledged(js: Any) -> Any:
    """The driver consumer's state once nothing is pending or unacknowledged."""
    with anyio.fail_after(WITHIN_S):
        while True:
            info = await js.consumer_info(COMMANDS_STREAM, DRIVER_CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return info
            await anyio.sleep(0.1)


@pytest.mark.parametrize("stored", [False, True], ids=["before-the-record", "after-the-record"])
async def test_a_command_is_applied_exactly_once_across_a_driver_death(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path, stored: bool
) -> None:
    log, client = world
    js = client.jetstream()
    repo = make_repo(tmp_path / "repo", {"README.md": "x\n"})
    command = SubmitRun(
        run_id="once", goal="test", repo=str(repo),
        plan=(TaskSpec(task_id="a", title="a", prompt="true", executor="shell"),),
    )  # fmt: skip
    dying = _DyingLog(log, store=stored)
    async with _driver(dying, js, tmp_path):
        await publish_command(js, command, command_id="submit-once", now=datetime.now(UTC))
        with anyio.fail_after(WITHIN_S):
            await dying.reached.wait()
    # The first driver is gone, its command unacknowledged; the next one gets it again.
    async with _driver(log, js, tmp_path):
        events = await _wait(log, lambda es: any(isinstance(e, RunPlanned) for e in es))
        info = await _acknowledged(js)
    submitted = [e for e in events if isinstance(e, RunSubmitted)]
    assert len(submitted) == 1
    assert not [e for e in events if isinstance(e, CommandRejected)], events
    assert info.delivered.consumer_seq >= 2  # it was delivered again, and acknowledged
    outcome = next(s for s in await read_all(log) if isinstance(s.envelope.payload, RunSubmitted))
    assert outcome.envelope.causation_id == "submit-once"
