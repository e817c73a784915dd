"""The task, run and worker lifecycles as transition tables, and the sets of states."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.domain import (
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
from claudecluster.events import EVENT_TYPES


def test_every_transition_is_driven_by_a_real_event_type() -> None:
    for _, tag in [*TASK_TRANSITIONS, *RUN_TRANSITIONS]:
        assert tag in EVENT_TYPES, tag


def test_every_state_but_the_final_ones_has_a_way_forward() -> None:
    # Within a run's round; a retry of the ended run takes skipped and cancelled tasks
    # back to pending, never a reverted one (a rolled-back run is not retried).
    sources = {state for (state, tag) in TASK_TRANSITIONS if tag != "run.retried"}
    assert set(TaskState) - sources == {TaskState.SKIPPED, TaskState.CANCELLED, TaskState.REVERTED}
    retried = {state for (state, tag) in TASK_TRANSITIONS if tag == "run.retried"}
    assert set(TaskState) - retried == {TaskState.MERGED, TaskState.REVERTED, *ACTIVE_TASK_STATES}
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
        (TaskState.FAILED, "run.retried", TaskState.PENDING),
        (TaskState.SKIPPED, "run.retried", TaskState.PENDING),
        (TaskState.MERGED, "run.retried", None),  # a merged task is not run again
        (TaskState.RUNNING, "run.retried", None),
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


def test_a_finished_run_only_moves_by_rollback_or_retry() -> None:
    for state in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED):
        moves = {tag for (source, tag) in RUN_TRANSITIONS if source is state}
        assert moves == {"run.rolled_back", "run.retried"}
        assert next_run_state(state, "run.retried") is RunState.RUNNING
    assert next_run_state(RunState.ROLLED_BACK, "run.retried") is None
    assert next_run_state(RunState.RUNNING, "run.retried") is None
    assert next_run_state(RunState.SUBMITTED, "run.completed") is None


# -- one home for each set of states --------------------------------------------------


def test_the_state_sets_partition_as_their_names_say() -> None:
    assert HELD_TASK_STATES < ACTIVE_TASK_STATES
    assert not ACTIVE_TASK_STATES & FINISHED_TASK_STATES
    assert {s for s in TaskState if s.terminal} | {TaskState.FAILED} == FINISHED_TASK_STATES
    assert {s for s in TaskState if s.finished} == FINISHED_TASK_STATES
    assert set(RunState) == OPEN_RUN_STATES | FINISHED_RUN_STATES
    assert not OPEN_RUN_STATES & FINISHED_RUN_STATES
    # A submitted run is open: it has not ended, though nothing of it is planned yet.
    assert RunState.SUBMITTED in OPEN_RUN_STATES
    assert RunState.SUBMITTED.open
    assert not RunState.ROLLED_BACK.open


def test_every_active_task_can_fail_be_cancelled_or_be_requeued() -> None:
    for state in ACTIVE_TASK_STATES:
        assert next_task_state(state, "task.queued") is TaskState.QUEUED
        assert next_task_state(state, "task.failed") is TaskState.FAILED
        assert next_task_state(state, "task.cancelled") is TaskState.CANCELLED
    # Only a held attempt runs: progress from a merely queued one does not fit.
    for state in TaskState:
        if next_task_state(state, "task.progress") is not None:
            assert state in HELD_TASK_STATES


def test_a_finished_run_state_goes_back_to_an_open_one_only_by_a_retry() -> None:
    for (source, tag), target in RUN_TRANSITIONS.items():
        if source in FINISHED_RUN_STATES and tag != "run.retried":
            assert target in FINISHED_RUN_STATES
        if tag == "run.retried":
            assert (source in FINISHED_RUN_STATES, target) == (True, RunState.RUNNING)


def test_the_first_queued_task_starts_a_planned_run_and_the_next_ones_keep_it_running() -> None:
    assert next_run_state(RunState.PLANNED, "task.queued") is RunState.RUNNING
    assert next_run_state(RunState.RUNNING, "task.queued") is RunState.RUNNING
    assert next_run_state(RunState.SUBMITTED, "task.queued") is None
    assert next_run_state(RunState.COMPLETED, "task.queued") is None


_RUN_TAGS = sorted({tag for (_, tag) in RUN_TRANSITIONS} | {"task.failed", "run.submitted"})
_TASK_TAGS = sorted({tag for (_, tag) in TASK_TRANSITIONS} | {"run.completed"})


@given(st.lists(st.sampled_from(_RUN_TAGS), max_size=30))
def test_once_a_run_has_ended_only_a_retry_reopens_it(tags: list[str]) -> None:
    state, ended = RunState.SUBMITTED, False
    for tag in tags:
        before = state
        state = next_run_state(state, tag) or state
        if ended and state.open and not before.open:
            assert tag == "run.retried"
            ended = False
        ended = ended or state in FINISHED_RUN_STATES
        assert not (ended and state.open)


@given(st.lists(st.sampled_from(_TASK_TAGS), max_size=40))
def test_from_a_terminal_task_state_only_a_rollback_or_a_retry_moves_on(tags: list[str]) -> None:
    state = TaskState.PENDING
    for tag in tags:
        target = next_task_state(state, tag)
        if state.terminal and target is not None:
            assert (state, tag, target) in {
                (TaskState.MERGED, "run.rolled_back", TaskState.REVERTED),
                (TaskState.SKIPPED, "run.retried", TaskState.PENDING),
                (TaskState.CANCELLED, "run.retried", TaskState.PENDING),
            }
        state = target or state


# -- workers --------------------------------------------------------------------------

_WORKER_TAGS = ["worker.joined", "worker.heartbeat", "worker.left", "worker.lost"]
_WORKER_STATES: list[WorkerState] = ["active", "left", "lost"]


def test_every_worker_transition_is_driven_by_a_real_event_type() -> None:
    for _, tag in WORKER_TRANSITIONS:
        assert tag in EVENT_TYPES, tag


@pytest.mark.parametrize(
    ("state", "tag", "expected"),
    [
        ("active", "worker.heartbeat", "active"),
        ("active", "worker.left", "left"),
        ("active", "worker.lost", "lost"),
        ("lost", "worker.heartbeat", None),  # the driver stopped counting on it
        ("left", "worker.lost", None),
        ("lost", "worker.left", None),
        ("lost", "worker.joined", "active"),  # a restart with the same id
        ("left", "worker.joined", "active"),
    ],
)
def test_worker_transitions(state: WorkerState, tag: str, expected: WorkerState | None) -> None:
    assert next_worker_state(state, tag) == expected


@given(st.sampled_from(_WORKER_STATES), st.lists(st.sampled_from(_WORKER_TAGS), max_size=30))
def test_a_worker_is_active_after_every_join_and_gone_only_from_active(
    start: WorkerState, tags: list[str]
) -> None:
    state = start
    for tag in tags:
        target = next_worker_state(state, tag)
        if tag == "worker.joined":
            assert target == "active"
        if target in ("left", "lost"):
            assert state == "active"
        if target is None:
            assert state != "active"  # every worker event fits an active worker
        state = target or state
