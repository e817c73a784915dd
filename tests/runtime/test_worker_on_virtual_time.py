"""The real worker shell beside the real driver shell, on the in-memory twins, on trio's
virtual clock: the worker's disk and agent scripted
(:mod:`claudecluster.simulation.workers`), nothing of its claim, fencing, keep-alive or
recording replaced. The next step of a simulator that runs the shells themselves
(issue 16).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest
import trio.testing

from claudecluster.events import RunCompleted, SubmitRun, TaskSpec
from claudecluster.events.model import Event, RunPolicy, TaskFailed, TaskStarted
from claudecluster.executors.confinement import Confinement
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.simulation.clock import seed_trio_scheduler, virtual_now
from claudecluster.simulation.cut import Link, WorkerKilled, cuttable
from claudecluster.simulation.workers import ScriptedDisk, ScriptedExecutor
from claudecluster.transport.infrastructure import memory_infrastructure
from tests.support import virtual_driver, wait_for_events

#: Virtual seconds: with autojump a wait that can never end fails at once.
_VIRTUAL_LIMIT_S = 24 * 3600.0


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}


def _task(task_id: str, *deps: str) -> TaskSpec:
    return TaskSpec(task_id=task_id, title=task_id, prompt=task_id, depends_on=deps)


def _of(kind: type[Event]) -> Callable[[list[Event]], bool]:
    return lambda events: any(isinstance(e, kind) for e in events)


async def _history(seed: int) -> tuple[list[tuple[str, str, int]], float, int]:
    """A diamond run by one real worker: the log, the virtual time it took, attempts run."""
    seed_trio_scheduler(seed)
    began = anyio.current_time()  # one clock for the whole test: each history measures its own
    infra = memory_infrastructure(work_ack_wait_s=30.0)
    driver = virtual_driver(infra, seed=seed)
    # A third of the attempts fail retryably: the driver retries them on the same worker.
    executor = ScriptedExecutor(seed=seed, duration=lambda rng, _: rng.uniform(30, 90),
                                failure_chance=0.3, failure_classes=("api_error",))  # fmt: skip
    worker = Worker(
        WorkerConfig(
            worker_id="w1", workspace_root=Path("/simulated/w1"), heartbeat_s=5.0,
            confinement=Confinement.unconfined(), touched_every_s=0,
        ),
        infra.log, infrastructure=infra, executor=executor, clock=virtual_now,
        disk=ScriptedDisk(infra.artifacts),
    )  # fmt: skip
    plan = (_task("a"), _task("b", "a"), _task("c", "a"), _task("d", "b", "c"))
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        await group.start(worker.serve)
        submit = SubmitRun(run_id="v", goal="g", repo="/simulated", plan=plan,
                           policy=RunPolicy(backoff_base_s=1.0, max_attempts=10))  # fmt: skip
        await infra.commands.publish(submit, command_id="submit-v", now=virtual_now())
        events = await wait_for_events(infra.log, _of(RunCompleted), limit_s=_VIRTUAL_LIMIT_S)
        ended = anyio.current_time() - began
        worker.stop()
        group.cancel_scope.cancel()
    log = [(type(e).__name__, getattr(e, "task_id", ""), getattr(e, "attempt", 0)) for e in events]
    return log, ended, executor.started


@pytest.mark.anyio
async def test_a_real_worker_runs_a_diamond_on_virtual_time_and_repeats_itself() -> None:
    log, ended, attempts = await _history(3)
    started = [task for kind, task, _ in log if kind == "TaskStarted"]
    failed = [task for kind, task, _ in log if kind == "TaskFailed"]
    merged = [task for kind, task, _ in log if kind == "TaskMerged"]
    assert sorted(merged) == ["a", "b", "c", "d"]
    assert merged[0] == "a"  # one worker: dependencies first
    assert merged[-1] == "d"
    assert len(started) == attempts == 4 + len(failed)  # every failure was retried
    assert failed  # this seed draws failures: the retry path ran too
    # Four one-slot attempts of at least 30 virtual seconds each, one after another.
    assert ended >= 30 * attempts
    assert await _history(3) == (log, ended, attempts)


@pytest.mark.anyio
async def test_the_scripted_agent_draws_from_the_seed_and_the_attempt_alone() -> None:
    first, _, _ = await _history(3)
    other, _, _ = await _history(4)
    kinds = (TaskStarted.__name__, TaskFailed.__name__)
    assert [e for e in first if e[0] in kinds] != [e for e in other if e[0] in kinds]


async def _serve_until_killed(
    worker: Worker, scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """Serve until ``scope`` is cancelled; a kill (its link cut first) ends here."""
    with scope:
        try:
            await worker.serve(task_status=task_status)
        except* WorkerKilled:
            # The death this test inflicted: its clean-up reached nothing, as a killed
            # process's never does. Anything else the worker raised still fails the test.
            pass


async def _killed_history(seed: int) -> tuple[list[tuple[str, str, int, str]], float]:
    """Six tasks on three real workers; w1 killed as it starts its first attempt."""
    seed_trio_scheduler(seed)
    began = anyio.current_time()
    infra = memory_infrastructure(work_ack_wait_s=30.0)
    driver = virtual_driver(infra, seed=seed)
    executor = ScriptedExecutor(seed=seed, duration=lambda rng, _: rng.uniform(60, 120))
    links: dict[str, Link] = {}
    scopes: dict[str, anyio.CancelScope] = {}
    workers = []
    for n in (1, 2, 3):
        own, links[f"w{n}"] = cuttable(infra)
        scopes[f"w{n}"] = anyio.CancelScope()
        worker = Worker(
            WorkerConfig(
                worker_id=f"w{n}", workspace_root=Path(f"/simulated/w{n}"),
                heartbeat_s=5.0, confinement=Confinement.unconfined(), touched_every_s=0,
            ),
            own.log, infrastructure=own, executor=executor, clock=virtual_now,
            disk=ScriptedDisk(own.artifacts),
        )  # fmt: skip
        workers.append(worker)
    plan = tuple(_task(t) for t in "abcdef")

    def w1_started(events: list[Event]) -> bool:
        return any(isinstance(e, TaskStarted) and e.worker_id == "w1" for e in events)

    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        for worker in workers:
            await group.start(
                functools.partial(_serve_until_killed, worker, scopes[worker.config.worker_id])
            )
        submit = SubmitRun(run_id="k", goal="g", repo="/simulated", plan=plan)
        await infra.commands.publish(submit, command_id="submit-k", now=virtual_now())
        await wait_for_events(infra.log, w1_started, limit_s=_VIRTUAL_LIMIT_S)
        links["w1"].cut()  # kill -9
        scopes["w1"].cancel()
        events = await wait_for_events(infra.log, _of(RunCompleted), limit_s=_VIRTUAL_LIMIT_S)
        ended = anyio.current_time() - began
        for worker in workers[1:]:
            worker.stop()
        group.cancel_scope.cancel()
    log = [
        (type(e).__name__, getattr(e, "task_id", ""), getattr(e, "attempt", 0),
         getattr(e, "worker_id", ""))
        for e in events
    ]  # fmt: skip
    return log, ended


@pytest.mark.anyio
async def test_a_killed_workers_attempt_is_lost_and_run_again_elsewhere() -> None:
    log, ended = await _killed_history(5)
    (killed,) = [(task, n) for kind, task, n, who in log if kind == "TaskStarted" and who == "w1"]
    # The killed worker never said anything again: no result, no leave.
    assert not [e for e in log if e[3] == "w1" and e[0] in ("TaskSucceeded", "TaskFailed")]
    assert ("WorkerLeft", "", 0, "w1") not in log
    # Its attempt was declared lost and a later attempt of the task ran on another worker.
    task, attempt = killed
    assert [who for kind, t, n, who in log if kind == "TaskSucceeded" and t == task] != ["w1"]
    assert any(kind == "TaskStarted" and t == task and n > attempt for kind, t, n, _ in log)
    merged = sorted(t for kind, t, _, _ in log if kind == "TaskMerged")
    assert merged == list("abcdef")
    assert ended >= 30  # the loss was noticed only once w1 had been silent lost_after_s
    assert await _killed_history(5) == (log, ended)
