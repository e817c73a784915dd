"""Pure domain rules: lifecycles of tasks, runs and workers. No I/O, no clock."""

from claudecluster.domain.lifecycle import (
    ACTIVE_TASK_STATES,
    FINISHED_RUN_STATES,
    FINISHED_TASK_STATES,
    HELD_TASK_STATES,
    OPEN_RUN_STATES,
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    WORKER_TRANSITIONS,
    RunState,
    TaskState,
    WorkerState,
    next_run_state,
    next_task_state,
    next_worker_state,
)

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
