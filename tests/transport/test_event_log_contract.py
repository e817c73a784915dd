"""One contract, two event logs: the in-memory one and the JetStream one.

The in-memory log runs on asyncio and trio (it is pure anyio); the JetStream log runs on
asyncio against a real nats-server (nats-py has no trio support).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from claudecluster.errors import ConcurrencyError
from claudecluster.events import (
    RunPlanned,
    TaskAssigned,
    TaskProgress,
    TaskQueued,
    WorkerHeartbeat,
    WorkerJoined,
    run_filter,
    task_filter,
)
from claudecluster.events.codec import encode
from claudecluster.runtime.connection import open_nats
from claudecluster.transport import EventLog, MemoryEventLog, read_all
from tests.conftest import fresh_jetstream_log
from tests.support import EnvelopeFactory

RawInjector = Callable[[str, bytes], Awaitable[None]]


@pytest.fixture(
    params=[
        pytest.param(("memory", "asyncio"), id="memory-asyncio"),
        pytest.param(("memory", "trio"), id="memory-trio"),
        pytest.param(("jetstream", "asyncio"), id="jetstream"),
    ]
)
def flavour(request: pytest.FixtureRequest) -> tuple[str, str]:
    kind, backend = request.param
    return kind, backend


@pytest.fixture
def anyio_backend(flavour: tuple[str, str]) -> str:
    return flavour[1]


@pytest.fixture
async def log_and_injector(
    flavour: tuple[str, str], request: pytest.FixtureRequest
) -> AsyncIterator[tuple[EventLog, RawInjector]]:
    """The log under test and a way to put raw bytes on it, as a foreign publisher could."""
    if flavour[0] == "memory":
        memory = MemoryEventLog()

        async def inject_memory(subject: str, data: bytes) -> None:
            memory.inject_raw(subject, data)

        yield memory, inject_memory
        return
    nats_url: str = request.getfixturevalue("nats_url")
    async with (
        fresh_jetstream_log(nats_url) as jetstream,
        open_nats(nats_url, name="foreign-publisher") as client,
    ):

        async def inject_nats(subject: str, data: bytes) -> None:
            await client.jetstream().publish(subject, data, stream="CC_EVENTS")

        yield jetstream, inject_nats


@pytest.fixture
def log(log_and_injector: tuple[EventLog, RawInjector]) -> EventLog:
    return log_and_injector[0]


@pytest.fixture
def inject(log_and_injector: tuple[EventLog, RawInjector]) -> RawInjector:
    return log_and_injector[1]


make = EnvelopeFactory()


async def test_appended_events_replay_in_order_with_their_subjects(log: EventLog) -> None:
    sent = [
        make(TaskQueued(run_id="r1", task_id="a")),
        make(WorkerJoined(worker_id="w1")),
        make(TaskQueued(run_id="r1", task_id="b")),
    ]
    seqs = [(await log.append(envelope)).seq for envelope in sent]
    assert seqs == sorted(seqs)
    stored = await read_all(log)
    assert [s.envelope for s in stored] == sent
    assert [s.seq for s in stored] == seqs
    assert stored[1].subject == "cc.evt._workers.w1.worker.joined"


async def test_the_same_event_appended_twice_is_stored_once(log: EventLog) -> None:
    envelope = make(TaskQueued(run_id="r1", task_id="a"))
    first = await log.append(envelope)
    again = await log.append(envelope)
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    assert len(await read_all(log)) == 1


async def test_a_retried_conditional_append_is_a_duplicate_not_a_conflict(log: EventLog) -> None:
    envelope = make(TaskQueued(run_id="r1", task_id="a"))
    first = await log.append(envelope, expected_last=0)
    again = await log.append(envelope, expected_last=0)
    assert again.duplicate
    assert again.seq == first.seq


async def test_a_conditional_append_on_a_stale_sequence_raises_a_concurrency_error(
    log: EventLog,
) -> None:
    queued = await log.append(make(TaskQueued(run_id="r1", task_id="a")), expected_last=0)
    await log.append(
        make(TaskAssigned(run_id="r1", task_id="a", attempt=1, worker_id="w1")),
        expected_last=queued.seq,
    )
    with pytest.raises(ConcurrencyError) as caught:
        await log.append(
            make(TaskAssigned(run_id="r1", task_id="a", attempt=1, worker_id="w2")),
            expected_last=queued.seq,
        )
    assert caught.value.subject == "cc.evt.r1.a.>"
    assert caught.value.expected == queued.seq
    assert caught.value.actual == queued.seq + 1
    assert len(await read_all(log)) == 2


async def test_other_scopes_do_not_disturb_a_conditional_append(log: EventLog) -> None:
    await log.append(make(TaskQueued(run_id="r1", task_id="a")), expected_last=0)
    await log.append(make(TaskQueued(run_id="r1", task_id="b")), expected_last=0)
    await log.append(make(WorkerHeartbeat(worker_id="w1")))
    result = await log.append(make(TaskQueued(run_id="r2", task_id="a")), expected_last=0)
    assert result.seq == 4


async def test_of_concurrent_conditional_appends_exactly_one_wins(log: EventLog) -> None:
    base = await log.append(make(TaskQueued(run_id="r1", task_id="a")), expected_last=0)
    outcomes: list[str] = []

    async def contender(worker: str) -> None:
        try:
            await log.append(
                make(TaskAssigned(run_id="r1", task_id="a", attempt=1, worker_id=worker)),
                expected_last=base.seq,
            )
        except ConcurrencyError:
            outcomes.append("lost")
        else:
            outcomes.append("won")

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(contender, f"w{index}")
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert await log.last_seq(task_filter("r1", "a")) == base.seq + 1


async def test_replay_starts_from_a_sequence_and_filters_by_subject(log: EventLog) -> None:
    for task in ("a", "b", "c"):
        await log.append(make(TaskQueued(run_id="r1", task_id=task)))
    await log.append(make(TaskQueued(run_id="r2", task_id="a")))
    assert [s.seq for s in await read_all(log, from_seq=2)] == [2, 3, 4]
    only_r2 = await read_all(log, subjects=run_filter("r2"))
    assert [s.envelope.payload for s in only_r2] == [TaskQueued(run_id="r2", task_id="a")]
    assert await read_all(log, from_seq=99) == []
    assert await read_all(log, subjects=run_filter("nothing")) == []


async def test_last_sequence_is_per_filter_and_zero_when_empty(log: EventLog) -> None:
    assert await log.last_seq() == 0
    await log.append(make(TaskQueued(run_id="r1", task_id="a")))
    await log.append(make(TaskQueued(run_id="r2", task_id="a")))
    assert await log.last_seq() == 2
    assert await log.last_seq(run_filter("r1")) == 1
    assert await log.last_seq(run_filter("r3")) == 0


async def test_a_malformed_message_is_quarantined_and_reading_goes_on(
    log: EventLog, inject: RawInjector
) -> None:
    await log.append(make(TaskQueued(run_id="r1", task_id="a")))
    await inject("cc.evt.r1.a.task.queued", b"{not json")
    await inject("cc.evt.r1.a.task.started", b'{"payload": {"type": "task.teleported"}}')
    await log.append(make(TaskQueued(run_id="r1", task_id="b")))
    stored = await read_all(log)
    assert [s.seq for s in stored] == [1, 4]
    # Reading again quarantines nothing twice.
    await read_all(log)
    records = await log.quarantined()
    assert [(r.origin_seq, r.origin_subject) for r in records] == [
        (2, "cc.evt.r1.a.task.queued"),
        (3, "cc.evt.r1.a.task.started"),
    ]
    assert records[0].data == b"{not json"
    assert "malformed" in records[0].reason
    assert "task.teleported" in records[1].reason


async def test_a_payload_on_a_subject_where_it_does_not_belong_is_quarantined(
    log: EventLog, inject: RawInjector
) -> None:
    # Permissions are per subject: a worker may publish task.progress, not run.planned. A
    # run.planned put on a progress subject must not count as the driver's plan.
    plan = RunPlanned(run_id="r1", tasks=(), base_commit="abc", integration_branch="b")
    await inject("cc.evt.r1.a.task.progress", encode(make(plan)))
    await log.append(make(TaskQueued(run_id="r1", task_id="a")))
    stored = await read_all(log)
    assert [s.seq for s in stored] == [2]
    records = await log.quarantined()
    assert [(r.origin_seq, r.origin_subject) for r in records] == [(1, "cc.evt.r1.a.task.progress")]
    assert "cc.evt.r1._.run.planned" in records[0].reason


async def test_a_following_reader_sees_new_events_as_they_are_appended(log: EventLog) -> None:
    await log.append(make(TaskQueued(run_id="r1", task_id="a")))
    seen: list[int] = []
    three_seen = anyio.Event()

    async def follow() -> None:
        async with log.open_reader(follow=True) as events:
            async for stored in events:
                seen.append(stored.seq)
                if len(seen) == 3:
                    three_seen.set()
                    return

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            await log.append(make(TaskQueued(run_id="r1", task_id="b")))
            await log.append(
                make(TaskProgress(run_id="r1", task_id="b", attempt=1, kind="text", text="hi"))
            )
            await three_seen.wait()
    assert seen == [1, 2, 3]


async def test_a_following_reader_gets_what_was_appended_while_it_held_an_event(
    log: EventLog,
) -> None:
    # The reader holds event 1 (its consumer busy) while two more are appended, and then
    # nothing more ever is: it must still hand out both, not wait for a next append.
    await log.append(make(TaskQueued(run_id="r1", task_id="a")))
    with anyio.fail_after(10):
        async with log.open_reader(follow=True) as events:
            reading = aiter(events)
            first = await anext(reading)
            await log.append(make(TaskQueued(run_id="r1", task_id="b")))
            await log.append(make(TaskQueued(run_id="r1", task_id="c")))
            rest = [await anext(reading), await anext(reading)]
    assert [first.seq, *(s.seq for s in rest)] == [1, 2, 3]


async def test_a_reader_left_early_releases_its_resources(log: EventLog) -> None:
    for task in ("a", "b", "c"):
        await log.append(make(TaskQueued(run_id="r1", task_id=task)))
    async with log.open_reader() as events:
        async for stored in events:
            assert stored.seq == 1
            break
    assert len(await read_all(log)) == 3
