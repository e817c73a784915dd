"""The fence against a real nats-server: once a later holder's DriverLeaseTaken is in the
log, no append of an earlier holder is stored, whether or not it carries a condition of
its own; the holder's own appends go through, past other writers."""

from __future__ import annotations

import pytest

from claudecluster.errors import ConcurrencyError, LeaseLostError
from claudecluster.events import DriverLeaseTaken, RunPlanned, TaskProgress, TaskQueued
from claudecluster.events.model import TaskSpec
from claudecluster.events.subjects import task_filter
from claudecluster.transport.base import read_all
from claudecluster.transport.fenced import FencedEventLog, take_fence
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.support import EnvelopeFactory

pytestmark = pytest.mark.anyio


def _lease(driver_id: str, epoch: int) -> DriverLeaseTaken:
    return DriverLeaseTaken(driver_id=driver_id, epoch=epoch)


def _queued(task_id: str = "t", attempt: int = 1) -> TaskQueued:
    return TaskQueued(run_id="r1", task_id=task_id, attempt=attempt, base_commit="a" * 40)


async def _holder(
    log: JetStreamEventLog, make: EnvelopeFactory, driver_id: str, epoch: int
) -> FencedEventLog:
    js = log._js
    fence = await take_fence(js, log, make(_lease(driver_id, epoch)))
    return FencedEventLog(log, js, fence)


async def test_the_earlier_holder_records_nothing_once_a_later_one_fenced(
    jetstream_log: JetStreamEventLog,
) -> None:
    make = EnvelopeFactory("fence")
    old = await _holder(jetstream_log, make, "old", 1)
    planned = RunPlanned(
        run_id="r1",
        tasks=(TaskSpec(task_id="t", title="t", prompt="p"),),
        base_commit="a" * 40,
        integration_branch="b",
    )
    await old.append(make(planned))
    queued = await old.append(make(_queued()), expected_last=0)
    lost: list[str] = []
    new = await _holder(jetstream_log, make, "new", 2)
    old_after = FencedEventLog(jetstream_log, jetstream_log._js, old.fence_seq)
    old_after._on_lost = lambda: lost.append("lost")
    before = await jetstream_log.last_seq()
    with pytest.raises(LeaseLostError):
        await old_after.append(
            make(
                RunPlanned(
                    run_id="r2", tasks=planned.tasks, base_commit="a" * 40, integration_branch="b"
                )
            )
        )
    with pytest.raises(LeaseLostError):
        # Conditional on its scope, which has not moved: the fence still refuses it.
        await old_after.append(make(_queued(attempt=2)), expected_last=queued.seq)
    with pytest.raises(LeaseLostError):
        await old_after.append(make(_queued(attempt=3)), expected_last=queued.seq)
    assert lost == ["lost"]
    assert await jetstream_log.last_seq() == before
    # The new holder records, conditionally and not.
    await new.append(make(_queued(attempt=2)), expected_last=queued.seq)
    events = [s.envelope.payload for s in await read_all(jetstream_log)]
    assert [type(e).__name__ for e in events] == [
        "DriverLeaseTaken", "RunPlanned", "TaskQueued", "DriverLeaseTaken", "TaskQueued",
    ]  # fmt: skip


async def test_two_takers_reading_the_same_fence_cannot_both_fence(
    jetstream_log: JetStreamEventLog,
) -> None:
    make = EnvelopeFactory("race")
    js = jetstream_log._js
    first = make(_lease("a", 1))
    await take_fence(js, jetstream_log, first)
    # A taker that read the fence before the first one's append (here: after it, with a
    # stale expectation made by hand) is refused by the server.
    await take_fence(js, jetstream_log, make(_lease("b", 2)))
    stale = FencedEventLog(jetstream_log, js, 1)
    with pytest.raises(LeaseLostError):
        await stale.append(
            make(RunPlanned(run_id="r1", tasks=(), base_commit="a" * 40, integration_branch="b"))
        )


async def test_a_holders_conditional_append_goes_through_other_writers(
    jetstream_log: JetStreamEventLog,
) -> None:
    make = EnvelopeFactory("busy")
    holder = await _holder(jetstream_log, make, "d", 1)
    first = await holder.append(make(_queued("t")), expected_last=0)
    # Workers write elsewhere in the meantime: the stream moves, the scope does not.
    for n in range(3):
        progress = TaskProgress(run_id="r1", task_id="other", attempt=1, kind="text", text=f"p{n}")
        await jetstream_log.append(make(progress))
    second = await holder.append(make(_queued("t", 2)), expected_last=first.seq)
    assert not second.duplicate
    assert await jetstream_log.last_seq(task_filter("r1", "t")) == second.seq
    # A retry of the same envelope (its answer lost) is found, not stored twice.
    again = make(_queued("t", 3))
    stored = await holder.append(again, expected_last=second.seq)
    await jetstream_log.append(
        make(TaskProgress(run_id="r1", task_id="other", attempt=1, kind="text"))
    )
    retry = await holder.append(again, expected_last=second.seq)
    assert retry.duplicate
    assert retry.seq == stored.seq
    # The scope moved under the holder: the core's own race, as without a fence.
    with pytest.raises(ConcurrencyError):
        await holder.append(make(_queued("t", 4)), expected_last=first.seq)
