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

from claudecluster.events import CancelRun, RunCancelled, SubmitRun, TaskQueued, TaskSpec
from claudecluster.events.model import Event
from claudecluster.simulation.clock import seed_trio_scheduler, virtual_now
from claudecluster.transport.infrastructure import Infrastructure, memory_infrastructure
from tests.support import virtual_driver, wait_for_events

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
