"""A read of one run receives that run's events only: the server filters the log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import pytest

from claudecluster.events import (
    RunFailed,
    RunPlanned,
    RunRetried,
    RunSubmitted,
    StoredEvent,
    TaskProgress,
    TaskQueued,
    TaskSpec,
    WorkerJoined,
)
from claudecluster.events.model import Event
from claudecluster.events.subjects import ALL_EVENTS
from claudecluster.projections import ClusterView, replay
from claudecluster.projections.progress import run_progress
from claudecluster.projections.snapshots import decode_view_snapshot
from claudecluster.runtime.reads import (
    keep_snapshotting,
    open_view_from_snapshot,
    read_run,
    run_of_ref,
    runs_from_snapshot,
    view_from_snapshot,
    write_view_snapshot,
)
from claudecluster.transport.base import EventLog, read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.snapshots import MemorySnapshotStore
from tests.support import EnvelopeFactory, ForwardingLog

make = EnvelopeFactory("reads")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the JetStream log: nats-py runs on asyncio only


class CountingLog(ForwardingLog):
    """An event log that counts the events its readers were handed."""

    def __init__(self, inner: EventLog) -> None:
        super().__init__(inner)
        self.delivered = 0

    def open_reader(
        self, *, from_seq: int = 1, subjects: str = ALL_EVENTS, follow: bool = False
    ) -> AbstractAsyncContextManager[AsyncIterator[StoredEvent]]:
        @asynccontextmanager
        async def counted() -> AsyncIterator[AsyncIterator[StoredEvent]]:
            async with self.inner.open_reader(
                from_seq=from_seq, subjects=subjects, follow=follow
            ) as events:

                async def each() -> AsyncIterator[StoredEvent]:
                    async for event in events:
                        self.delivered += 1
                        yield event

                yield each()

        return counted()


async def a_run(log: EventLog, run_id: str, progress: int) -> int:
    """A planned run with one task and ``progress`` progress events; how many events."""
    spec = TaskSpec(task_id="a", title="a", prompt="p")
    events: list[Event] = [
        RunSubmitted(run_id=run_id, goal="g", repo="/r"),
        RunPlanned(run_id=run_id, tasks=(spec,), base_commit="b", integration_branch="b"),
        TaskQueued(run_id=run_id, task_id="a"),
        *(TaskProgress(run_id=run_id, task_id="a", attempt=1, kind="text", text=f"{n}")
          for n in range(progress)),
    ]  # fmt: skip
    for event in events:
        await log.append(make(event))
    return len(events)


async def test_a_run_read_gets_only_that_runs_events(jetstream_log: JetStreamEventLog) -> None:
    counting = CountingLog(jetstream_log)
    await a_run(counting, "busy", 300)
    mine = await a_run(counting, "small", 2)
    await a_run(counting, "later", 300)
    for n in range(50):
        await counting.append(make(WorkerJoined(worker_id=f"w{n}")))
    counting.delivered = 0
    stored = await read_run(counting, "small")
    assert counting.delivered == mine == len(stored)
    assert {getattr(s.envelope.payload, "run_id", None) for s in stored} == {"small"}


async def test_a_reference_to_a_run_or_its_task_reads_the_run_a_bare_task_id_does_not(
    jetstream_log: JetStreamEventLog,
) -> None:
    counting = CountingLog(jetstream_log)
    await a_run(counting, "r1", 100)
    mine = await a_run(counting, "r2", 1)
    for ref in ("r2", "r2/a"):
        counting.delivered = 0
        found = await run_of_ref(counting, ref)
        assert found is not None
        run_id, view, _ = found
        assert (run_id, sorted(view.runs)) == ("r2", ["r2"])
        assert counting.delivered == mine
    assert await run_of_ref(counting, "a") is None  # a task id: the caller looks wider
    assert await run_of_ref(counting, "no such run!") is None  # not even an id


async def test_every_run_is_read_from_a_snapshot_and_the_tail_only(
    jetstream_log: JetStreamEventLog,
) -> None:
    counting = CountingLog(jetstream_log)
    await a_run(counting, "old", 400)
    stored = await read_all(jetstream_log)
    store = MemorySnapshotStore()
    await write_view_snapshot(store, replay(stored), stored[-1].envelope.id)
    tail = await a_run(counting, "new", 5)
    counting.delivered = 0
    view = await view_from_snapshot(counting, store)
    assert view == replay(await read_all(jetstream_log))
    assert counting.delivered == tail + 1  # the snapshot's last event, checked, and the tail


async def test_a_snapshot_the_log_does_not_bear_out_is_dropped_for_a_full_read(
    jetstream_log: JetStreamEventLog,
) -> None:
    counting = CountingLog(jetstream_log)
    total = await a_run(counting, "r", 20)
    stored = await read_all(jetstream_log)
    store = MemorySnapshotStore()
    # A snapshot of another log of the same name (recreated since): same sequence, other id.
    await write_view_snapshot(store, replay(stored[:10]), "an-event-of-another-log")
    counting.delivered = 0
    view = await view_from_snapshot(counting, store)
    assert view == replay(stored)
    assert counting.delivered == 1 + total  # the check, then every event from the start


#: Far longer than a read of a few dozen events takes on a loaded machine; a reader that
#: waits for an event nobody will write never gets there.
FOLLOWING_READ_WITHIN_S = 20


async def test_a_following_reader_of_a_log_shorter_than_its_snapshot_starts_from_the_start(
    jetstream_log: JetStreamEventLog,
) -> None:
    # The log was recreated since the snapshot (a fresh cluster on the same server keeps
    # cc_snapshots): the snapshot's sequence is past the log's end. A front door opening
    # on it once waited for that sequence to be written, and never became ready.
    total = await a_run(jetstream_log, "r", 3)
    store = MemorySnapshotStore()
    await write_view_snapshot(store, ClusterView(last_seq=total + 40), "an-event-of-another-log")
    with anyio.fail_after(FOLLOWING_READ_WITHIN_S):
        async with open_view_from_snapshot(jetstream_log, store, follow=True) as (view, events):
            assert view == ClusterView()
            seqs = [(await anext(aiter(events))).seq for _ in range(total)]
            await a_run(jetstream_log, "s", 0)
            appended = await anext(aiter(events))
    assert seqs == list(range(1, total + 1))
    assert appended.seq == total + 1  # and it goes on following the log


async def test_a_following_reader_of_a_matching_snapshot_gets_the_tail_then_what_comes(
    jetstream_log: JetStreamEventLog,
) -> None:
    await a_run(jetstream_log, "r", 10)
    stored = await read_all(jetstream_log)
    store = MemorySnapshotStore()
    await write_view_snapshot(store, replay(stored[:8]), stored[7].envelope.id)
    with anyio.fail_after(FOLLOWING_READ_WITHIN_S):
        async with open_view_from_snapshot(jetstream_log, store, follow=True) as (view, events):
            assert view == replay(stored[:8])
            tail = [(await anext(aiter(events))).seq for _ in range(len(stored) - 8)]
            await a_run(jetstream_log, "s", 0)
            appended = await anext(aiter(events))
    assert tail == [s.seq for s in stored[8:]]
    assert appended.seq == stored[-1].seq + 1


async def test_snapshots_are_written_when_enough_events_came_and_not_otherwise() -> None:
    store = MemorySnapshotStore()
    views = iter([(ClusterView(last_seq=seq), f"e{seq}") for seq in (5, 1500, 1600, 2600)])
    ticks = 0

    class EnoughError(Exception):
        """The test has seen what it needs (the loop otherwise runs until cancelled)."""

    async def tick(_: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks > 4:
            raise EnoughError

    with pytest.raises(EnoughError):
        await keep_snapshotting(lambda: next(views), store, every_s=1, min_events=1000, wait=tick)
    # At 1500 and 2600 (5 and 1600 were too soon after): the view and the runs index each.
    assert store.writes == 4
    data = await store.get("cluster_view")
    assert data is not None
    restored, _ = decode_view_snapshot(data)
    assert restored is not None
    assert (restored.view.last_seq, restored.last_id) == (2600, "e2600")


async def test_every_run_comes_from_the_runs_index_finished_ones_as_rows_and_the_tail(
    jetstream_log: JetStreamEventLog,
) -> None:
    counting = CountingLog(jetstream_log)
    for run_id in ("done", "retried"):
        await a_run(counting, run_id, 30)
        await counting.append(make(RunFailed(run_id=run_id, reason="r")))
    await a_run(counting, "open", 3)
    stored = await read_all(jetstream_log)
    store = MemorySnapshotStore()
    await write_view_snapshot(store, replay(stored), stored[-1].envelope.id)
    # The tail: a new run, a progress of the open one, and a finished run opened again.
    tail = await a_run(counting, "new", 2)
    await counting.append(
        make(TaskProgress(run_id="open", task_id="a", attempt=1, kind="text", text="x"))
    )
    await counting.append(make(RunRetried(run_id="retried", task_ids=("a",), head_commit="b")))
    counting.delivered = 0
    listing = await runs_from_snapshot(counting, store)
    view, rows = listing.view, listing.rows
    full = replay(await read_all(jetstream_log))
    # The finished run is a row, without its tasks; the rest is the full fold's.
    assert set(rows) == {"done"}
    assert "done/a" not in view.tasks
    ended = full.runs["done"].finished_at
    assert ended is not None
    row, progress = rows["done"], run_progress(full, "done", ended)
    assert progress is not None
    assert row.run == full.runs["done"]
    assert (row.total, row.finished, row.elapsed_s) == (
        progress.total,
        progress.finished,
        progress.elapsed_s,
    )
    assert set(view.runs) == {"open", "new", "retried"}
    for run_id in ("open", "new", "retried"):
        assert view.runs[run_id] == full.runs[run_id]
        assert view.tasks_of(run_id) == full.tasks_of(run_id)
    # The index's last event, the tail, and the reopened run's own events read again.
    assert counting.delivered == 1 + tail + 2 + 30 + 5


async def test_without_a_runs_index_every_run_comes_from_the_view(
    jetstream_log: JetStreamEventLog,
) -> None:
    await a_run(jetstream_log, "r", 3)
    await jetstream_log.append(make(RunFailed(run_id="r", reason="r")))
    listing = await runs_from_snapshot(jetstream_log, MemorySnapshotStore())
    assert listing.rows == {}
    assert listing.older == 0
    assert listing.view == replay(await read_all(jetstream_log))


async def test_a_listing_of_the_newest_finished_runs_holds_those_in_order_of_submission(
    jetstream_log: JetStreamEventLog,
) -> None:
    # Submitted in an order that is not the ids' order: the rows follow submission.
    submitted = ["z", "b", "y", "a", "x", "c"]
    for run_id in submitted:
        await a_run(jetstream_log, run_id, 1)
        await jetstream_log.append(make(RunFailed(run_id=run_id, reason="r")))
    await a_run(jetstream_log, "open", 1)
    stored = await read_all(jetstream_log)
    full = replay(stored)
    store = MemorySnapshotStore()
    await write_view_snapshot(store, full, stored[-1].envelope.id)
    newest = await runs_from_snapshot(jetstream_log, store, newest=2)
    assert list(newest.rows) == ["x", "c"]
    assert newest.older == 4
    assert newest.rows["c"].run == full.runs["c"]
    assert set(newest.view.runs) == {"open"}
    every = await runs_from_snapshot(jetstream_log, store)
    assert list(every.rows) == submitted
    assert every.older == 0
    nothing = await runs_from_snapshot(jetstream_log, store, newest=0)
    assert (nothing.rows, nothing.older) == ({}, 6)
    more = await runs_from_snapshot(jetstream_log, store, newest=100)
    assert (list(more.rows), more.older) == (submitted, 0)
