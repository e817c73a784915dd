"""The task and run lifecycles as transition tables."""

from __future__ import annotations

import pytest

from claudecluster.domain import (
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    RunState,
    TaskState,
    next_run_state,
    next_task_state,
)
from claudecluster.events import EVENT_TYPES


def test_every_transition_is_driven_by_a_real_event_type() -> None:
    for _, tag in [*TASK_TRANSITIONS, *RUN_TRANSITIONS]:
        assert tag in EVENT_TYPES, tag


def test_every_state_but_the_final_ones_has_a_way_forward() -> None:
    sources = {state for (state, _) in TASK_TRANSITIONS}
    assert set(TaskState) - sources == {TaskState.SKIPPED, TaskState.CANCELLED, TaskState.REVERTED}
    assert set(RunState) - {state for (state, _) in RUN_TRANSITIONS} == set()


@pytest.mark.parametrize(
    ("state", "tag", "expected"),
    [
        (TaskState.PENDING, "task.queued", TaskState.QUEUED),
        (TaskState.PENDING, "task.started", None),  # never runs before it is queued
        (TaskState.RUNNING, "task.queued", TaskState.QUEUED),  # requeued after a lost worker
        (TaskState.RUNNING, "task.succeeded", TaskState.SUCCEEDED),
        (TaskState.SUCCEEDED, "task.failed", TaskState.FAILED),  # verify undid its merge
        (TaskState.MERGED, "task.failed", None),  # a merged result is final
        (TaskState.SUCCEEDED, "task.progress", None),  # a finished attempt says no more
        (TaskState.FAILED, "task.retry_scheduled", TaskState.RETRY_WAIT),
        (TaskState.CONFLICTED, "task.merged", TaskState.MERGED),
        (TaskState.MERGED, "run.rolled_back", TaskState.REVERTED),
        (TaskState.CANCELLED, "task.queued", None),
    ],
)
def test_task_transitions(state: TaskState, tag: str, expected: TaskState | None) -> None:
    assert next_task_state(state, tag) == expected


def test_terminal_task_states_are_the_ones_with_no_further_event() -> None:
    terminal = {state for state in TaskState if state.terminal}
    assert terminal == {
        TaskState.CANCELLED,
        TaskState.SKIPPED,
        TaskState.MERGED,
        TaskState.REVERTED,
    }


def test_a_finished_run_only_moves_by_rollback() -> None:
    for state in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED):
        moves = {tag for (source, tag) in RUN_TRANSITIONS if source is state}
        assert moves == {"run.rolled_back"}
    assert next_run_state(RunState.SUBMITTED, "run.completed") is None
