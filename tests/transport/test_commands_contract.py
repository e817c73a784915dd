"""One contract, two command streams: the in-memory one and JetStream's ``CC_COMMANDS``
with the driver's durable consumer.

What the driver relies on: a command is acknowledged only once its outcome is recorded,
given back (nak) to be delivered again, delivered again when left unacknowledged past the
ack wait (a driver died holding it), and quarantined for good when it cannot be decoded or
carried out. Publishing is idempotent per command id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import nats.js.errors
import pytest

from claudecluster.actors.worker import WORKER_COMMAND_SUBJECTS
from claudecluster.events import CancelRun, DrainWorker, SubmitRun, TaskSpec
from claudecluster.events.envelope import CommandEnvelope
from claudecluster.events.subjects import command_subject
from claudecluster.runtime.connection import open_nats
from claudecluster.transport.commands import (
    CommandBus,
    CommandFeed,
    CommandInbox,
    JetStreamCommandBus,
    JetStreamCommandFeed,
    JetStreamCommandInbox,
    MemoryCommands,
)
from claudecluster.transport.topology import COMMANDS_STREAM, QUARANTINE_STREAM
from tests.conftest import fresh_jetstream_log

T0 = datetime(2026, 3, 1, tzinfo=UTC)
_FETCH_S = 10.0
_EMPTY_S = 0.3
_ACK_WAIT_S = 1.0


@dataclass
class Harness:
    bus: CommandBus
    inbox: CommandInbox
    inject_raw: Callable[[str, bytes], Awaitable[None]]
    quarantined: Callable[[], Awaitable[list[str]]]


@pytest.fixture(params=["memory", "jetstream"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if kind == "memory":
        memory = MemoryCommands(ack_wait_s=_ACK_WAIT_S)

        async def inject_memory(subject: str, data: bytes) -> None:
            memory.inject_raw(subject, data)

        async def quarantined_memory() -> list[str]:
            return [q.reason for q in memory.quarantined]

        yield Harness(memory, memory, inject_memory, quarantined_memory)
        return
    nats_url: str = request.getfixturevalue("nats_url")
    async with fresh_jetstream_log(nats_url), open_nats(nats_url, name="commands-test") as client:
        js = client.jetstream()

        async def inject_nats(subject: str, data: bytes) -> None:
            await js.publish(subject, data, stream=COMMANDS_STREAM)

        async def quarantined_nats() -> list[str]:
            try:
                last = await js.get_last_msg(QUARANTINE_STREAM, "cc.quarantine.cmd")
            except nats.js.errors.NotFoundError:
                return []
            return [(last.headers or {}).get("Cc-Reason", "")]

        yield Harness(
            JetStreamCommandBus(js),
            JetStreamCommandInbox(js, ack_wait_s=_ACK_WAIT_S),
            inject_nats,
            quarantined_nats,
        )


def cancel(run_id: str) -> CancelRun:
    return CancelRun(run_id=run_id, reason="enough")


@pytest.mark.anyio
async def test_commands_arrive_in_order_and_once_acknowledged_are_gone(
    harness: Harness,
) -> None:
    first = await harness.bus.publish(cancel("r1"), command_id="c1", now=T0)
    second = await harness.bus.publish(cancel("r2"), command_id="c2", now=T0)
    assert second > first
    inbound = await harness.inbox.fetch(16, wait_s=_FETCH_S)
    assert [c.envelope.id for c in inbound] == ["c1", "c2"]
    assert [c.delivered for c in inbound] == [1, 1]
    assert inbound[0].envelope.payload == cancel("r1")
    for command in inbound:
        await command.ack()
    assert await harness.inbox.fetch(16, wait_s=_EMPTY_S) == []


@pytest.mark.anyio
async def test_a_command_is_stored_once_per_id(harness: Harness) -> None:
    seq = await harness.bus.publish(cancel("r1"), command_id="c1", now=T0)
    assert await harness.bus.publish(cancel("r1"), command_id="c1", now=T0) == seq
    inbound = await harness.inbox.fetch(16, wait_s=_FETCH_S)
    assert [c.envelope.id for c in inbound] == ["c1"]
    await inbound[0].ack()
    assert await harness.inbox.fetch(16, wait_s=_EMPTY_S) == []


@pytest.mark.anyio
async def test_a_batch_is_at_most_the_size_asked(harness: Harness) -> None:
    for n in range(3):
        await harness.bus.publish(cancel(f"r{n}"), command_id=f"c{n}", now=T0)
    first = await harness.inbox.fetch(2, wait_s=_FETCH_S)
    assert [c.envelope.id for c in first] == ["c0", "c1"]
    rest = await harness.inbox.fetch(2, wait_s=_FETCH_S)
    assert [c.envelope.id for c in rest] == ["c2"]
    for command in first + rest:
        await command.ack()


@pytest.mark.anyio
async def test_a_nak_delivers_the_command_again(harness: Harness) -> None:
    await harness.bus.publish(cancel("r1"), command_id="c1", now=T0)
    (first,) = await harness.inbox.fetch(16, wait_s=_FETCH_S)
    await first.nak()
    (again,) = await harness.inbox.fetch(16, wait_s=_FETCH_S)
    assert again.envelope.id == "c1"
    assert again.delivered == 2
    await again.ack()


@pytest.mark.anyio
async def test_a_command_left_unacknowledged_comes_back_after_the_ack_wait(
    harness: Harness,
) -> None:
    """The driver that fetched it died before recording its outcome: another gets it."""
    await harness.bus.publish(cancel("r1"), command_id="c1", now=T0)
    (first,) = await harness.inbox.fetch(16, wait_s=_FETCH_S)
    (again,) = await harness.inbox.fetch(16, wait_s=_FETCH_S)
    assert again.envelope.id == first.envelope.id
    assert again.delivered == 2
    await again.ack()


@pytest.mark.anyio
async def test_a_terminated_command_is_quarantined_and_never_delivered_again(
    harness: Harness,
) -> None:
    await harness.bus.publish(cancel("r1"), command_id="c1", now=T0)
    (first,) = await harness.inbox.fetch(16, wait_s=_FETCH_S)
    await first.term("the core failed on it")
    assert await harness.quarantined() == ["the core failed on it"]
    assert await harness.inbox.fetch(16, wait_s=_ACK_WAIT_S * 2) == []


@pytest.mark.anyio
async def test_a_command_that_does_not_decode_is_quarantined_not_handed_out(
    harness: Harness,
) -> None:
    await harness.inject_raw(command_subject(cancel("x")), b"{not a command")
    await harness.bus.publish(cancel("r1"), command_id="c1", now=T0)
    inbound = await harness.inbox.fetch(16, wait_s=_FETCH_S)
    if not inbound:  # one fetch may end on the broken one
        inbound = await harness.inbox.fetch(16, wait_s=_FETCH_S)
    assert [c.envelope.id for c in inbound] == ["c1"]
    await inbound[0].ack()
    reasons = await harness.quarantined()
    assert len(reasons) == 1
    assert reasons[0]


@pytest.fixture
async def feed_and_bus(
    kind: str, harness: Harness, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[CommandFeed, CommandBus]]:
    if isinstance(harness.bus, MemoryCommands):
        yield harness.bus, harness.bus
        return
    nats_url: str = request.getfixturevalue("nats_url")
    async with open_nats(nats_url, name="feed-test") as client:
        yield JetStreamCommandFeed(client), harness.bus


async def _first_ids(commands: AsyncIterator[CommandEnvelope], count: int) -> list[str]:
    """The ids of the first ``count`` commands a listener hears, waiting at most _FETCH_S."""
    heard: list[str] = []
    with anyio.fail_after(_FETCH_S):
        async for envelope in commands:
            heard.append(envelope.id)
            if len(heard) == count:
                break
    return heard


@pytest.mark.anyio
async def test_a_listener_hears_what_is_published_while_it_listens_and_skips_garbage(
    feed_and_bus: tuple[CommandFeed, CommandBus], harness: Harness
) -> None:
    feed, bus = feed_and_bus
    await bus.publish(cancel("before"), command_id="c0", now=T0)
    async with feed.listen() as commands:
        await harness.inject_raw(command_subject(cancel("x")), b"{not a command")
        await bus.publish(cancel("r1"), command_id="c1", now=T0)
        await bus.publish(cancel("r2"), command_id="c2", now=T0)
        heard = await _first_ids(commands, 2)
    assert heard == ["c1", "c2"]


@pytest.mark.anyio
async def test_a_listener_for_some_subjects_is_sent_only_those(
    feed_and_bus: tuple[CommandFeed, CommandBus],
) -> None:
    feed, bus = feed_and_bus
    submit = SubmitRun(run_id="big", goal="g", repo="/r", plan=(
        TaskSpec(task_id="t", title="t", executor="shell", prompt="true"),
    ))  # fmt: skip
    async with feed.listen(WORKER_COMMAND_SUBJECTS) as commands:
        await bus.publish(submit, command_id="s1", now=T0)
        await bus.publish(DrainWorker(worker_id="w9"), command_id="d1", now=T0)
        await bus.publish(cancel("r1"), command_id="c1", now=T0)
        heard = await _first_ids(commands, 2)
    # The submission, published first, never reached the worker's feed.
    assert heard == ["d1", "c1"]
