"""Pure domain rules: lifecycles of tasks and runs. No I/O, no clock."""

from claudecluster.domain.lifecycle import (
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    RunState,
    TaskState,
    next_run_state,
    next_task_state,
)

__all__ = [
    "RUN_TRANSITIONS",
    "TASK_TRANSITIONS",
    "RunState",
    "TaskState",
    "next_run_state",
    "next_task_state",
]
