"""One contract, two work queues: the in-memory one and the JetStream one.

Both run on asyncio (nats-py has no trio support); the JetStream queue against a real
nats-server on fresh streams.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import nats.js.errors
import pytest

from claudecluster.events import TaskSpec
from claudecluster.events.work import WorkItem, work_subject
from claudecluster.runtime.connection import open_nats
from claudecluster.transport.topology import QUARANTINE_STREAM, WORK_STREAM
from claudecluster.transport.work_queue import JetStreamWorkQueue, MemoryWorkQueue, WorkQueue
from tests.conftest import fresh_jetstream_log

# Generous bounds for a busy machine: a fetch returns as soon as an item is there.
_FETCH_S = 10.0
_EMPTY_S = 0.3
_ACK_WAIT_S = 1.0


@dataclass
class Harness:
    """The queue under test, a raw publisher, and what it quarantined."""

    queue: WorkQueue
    inject_raw: Callable[[str, bytes], Awaitable[None]]
    quarantined: Callable[[], Awaitable[list[bytes]]]


@pytest.fixture(params=["memory", "jetstream"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if kind == "memory":
        memory = MemoryWorkQueue(ack_wait_s=_ACK_WAIT_S)

        async def inject_memory(pool: str, data: bytes) -> None:
            memory.inject_raw(pool, data)

        async def quarantined_memory() -> list[bytes]:
            return [q.data for q in memory.quarantined]

        yield Harness(memory, inject_memory, quarantined_memory)
        return
    nats_url: str = request.getfixturevalue("nats_url")
    async with fresh_jetstream_log(nats_url), open_nats(nats_url, name="queue-test") as client:
        js = client.jetstream()
        queue = JetStreamWorkQueue(js, ack_wait_s=_ACK_WAIT_S)

        async def inject_nats(pool: str, data: bytes) -> None:
            await js.publish(work_subject(pool), data, stream=WORK_STREAM)

        async def quarantined_nats() -> list[bytes]:
            try:
                last = await js.get_last_msg(QUARANTINE_STREAM, "cc.quarantine.work")
            except nats.js.errors.NotFoundError:
                return []
            return [last.data or b""]

        try:
            yield Harness(queue, inject_nats, quarantined_nats)
        finally:
            await queue.close()


def item(task_id: str = "t1", *, attempt: int = 1, pool: str = "default") -> WorkItem:
    spec = TaskSpec(task_id=task_id, title="A task", prompt="Do it.")
    return WorkItem(run_id="run1", attempt=attempt, spec=spec, base_commit="0" * 40, pool=pool)


def pool_name() -> str:
    return f"p{uuid.uuid4().hex[:8]}"


@pytest.mark.anyio
async def test_a_published_item_is_delivered_once_and_gone_when_acknowledged(
    harness: Harness,
) -> None:
    pool = pool_name()
    assert await harness.queue.publish(item(pool=pool))
    delivery = await harness.queue.fetch(pool, wait_s=_FETCH_S)
    assert delivery is not None
    assert delivery.item == item(pool=pool)
    assert delivery.delivered == 1
    await delivery.ack()
    assert await harness.queue.fetch(pool, wait_s=_EMPTY_S) is None


@pytest.mark.anyio
async def test_an_empty_pool_fetches_nothing(harness: Harness) -> None:
    assert await harness.queue.fetch(pool_name(), wait_s=_EMPTY_S) is None


@pytest.mark.anyio
async def test_the_same_attempt_is_queued_once(harness: Harness) -> None:
    pool = pool_name()
    assert await harness.queue.publish(item(pool=pool))
    assert not await harness.queue.publish(item(pool=pool))
    assert await harness.queue.publish(item(attempt=2, pool=pool))
    first = await harness.queue.fetch(pool, wait_s=_FETCH_S)
    second = await harness.queue.fetch(pool, wait_s=_FETCH_S)
    assert first is not None
    assert second is not None
    assert (first.item.attempt, second.item.attempt) == (1, 2)
    await first.ack()
    await second.ack()
    assert await harness.queue.fetch(pool, wait_s=_EMPTY_S) is None


@pytest.mark.anyio
async def test_items_are_delivered_in_order_within_a_pool(harness: Harness) -> None:
    pool = pool_name()
    for task_id in ("a", "b", "c"):
        await harness.queue.publish(item(task_id, pool=pool))
    seen = []
    for _ in range(3):
        delivery = await harness.queue.fetch(pool, wait_s=_FETCH_S)
        assert delivery is not None
        seen.append(delivery.item.task_id)
        await delivery.ack()
    assert seen == ["a", "b", "c"]


@pytest.mark.anyio
async def test_pools_do_not_see_each_others_items(harness: Harness) -> None:
    mine, other = pool_name(), pool_name()
    await harness.queue.publish(item(pool=other))
    assert await harness.queue.fetch(mine, wait_s=_EMPTY_S) is None
    delivery = await harness.queue.fetch(other, wait_s=_FETCH_S)
    assert delivery is not None
    assert delivery.item.pool == other
    await delivery.ack()


@pytest.mark.anyio
async def test_a_nak_gives_the_item_back_for_another_delivery(harness: Harness) -> None:
    pool = pool_name()
    await harness.queue.publish(item(pool=pool))
    first = await harness.queue.fetch(pool, wait_s=_FETCH_S)
    assert first is not None
    await first.nak()
    again = await harness.queue.fetch(pool, wait_s=_FETCH_S)
    assert again is not None
    assert again.item == first.item
    assert again.delivered == 2
    await again.ack()


@pytest.mark.anyio
async def test_an_item_left_unacknowledged_is_delivered_again_after_the_ack_wait(
    harness: Harness,
) -> None:
    pool = pool_name()
    await harness.queue.publish(item(pool=pool))
    first = await harness.queue.fetch(pool, wait_s=_FETCH_S)
    assert first is not None
    # The worker holding it vanished: neither an ack nor an in-progress comes.
    again = await harness.queue.fetch(pool, wait_s=_FETCH_S)
    assert again is not None
    assert again.item == first.item
    assert again.delivered == 2
    await again.ack()


@pytest.mark.anyio
async def test_an_item_that_does_not_decode_is_quarantined_and_skipped(
    harness: Harness,
) -> None:
    pool = pool_name()
    await harness.inject_raw(pool, b"{not a work item")
    await harness.queue.publish(item(pool=pool))
    delivery = await harness.queue.fetch(pool, wait_s=_FETCH_S)
    # The broken message is taken out of the queue on the way (one fetch may end on it).
    if delivery is None:
        delivery = await harness.queue.fetch(pool, wait_s=_FETCH_S)
    assert delivery is not None
    assert delivery.item == item(pool=pool)
    await delivery.ack()
    assert await harness.quarantined() == [b"{not a work item"]
    assert await harness.queue.fetch(pool, wait_s=_EMPTY_S) is None
