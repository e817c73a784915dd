"""A worker reads a run's plan once: later work items of the run fetch only what is new.

Admission folds the run's run-level events and the task's own; the run-level ones hold
the plan (megabytes for thousands of tasks), so the worker keeps them and cuts the plan
down to the one task it looks at. These tests check that what it decides is still what
the whole log says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from claudecluster.domain.lifecycle import TaskState
from claudecluster.events.envelope import StoredEvent, wrap_event
from claudecluster.events.model import (
    ArtifactRef,
    Event,
    RunCompleted,
    RunPlanned,
    RunRolledBack,
    RunSubmitted,
    TaskAssigned,
    TaskMerged,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.events.work import WorkItem
from claudecluster.projections.cluster import replay
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.runtime.worker.serve import _one_task
from claudecluster.transport.base import read_all
from claudecluster.transport.jetstream import JetStreamEventLog

SPECS = tuple(TaskSpec(task_id=f"t{i}", title=f"task {i}", prompt="true") for i in range(3))


def _planned(run_id: str) -> RunPlanned:
    return RunPlanned(run_id=run_id, tasks=SPECS, base_commit="c0", integration_branch="b")


def test_a_plan_is_cut_down_to_the_task_being_admitted() -> None:
    envelope = wrap_event(_planned("r"), event_id="p", now=datetime.now(UTC))
    stored = StoredEvent(seq=2, subject="cc.evt.r._.run.planned", envelope=envelope)
    cut = _one_task(stored, "t1")
    assert isinstance(cut.envelope.payload, RunPlanned)
    assert [spec.task_id for spec in cut.envelope.payload.tasks] == ["t1"]
    assert (cut.seq, cut.subject, cut.envelope.id) == (2, stored.subject, "p")
    other = StoredEvent(
        seq=3, subject="x", envelope=wrap_event(TaskQueued(run_id="r", task_id="t1"),
                                                event_id="q", now=datetime.now(UTC)),
    )  # fmt: skip
    assert _one_task(other, "t1") is other


@pytest.mark.nats
async def test_run_events_after_the_first_item_are_still_seen(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path
) -> None:
    log, client = world
    count = 0

    async def record(event: Event) -> None:
        nonlocal count
        count += 1
        await log.append(wrap_event(event, event_id=f"e{count}", now=datetime.now(UTC)))

    worker = Worker(WorkerConfig(worker_id="w", workspace_root=tmp_path), log, client)
    bundle = ArtifactRef(bucket="b", key="k", name="base.bundle", size=1, sha256="0" * 64)

    def item(task_id: str, attempt: int = 1) -> WorkItem:
        spec = next(s for s in SPECS if s.task_id == task_id)
        return WorkItem(
            run_id="r", attempt=attempt, spec=spec, base_commit="c0", base_bundle=bundle
        )

    await record(RunSubmitted(run_id="r", goal="g", repo="/repo"))
    await record(_planned("r"))
    for event in (
        TaskQueued(run_id="r", task_id="t0", attempt=1),
        TaskAssigned(run_id="r", task_id="t0", attempt=1, worker_id="w"),
        TaskStarted(run_id="r", task_id="t0", attempt=1, worker_id="w"),
        TaskSucceeded(run_id="r", task_id="t0", attempt=1, worker_id="w"),
        TaskMerged(run_id="r", task_id="t0", attempt=1, commit="c1", integration_branch="b"),
    ):
        await record(event)
    first, _ = await worker._task_view(item("t0"))
    assert first is not None
    assert first.state is TaskState.MERGED
    assert (await worker._task_view(item("t2")))[0] is not None  # same run: from what it kept

    # A run-level event after the worker kept the plan changes the task: it must show.
    await record(RunCompleted(run_id="r", head_commit="c1", tasks_succeeded=1))
    await record(RunRolledBack(run_id="r", to_commit="c0", reverted_tasks=("t0",)))
    again, _ = await worker._task_view(item("t0"))
    assert again is not None
    assert again.state is TaskState.REVERTED
    assert again == replay(await read_all(log)).tasks["r/t0"]  # what the whole log says

    # A task the plan does not have is unknown, cut plan or not.
    missing = WorkItem(
        run_id="r", attempt=1, base_commit="c0", base_bundle=bundle,
        spec=TaskSpec(task_id="t9", title="not planned", prompt="true"),
    )  # fmt: skip
    assert (await worker._task_view(missing))[0] is None
