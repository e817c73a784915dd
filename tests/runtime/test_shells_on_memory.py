"""The real driver and worker shells on the in-memory infrastructure: no NATS at all.

This is what a simulator builds on: the same shells as production, every seam a twin.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from claudecluster.actors.driver import DriverConfig
from claudecluster.events import RunCompleted, RunFailed, SubmitRun, TaskMerged, TaskSpec
from claudecluster.events.model import Event
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.transport.infrastructure import Infrastructure, memory_infrastructure
from tests.support import git_output, make_repo

# Generous for a busy two-core machine; the run ends as soon as its last merge does.
_RUN_LIMIT_S = 120.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def shell(task_id: str, command: str, *deps: str) -> TaskSpec:
    return TaskSpec(
        task_id=task_id, title=f"task {task_id}", prompt=command, executor="shell",
        depends_on=deps,
    )  # fmt: skip


async def _run_end(infra: Infrastructure, run_id: str) -> list[Event]:
    """Every event up to the run's end, followed live (no polling)."""
    seen: list[Event] = []
    async with infra.log.open_reader(follow=True) as events:
        async for stored in events:
            seen.append(stored.envelope.payload)
            payload = stored.envelope.payload
            if isinstance(payload, RunCompleted | RunFailed) and payload.run_id == run_id:
                return seen
    raise AssertionError("the log ended before the run did")


@pytest.mark.anyio
async def test_a_diamond_runs_to_completion_on_the_in_memory_twins(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": "VERSION = 1\n"})
    infra = memory_infrastructure(work_ack_wait_s=30.0, command_ack_wait_s=30.0)
    driver = Driver(
        infra.log,
        options=DriverOptions(
            config=DriverConfig(lost_after_s=30), work_dir=tmp_path / "driver", tick_s=0.1
        ),
        infrastructure=infra,
    )
    workers = [
        Worker(
            WorkerConfig(worker_id=f"w{n}", workspace_root=tmp_path / f"ws{n}", heartbeat_s=1.0),
            infra.log,
            infrastructure=infra,
        )
        for n in (1, 2)
    ]
    tasks = (
        shell("a", "echo a > a.txt"),
        shell("b", "cat a.txt > b.txt && echo b >> b.txt", "a"),
        shell("c", "cat a.txt > c.txt && echo c >> c.txt", "a"),
        shell("d", "cat b.txt c.txt > d.txt", "b", "c"),
    )
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        for worker in workers:
            await group.start(worker.serve)
        await infra.commands.publish(
            SubmitRun(run_id="mem", goal="test", repo=str(repo), plan=tasks),
            command_id="cmd-1",
            now=datetime.now(UTC),
        )
        with anyio.fail_after(_RUN_LIMIT_S):
            events = await _run_end(infra, "mem")
        for worker in workers:
            worker.stop()
        group.cancel_scope.cancel()
    completed = [e for e in events if isinstance(e, RunCompleted)]
    assert [(c.tasks_succeeded, c.tasks_failed) for c in completed] == [(4, 0)]
    merged = [e.task_id for e in events if isinstance(e, TaskMerged)]
    assert merged[0] == "a"
    assert merged[-1] == "d"
    show = git_output(repo, "show", "claudecluster/mem:d.txt")
    assert show == "a\nb\na\nc\n"
