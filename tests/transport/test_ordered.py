"""The ordered reader's hand-over from nats-py to the reader, against a real nats-server.

A buffer of a few messages makes delivery wait for the reader most of the time, which is
the path a replay of a big log takes once the reader falls behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import nats
from nats.aio.client import Client

from claudecluster.events import TaskQueued
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.ordered import open_ordered
from tests.support import EnvelopeFactory

make = EnvelopeFactory()
_EVENTS = 40


async def _fill(log: JetStreamEventLog) -> None:
    for index in range(_EVENTS):
        await log.append(make(TaskQueued(run_id="r1", task_id=f"t{index}")))


@asynccontextmanager
async def _client(nats_url: str, errors: list[Exception]) -> AsyncIterator[Client]:
    """A client whose asynchronous errors (a failed delivery, say) land in ``errors``."""

    async def record(exc: Exception) -> None:
        errors.append(exc)

    client = await nats.connect(nats_url, error_cb=record)
    try:
        yield client
    finally:
        await client.close()


async def test_a_reader_behind_delivery_gets_every_message_once_and_in_order(
    jetstream_log: JetStreamEventLog, nats_url: str
) -> None:
    await _fill(jetstream_log)
    errors: list[Exception] = []
    async with _client(nats_url, errors) as client:
        with anyio.fail_after(10):
            async with open_ordered(client.jetstream(), "CC_EVENTS", "cc.evt.>", buffer=3) as got:
                seqs = [msg.metadata.sequence.stream async for msg in got]
    assert seqs == list(range(1, _EVENTS + 1))
    assert errors == []


async def test_a_reader_left_while_delivery_waits_for_room_ends_without_an_error(
    jetstream_log: JetStreamEventLog, nats_url: str
) -> None:
    await _fill(jetstream_log)
    errors: list[Exception] = []
    async with _client(nats_url, errors) as client:
        with anyio.fail_after(10):
            async with open_ordered(client.jetstream(), "CC_EVENTS", "cc.evt.>", buffer=2) as got:
                async for msg in got:
                    assert msg.metadata.sequence.stream == 1
                    break
            # A round trip: anything the abandoned delivery raised has been reported by now.
            await client.flush()
    assert errors == []
