"""A worker declared lost that is alive after all joins again before it takes more work.

The real worker and driver shells on the in-memory twins, on trio's virtual clock. The
worker's heartbeats stop reaching the registry for longer than the driver waits (a link
cut for a while), the driver declares it lost, and the link comes back. Before the worker
joined again, every claim it made was re-queued by the driver the moment it landed and it
claimed the same task again, until the task had used up its attempts (seen on three
network-namespace hosts: six attempts of one task, then the task failed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import anyio
import pytest
import trio.testing

from claudecluster.errors import ClusterError
from claudecluster.events import RunCompleted, SubmitRun, TaskSpec
from claudecluster.events.liveness import WorkerLiveness
from claudecluster.events.model import (
    Event,
    TaskQueued,
    TaskStarted,
    WorkerJoined,
    WorkerLost,
)
from claudecluster.executors.confinement import Confinement
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.simulation.clock import seed_trio_scheduler, virtual_now
from claudecluster.simulation.workers import ScriptedDisk, ScriptedExecutor
from claudecluster.transport.infrastructure import memory_infrastructure
from claudecluster.transport.liveness import WorkerRegistry
from tests.support import virtual_driver, wait_for_events

#: Virtual seconds: with autojump a wait that can never end fails at once.
_VIRTUAL_LIMIT_S = 24 * 3600.0


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}


class CutRegistry:
    """The worker's side of the registry, whose writes fail while ``down``."""

    def __init__(self, inner: WorkerRegistry) -> None:
        self.inner = inner
        self.down = False

    async def put(self, record: WorkerLiveness) -> None:
        if self.down:
            raise ClusterError("cannot write cc_workers: the link is cut")
        await self.inner.put(record)

    async def delete(self, worker_id: str) -> None:
        await self.inner.delete(worker_id)

    async def current(self) -> dict[str, WorkerLiveness]:
        return await self.inner.current()

    def watch(self) -> AsyncGenerator[WorkerLiveness, None]:
        return self.inner.watch()


def _found(check: Callable[[Event], bool]) -> Callable[[list[Event]], bool]:
    return lambda events: any(check(e) for e in events)


@pytest.mark.anyio
async def test_a_worker_declared_lost_joins_again_and_its_next_run_uses_one_attempt_a_task() -> (
    None
):
    seed_trio_scheduler(7)
    infra = memory_infrastructure(work_ack_wait_s=30.0)
    driver = virtual_driver(infra, seed=7)
    registry = CutRegistry(infra.registry)
    own = dataclasses.replace(infra, registry=registry)
    worker = Worker(
        WorkerConfig(
            worker_id="w1", workspace_root=Path("/simulated/w1"), heartbeat_s=5.0,
            confinement=Confinement.unconfined(), touched_every_s=0,
        ),
        own.log, infrastructure=own, clock=virtual_now, disk=ScriptedDisk(own.artifacts),
        executor=ScriptedExecutor(seed=7, duration=lambda rng, _: rng.uniform(20, 40)),
    )  # fmt: skip
    plan = tuple(TaskSpec(task_id=t, title=t, prompt=t) for t in "abc")
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        await group.start(worker.serve)
        registry.down = True
        await wait_for_events(
            infra.log, _found(lambda e: isinstance(e, WorkerLost)), limit_s=_VIRTUAL_LIMIT_S
        )
        registry.down = False
        rejoined = await wait_for_events(
            infra.log,
            _found(lambda e: isinstance(e, WorkerJoined) and "declared lost" in e.reason),
            limit_s=_VIRTUAL_LIMIT_S,
        )
        submit = SubmitRun(run_id="back", goal="g", repo="/simulated", plan=plan)
        await infra.commands.publish(submit, command_id="submit-back", now=virtual_now())
        events = await wait_for_events(
            infra.log, _found(lambda e: isinstance(e, RunCompleted)), limit_s=_VIRTUAL_LIMIT_S
        )
        worker.stop()
        group.cancel_scope.cancel()
    joins = [e for e in rejoined if isinstance(e, WorkerJoined)]
    assert len(joins) == 2  # the start, and once again after the loss
    assert "no heartbeat for 30s" in joins[1].reason
    completed = [e for e in events if isinstance(e, RunCompleted)]
    assert completed[0].tasks_succeeded == 3
    # Each task ran once, on the worker that came back, and nothing was re-queued.
    started = [(e.task_id, e.attempt, e.worker_id) for e in events if isinstance(e, TaskStarted)]
    assert sorted(started) == [("a", 1, "w1"), ("b", 1, "w1"), ("c", 1, "w1")]
    assert [e for e in events if isinstance(e, TaskQueued) and e.attempt > 1] == []
