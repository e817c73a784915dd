"""The records projections hold: one per run, task, worker and run cost.

They are frozen msgspec Structs so a projection can be snapshotted (encoded) and compared
for equality, and so a fold can only make a new record, never change one in place.

They are not tracked by the cyclic garbage collector (``gc=False``): their fields are
strings, numbers, times and tuples of those, so they can never be part of a reference
cycle, and a view of a big log holds hundreds of thousands of them that every full
collection would otherwise walk.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from claudecluster.domain.lifecycle import RunState, TaskState, WorkerState
from claudecluster.events.model import FailureClass, TaskKind, TokenUsage

__all__ = ["Anomaly", "CostView", "RunView", "TaskView", "WorkerState", "WorkerView", "task_key"]


def task_key(run_id: str, task_id: str) -> str:
    """The key a task has in the tasks projection (task ids are unique within a run)."""
    return f"{run_id}/{task_id}"


class RunView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What is known about one run."""

    run_id: str
    goal: str
    repo: str
    state: RunState = RunState.SUBMITTED
    submitted_at: datetime
    planned_at: datetime | None = None
    finished_at: datetime | None = None
    task_ids: tuple[str, ...] = ()
    base_commit: str = ""
    integration_branch: str = ""
    head_commit: str = ""
    budget_usd: float | None = None
    reason: str = ""


class TaskView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What is known about one task: its state, live attempt, timings and spend.

    ``usage`` counts the live attempt's tokens; ``cost_usd`` sums every attempt's cost.
    """

    run_id: str
    task_id: str
    title: str
    kind: TaskKind = "generate"
    depends_on: tuple[str, ...] = ()
    state: TaskState = TaskState.PENDING
    attempt: int = 0
    pool: str = "default"
    worker_id: str | None = None
    session_id: str = ""
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    turns: int = 0
    #: the last successful attempt's time waiting on the model, in seconds
    model_time_s: float = 0.0
    cost_usd: float = 0.0
    usage: TokenUsage = TokenUsage()
    progress_events: int = 0
    last_progress: str = ""
    failure: str | None = None
    failure_class: FailureClass | None = None
    retryable: bool = False
    merged_commit: str | None = None
    conflict_files: tuple[str, ...] = ()
    #: why the task counts as merged although the merge changed nothing (empty otherwise)
    merge_note: str = ""
    #: the live attempt's holder's public key: its later events must be signed with it
    worker_key: str = ""
    #: attempts stopped early for a predicted collision (TaskPreempted): not failures,
    #: and not counted against the run's max_attempts
    preemptions: int = 0
    #: the task the latest preemption made this one wait for (empty if never preempted)
    preempted_by: str = ""


class WorkerView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What is known about one worker, from its own reports and the driver's verdicts."""

    worker_id: str
    pool: str = "default"
    host: str = ""
    pid: int = 0
    slots: int = 1
    version: str = ""
    state: WorkerState = "active"
    joined_at: datetime | None = None
    last_seen_at: datetime | None = None
    cpu_percent: float = 0.0
    memory_bytes: int = 0
    load_avg: float = 0.0
    running_tasks: tuple[str, ...] = ()
    slots_free: int = 0
    reason: str = ""


class CostView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Money and tokens one run has spent, failed and superseded attempts included."""

    run_id: str
    cost_usd: float = 0.0
    usage: TokenUsage = TokenUsage()
    attempts_billed: int = 0


class Anomaly(msgspec.Struct, frozen=True, kw_only=True):
    """An event that did not fit the history it was applied to.

    It changed no projection, except that a known task's superseded attempt still adds
    the cost it reports to the run's spend.
    """

    seq: int
    event_id: str
    type: str
    reason: str
