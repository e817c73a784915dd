"""The lifecycles of a task, a run and a worker, each as one transition table, and the
one home of the sets of open, active, held and finished states every part uses.

A table maps ``(state, event tag) -> next state``. A pair that is not in the table is an
event that does not fit the entity's history (a late result, a duplicate from an old
attempt, a bug in a producer); projections record it as an anomaly and leave the state as
it was, because a log is a record of what was said, not a proof that it made sense.

Task states (the main paths; TASK_TRANSITIONS below is the whole truth)::

    pending -> queued -> assigned -> running -> succeeded -> merged -> reverted (rollback)
                  ^                     |          |
                  |                     v          v
                  +--- retry_wait <- failed    conflicted -> merged
    pending -> skipped          (any active state) -> cancelled
    succeeded -> failed (its merge failed the verify command and was undone)
    failed/skipped/cancelled/... -> pending (the run was retried: run.retried)
    queued/assigned/running -> queued (a new attempt after a lost worker)
    queued/assigned/running -> preempted -> queued (stopped early for a predicted
        collision, queued again once the earlier task merged) | cancelled

Runs: ``submitted -> planned -> running -> completed | failed | cancelled -> rolled_back``,
and ``completed | failed | cancelled -> running`` again on a retry (``run.retried``);
the first ``task.queued`` of a planned run is what makes it running. Workers:
``active -> left | lost``, and a join makes any worker active again.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

__all__ = [
    "ACTIVE_TASK_STATES",
    "FINISHED_RUN_STATES",
    "FINISHED_TASK_STATES",
    "HELD_TASK_STATES",
    "OPEN_RUN_STATES",
    "RUN_TRANSITIONS",
    "TASK_TRANSITIONS",
    "WORKER_TRANSITIONS",
    "RunState",
    "TaskState",
    "WorkerState",
    "next_run_state",
    "next_task_state",
    "next_worker_state",
]


class TaskState(StrEnum):
    """Where a task is in its life; the terminal ones are listed in :attr:`terminal`."""

    PENDING = "pending"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY_WAIT = "retry_wait"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    MERGED = "merged"
    CONFLICTED = "conflicted"
    REVERTED = "reverted"
    #: stopped early for a predicted collision; queued again after the other task merges
    PREEMPTED = "preempted"

    @property
    def terminal(self) -> bool:
        """No further event is expected for this task (short of a rollback or a retry)."""
        return self in _TERMINAL_TASK_STATES

    @property
    def finished(self) -> bool:
        """In :data:`FINISHED_TASK_STATES`: done with, for progress and reports."""
        return self in FINISHED_TASK_STATES


_TERMINAL_TASK_STATES: Final = frozenset(
    {TaskState.CANCELLED, TaskState.SKIPPED, TaskState.MERGED, TaskState.REVERTED}
)


class RunState(StrEnum):
    """Where a run is in its life."""

    SUBMITTED = "submitted"
    PLANNED = "planned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"

    @property
    def open(self) -> bool:
        """In :data:`OPEN_RUN_STATES`: the run has not ended."""
        return self in OPEN_RUN_STATES


#: Where a worker is: serving (``active``), gone by its own say (``left``) or declared
#: gone by the driver (``lost``). A string literal, as the views and their JSON carry it.
WorkerState = Literal["active", "left", "lost"]

WORKER_TRANSITIONS: Final[dict[tuple[WorkerState, str], WorkerState]] = {
    # A worker that joins again (a restart with the same id) is active again.
    ("active", "worker.joined"): "active",
    ("left", "worker.joined"): "active",
    ("lost", "worker.joined"): "active",
    ("active", "worker.heartbeat"): "active",
    ("active", "worker.left"): "left",
    ("active", "worker.lost"): "lost",
}


_T = TaskState
_R = RunState

#: An attempt is under way: queued for a worker, assigned to one, or running on it.
ACTIVE_TASK_STATES: Final[frozenset[TaskState]] = frozenset({_T.QUEUED, _T.ASSIGNED, _T.RUNNING})
#: A worker holds the attempt (it occupies one of that worker's slots).
HELD_TASK_STATES: Final[frozenset[TaskState]] = frozenset({_T.ASSIGNED, _T.RUNNING})
#: Nothing more will happen to the task in this run unless a retry or a rollback is decided:
#: the terminal states and ``failed`` (which the driver retries or gives up on). What
#: progress counts as done.
FINISHED_TASK_STATES: Final[frozenset[TaskState]] = frozenset({*_TERMINAL_TASK_STATES, _T.FAILED})
#: The run has not ended: it may still plan, queue, run and merge tasks.
OPEN_RUN_STATES: Final[frozenset[RunState]] = frozenset({_R.SUBMITTED, _R.PLANNED, _R.RUNNING})
#: The run has ended (a rollback may still move its branch back).
FINISHED_RUN_STATES: Final[frozenset[RunState]] = frozenset(set(RunState) - OPEN_RUN_STATES)

_ACTIVE: Final = sorted(ACTIVE_TASK_STATES)

#: The task states a retry of the run moves back to pending (everything not merged and not
#: running; a pending task stays pending).
_RETRIED: Final = (
    *(_T.PENDING, _T.FAILED, _T.RETRY_WAIT, _T.CANCELLED, _T.SKIPPED),
    *(_T.CONFLICTED, _T.SUCCEEDED, _T.PREEMPTED),
)

TASK_TRANSITIONS: Final[dict[tuple[TaskState, str], TaskState]] = {
    (_T.PENDING, "task.queued"): _T.QUEUED,
    (_T.PENDING, "task.skipped"): _T.SKIPPED,
    (_T.PENDING, "task.cancelled"): _T.CANCELLED,
    (_T.QUEUED, "task.assigned"): _T.ASSIGNED,
    # A worker may report start without a separate assignment (it took the message itself).
    (_T.QUEUED, "task.started"): _T.RUNNING,
    (_T.ASSIGNED, "task.started"): _T.RUNNING,
    # A requeue after a lost worker is a new attempt queued from wherever the old one was.
    **{(state, "task.queued"): _T.QUEUED for state in _ACTIVE},
    **{(state, "task.failed"): _T.FAILED for state in _ACTIVE},
    **{(state, "task.cancelled"): _T.CANCELLED for state in _ACTIVE},
    (_T.RUNNING, "task.progress"): _T.RUNNING,
    (_T.RUNNING, "task.rate_limited"): _T.RUNNING,
    (_T.RUNNING, "task.files_touched"): _T.RUNNING,
    (_T.RUNNING, "task.succeeded"): _T.SUCCEEDED,
    # Stopped early by the driver for a predicted collision: not a failure, not an end.
    **{(state, "task.preempted"): _T.PREEMPTED for state in _ACTIVE},
    (_T.PREEMPTED, "task.queued"): _T.QUEUED,
    (_T.PREEMPTED, "task.cancelled"): _T.CANCELLED,
    (_T.FAILED, "task.retry_scheduled"): _T.RETRY_WAIT,
    (_T.FAILED, "task.skipped"): _T.SKIPPED,
    (_T.FAILED, "task.cancelled"): _T.CANCELLED,
    (_T.RETRY_WAIT, "task.queued"): _T.QUEUED,
    (_T.RETRY_WAIT, "task.cancelled"): _T.CANCELLED,
    (_T.SUCCEEDED, "task.merged"): _T.MERGED,
    (_T.SUCCEEDED, "task.merge_conflict"): _T.CONFLICTED,
    (_T.SUCCEEDED, "task.cancelled"): _T.CANCELLED,
    # The verify command failed on the merged result: the merge was undone.
    (_T.SUCCEEDED, "task.failed"): _T.FAILED,
    (_T.CONFLICTED, "task.merged"): _T.MERGED,
    (_T.CONFLICTED, "task.failed"): _T.FAILED,
    (_T.CONFLICTED, "task.queued"): _T.QUEUED,
    (_T.MERGED, "run.rolled_back"): _T.REVERTED,
    # A retry of the ended run (RunRetried names the tasks): pending again, queued anew
    # from the integration branch's head once their dependencies are merged.
    **{(state, "run.retried"): _T.PENDING for state in _RETRIED},
}

RUN_TRANSITIONS: Final[dict[tuple[RunState, str], RunState]] = {
    (_R.SUBMITTED, "run.planned"): _R.PLANNED,
    (_R.SUBMITTED, "run.failed"): _R.FAILED,
    (_R.SUBMITTED, "run.cancelled"): _R.CANCELLED,
    # The first task queued starts a planned run; the next ones find it running.
    (_R.PLANNED, "task.queued"): _R.RUNNING,
    (_R.RUNNING, "task.queued"): _R.RUNNING,
    (_R.PLANNED, "run.completed"): _R.COMPLETED,
    (_R.PLANNED, "run.failed"): _R.FAILED,
    (_R.PLANNED, "run.cancelled"): _R.CANCELLED,
    (_R.RUNNING, "run.completed"): _R.COMPLETED,
    (_R.RUNNING, "run.failed"): _R.FAILED,
    (_R.RUNNING, "run.cancelled"): _R.CANCELLED,
    (_R.COMPLETED, "run.rolled_back"): _R.ROLLED_BACK,
    (_R.FAILED, "run.rolled_back"): _R.ROLLED_BACK,
    (_R.CANCELLED, "run.rolled_back"): _R.ROLLED_BACK,
    (_R.ROLLED_BACK, "run.rolled_back"): _R.ROLLED_BACK,
    # ``claudecluster retry``: an ended run (not a rolled-back one) runs again.
    (_R.COMPLETED, "run.retried"): _R.RUNNING,
    (_R.FAILED, "run.retried"): _R.RUNNING,
    (_R.CANCELLED, "run.retried"): _R.RUNNING,
}


def next_task_state(state: TaskState, tag: str) -> TaskState | None:
    """The task's state after an event with wire tag ``tag``, or None if it does not fit."""
    return TASK_TRANSITIONS.get((state, tag))


def next_run_state(state: RunState, tag: str) -> RunState | None:
    """The run's state after an event with wire tag ``tag``, or None if it does not fit."""
    return RUN_TRANSITIONS.get((state, tag))


def next_worker_state(state: WorkerState, tag: str) -> WorkerState | None:
    """The worker's state after an event with wire tag ``tag``, or None if it does not fit."""
    return WORKER_TRANSITIONS.get((state, tag))
