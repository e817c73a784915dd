"""The real driver shell on the in-memory twins, its git half scripted, on trio's virtual
clock: the first step of a simulator that runs the shells themselves (issue 16).

The driver shell reads time only from ``DriverOptions.now`` and anyio's clock, and with
:class:`~claudecluster.simulation.repositories.ScriptedRunRepositories` it does no I/O at
all, so trio's ``MockClock`` (autojump) runs it: a virtual hour passes in no real time,
and the same submission gives the same history every time (trio's scheduling order
seeded: :func:`~claudecluster.simulation.clock.seed_trio_scheduler`).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
import trio.testing

from claudecluster.events import (
    CancelRun,
    CommandRejected,
    RunCancelled,
    RunCompleted,
    SubmitRun,
    TaskAssigned,
    TaskCancelled,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    wrap_event,
)
from claudecluster.events.envelope import EventEnvelope
from claudecluster.events.model import Event
from claudecluster.simulation.clock import seed_trio_scheduler, virtual_now
from claudecluster.transport.base import AppendResult, EventLog, read_all
from claudecluster.transport.infrastructure import Infrastructure, memory_infrastructure
from tests.support import ForwardingLog, virtual_driver, wait_for_events

#: Virtual seconds: with autojump a wait that can never end fails at once, so the limit
#: can be generous at no cost.
_VIRTUAL_LIMIT_S = 3600.0


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}


def _task(task_id: str, *deps: str) -> TaskSpec:
    return TaskSpec(task_id=task_id, title=task_id, prompt=task_id, depends_on=deps)


def _of(kind: type[Event]) -> Callable[[list[Event]], bool]:
    return lambda events: any(isinstance(e, kind) for e in events)


async def _history() -> tuple[list[tuple[str, str]], list[str], float]:
    """Submit a run, take its first work item, cancel it: the log, the item, the clock."""
    # The driver carries out a cancel's effects concurrently: which lands first is trio's
    # scheduling order, which replays only from a seed.
    seed_trio_scheduler(1)
    infra: Infrastructure = memory_infrastructure()
    driver = virtual_driver(infra, seed=1)
    plan = (_task("a"), _task("b", "a"), _task("c", "a"))
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        submit = SubmitRun(run_id="v", goal="g", repo="/simulated", plan=plan)
        await infra.commands.publish(submit, command_id="submit-v", now=virtual_now())
        await wait_for_events(infra.log, _of(TaskQueued), limit_s=_VIRTUAL_LIMIT_S)
        delivery = await infra.queue.fetch("default", wait_s=_VIRTUAL_LIMIT_S)
        assert delivery is not None
        items = [delivery.item.task_id]
        await delivery.ack()
        # Nobody takes the item: a virtual minute of ticks decides nothing new for b and c.
        await anyio.sleep(60)
        cancel = CancelRun(run_id="v", reason="enough")
        await infra.commands.publish(cancel, command_id="cancel-v", now=virtual_now())
        events = await wait_for_events(infra.log, _of(RunCancelled), limit_s=_VIRTUAL_LIMIT_S)
        group.cancel_scope.cancel()
    log = [(type(e).__name__, getattr(e, "task_id", "")) for e in events]
    return log, items, anyio.current_time()


@pytest.mark.anyio
async def test_the_driver_shell_runs_on_virtual_time_and_repeats_itself() -> None:
    first, items, ended_at = await _history()
    assert items == ["a"]  # only the root: b and c wait for its merge
    queued = [task for kind, task in first if kind == "TaskQueued"]
    assert queued == ["a"]
    assert ("RunCancelled", "") in first
    assert ended_at >= 60  # the virtual minute passed (in no real time)
    again, _, _ = await _history()
    assert again == first


class _EndsRacing(ForwardingLog):
    """The driver's log, arranged so that a run's completion and its cancel race for it:
    the completion's append waits until the cancel's has started (the cancel command is
    published by the completion's append itself), then lands first."""

    def __init__(self, log: EventLog, infra: Infrastructure) -> None:
        super().__init__(log)
        self._infra = infra
        self._cancel_started, self._completed = anyio.Event(), anyio.Event()

    async def append(
        self, envelope: EventEnvelope, *, expected_last: int | None = None
    ) -> AppendResult:
        event = envelope.payload
        with anyio.fail_after(_VIRTUAL_LIMIT_S):
            if isinstance(event, RunCompleted):
                cancel = CancelRun(run_id=event.run_id, reason="enough")
                await self._infra.commands.publish(cancel, command_id="late", now=virtual_now())
                await self._cancel_started.wait()
                try:
                    return await self.inner.append(envelope, expected_last=expected_last)
                finally:
                    self._completed.set()
            if isinstance(event, RunCancelled):
                self._cancel_started.set()
                await self._completed.wait()
        return await self.inner.append(envelope, expected_last=expected_last)


@pytest.mark.anyio
async def test_a_cancel_decided_while_the_run_completes_is_answered_not_dropped() -> None:
    # The run's last task ends (its worker stopped it on a task cancel), the driver records
    # the run completed, and a run cancel is decided meanwhile: the completion lands
    # first, and the cancel's conditional append fails. The two records share the run's
    # end key; the completion settling once acknowledged the cancel too, which then went
    # unanswered for good (a gateway's DELETE /runs/<id> timed out with 503). The cancel
    # is decided again and refused, naming why.
    seed_trio_scheduler(1)
    infra: Infrastructure = memory_infrastructure()
    driver = virtual_driver(infra, seed=1, log=_EndsRacing(infra.log, infra))
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        submit = SubmitRun(run_id="v", goal="g", repo="/simulated", plan=(_task("a"),))
        await infra.commands.publish(submit, command_id="submit-v", now=virtual_now())
        await wait_for_events(infra.log, _of(TaskQueued), limit_s=_VIRTUAL_LIMIT_S)
        # A worker takes the task, and stops it on a task cancel (its own to record).
        held: list[Event] = [
            TaskAssigned(run_id="v", task_id="a", attempt=1, worker_id="w1"),
            TaskStarted(run_id="v", task_id="a", attempt=1, worker_id="w1", session_id="s"),
            TaskCancelled(run_id="v", task_id="a", attempt=1, reason="cancelled on request"),
        ]  # fmt: skip
        for n, event in enumerate(held):
            await infra.log.append(wrap_event(event, event_id=f"w1-{n}", now=virtual_now()))
        events = await wait_for_events(
            infra.log,
            lambda seen: any(isinstance(e, CommandRejected) for e in seen),
            limit_s=_VIRTUAL_LIMIT_S,
        )
        group.cancel_scope.cancel()
    ends = [e for e in events if isinstance(e, RunCompleted | RunCancelled)]
    assert [type(e) for e in ends] == [RunCompleted]
    (refusal,) = [e for e in events if isinstance(e, CommandRejected)]
    assert refusal.command_id == "late"
    assert "already ended (completed)" in refusal.reason


@pytest.mark.anyio
async def test_a_work_item_names_the_sequence_of_the_task_queued_it_was_published_for() -> None:
    # A worker claims an item conditional on that sequence without reading the log
    # (runtime/worker/serve.py): it must be exactly where the TaskQueued was recorded.
    infra: Infrastructure = memory_infrastructure()
    driver = virtual_driver(infra, seed=1)
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        submit = SubmitRun(run_id="s", goal="g", repo="/simulated", plan=(_task("a"),))
        await infra.commands.publish(submit, command_id="submit-s", now=virtual_now())
        await wait_for_events(infra.log, _of(TaskQueued), limit_s=_VIRTUAL_LIMIT_S)
        delivery = await infra.queue.fetch("default", wait_s=_VIRTUAL_LIMIT_S)
        assert delivery is not None
        item = delivery.item
        group.cancel_scope.cancel()
    queued = [s for s in await read_all(infra.log) if isinstance(s.envelope.payload, TaskQueued)]
    assert len(queued) == 1
    assert item.queued_seq == queued[0].seq > 0
