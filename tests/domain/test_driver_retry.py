"""``claudecluster retry`` in the driver core: an ended run's unfinished tasks run again."""

from __future__ import annotations

from collections.abc import Sequence

from claudecluster.actors.driver import Dispatch, Merge, Record, Retry
from claudecluster.domain.lifecycle import RunState, TaskState
from claudecluster.events.model import (
    CommandRejected,
    RetryRun,
    RunCompleted,
    RunFailed,
    RunPolicy,
    TaskFailed,
    TaskMerged,
    TaskSkipped,
    TaskSucceeded,
)
from claudecluster.projections.views import task_key
from tests.domain.test_driver_core import Log, spec


def _failed_run() -> Log:
    """A run where b fails for good, c (after b) is skipped, a merged: completed."""
    log = Log()
    for effect in log.plan([spec("a"), spec("b", "a"), spec("c", "b")],
                           policy=RunPolicy(max_attempts=1)):  # fmt: skip
        log.settle(effect)
    log.run_task("a")
    log.event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1"))
    merge = log.take(Merge)
    log.event(TaskMerged(run_id="r", task_id="a", attempt=1, commit="m1",
                         integration_branch="claudecluster/r"))  # fmt: skip
    log.settle(merge)
    log.settle(log.take(Dispatch))
    log.run_task("b")
    for effect in log.event(TaskFailed(run_id="r", task_id="b", attempt=1, reason="no file",
                                       failure_class="agent_error")):  # fmt: skip
        if isinstance(effect, Record) and isinstance(effect.event, TaskSkipped):
            log.settle(effect)
    end = log.take(Record)
    assert isinstance(end.event, RunCompleted)
    log.settle(end)
    assert _run_state(log) is RunState.COMPLETED
    return log


def _rejection(effects: Sequence[object]) -> str:
    (refusal,) = effects
    assert isinstance(refusal, Record)
    assert isinstance(refusal.event, CommandRejected)
    assert refusal.event.command_type == "run.retry"
    return refusal.event.reason


def _run_state(log: Log) -> RunState:
    return log.state.view_of("r").runs["r"].state


def _state(log: Log, task_id: str) -> TaskState:
    return log.state.view_of("r").tasks[task_key("r", task_id)].state


def test_a_retried_run_queues_its_failed_task_from_the_new_head_then_its_skipped_dependent() -> (
    None
):
    log = _failed_run()
    assert "r" in log.state.finished  # the ended run's book was frozen
    (retry,) = log.command(RetryRun(run_id="r"), "rt")
    assert isinstance(retry, Retry)
    assert retry.event.task_ids == ("b", "c")  # a merged: not retried
    assert retry.causation_id == "rt"
    # The shell records it with the branch's head as it is now (a commit made by hand).
    moved = retry.event.__class__(run_id="r", task_ids=retry.event.task_ids, head_commit="hand")
    effects = log.event(moved)
    assert _run_state(log) is RunState.RUNNING
    assert (_state(log, "b"), _state(log, "c")) == (TaskState.PENDING, TaskState.PENDING)
    (start,) = [e for e in effects if isinstance(e, Dispatch)]
    assert (start.queued.task_id, start.queued.attempt) == ("b", 2)
    assert start.queued.base_commit == "hand"
    log.settle(start)
    log.run_task("b", attempt=2)
    log.event(TaskSucceeded(run_id="r", task_id="b", attempt=2, worker_id="w1"))
    merge = log.take(Merge)
    assert merge.head == "hand"
    log.event(TaskMerged(run_id="r", task_id="b", attempt=2, commit="m2",
                         integration_branch="claudecluster/r"))  # fmt: skip
    log.settle(merge)
    start = log.take(Dispatch)
    assert (start.queued.task_id, start.queued.attempt, start.queued.base_commit) == ("c", 1, "m2")
    log.settle(start)
    log.run_task("c")
    log.event(TaskSucceeded(run_id="r", task_id="c", attempt=1, worker_id="w1"))
    merge = log.take(Merge)
    log.event(TaskMerged(run_id="r", task_id="c", attempt=1, commit="m3",
                         integration_branch="claudecluster/r"))  # fmt: skip
    log.settle(merge)
    end = log.take(Record)
    assert isinstance(end.event, RunCompleted)
    assert (end.event.tasks_succeeded, end.event.tasks_failed, end.event.head_commit) == (
        3, 0, "m3"
    )  # fmt: skip
    # The second end is another event than the first: its id says which round it is.
    assert end.event_id == "completed-r-retry1"
    log.settle(end)
    assert _run_state(log) is RunState.COMPLETED


def test_a_retry_that_fails_again_ends_the_run_again() -> None:
    log = _failed_run()
    (retry,) = log.command(RetryRun(run_id="r", task_ids=("b",)), "rt")
    assert isinstance(retry, Retry)
    assert retry.event.task_ids == ("b",)
    log.settle(log.event(retry.event)[0])
    log.run_task("b", attempt=2)
    # max_attempts=1 was used up by the first round: the retry's attempt is the last.
    effects = log.event(TaskFailed(run_id="r", task_id="b", attempt=2, reason="still no file",
                                   failure_class="agent_error"))  # fmt: skip
    ends = [e for e in effects if isinstance(e, Record)]
    assert [type(e.event) for e in ends] == [RunCompleted]
    assert ends[0].event_id == "completed-r-retry1"
    assert _state(log, "c") is TaskState.SKIPPED  # still skipped from the first round


def test_a_fail_run_run_retried_in_part_fails_again_for_the_tasks_left_failed() -> None:
    log = Log()
    policy = RunPolicy(on_task_failure="fail_run", max_attempts=1)
    for effect in log.plan([spec("a"), spec("b")], policy=policy):
        log.settle(effect)
    for task in ("a", "b"):
        log.run_task(task, worker=f"w-{task}")
    log.event(TaskFailed(run_id="r", task_id="a", attempt=1, reason="x",
                         failure_class="agent_error"))  # fmt: skip
    ends = [e for e in log.event(TaskFailed(run_id="r", task_id="b", attempt=1, reason="y",
                                            failure_class="agent_error"))
            if isinstance(e, Record)]  # fmt: skip
    (first_end,) = [e for e in ends + log.tick() if isinstance(e, Record)]
    assert isinstance(first_end.event, RunFailed)
    log.settle(first_end)
    (retry,) = log.command(RetryRun(run_id="r", task_ids=("a",)), "rt")
    assert isinstance(retry, Retry)
    (start,) = [e for e in log.event(retry.event) if isinstance(e, Dispatch)]
    log.settle(start)
    log.run_task("a", attempt=2)
    log.event(TaskSucceeded(run_id="r", task_id="a", attempt=2, worker_id="w1"))
    merge = log.take(Merge)
    effects = log.event(TaskMerged(run_id="r", task_id="a", attempt=2, commit="m1",
                                   integration_branch="claudecluster/r"))  # fmt: skip
    effects += log.settle(merge)
    (end,) = [e for e in effects if isinstance(e, Record)]
    assert isinstance(end.event, RunFailed)
    assert end.event.failed_tasks == ("b",)
    assert end.event_id == "failed-r-retry1"


def test_a_retry_is_refused_for_an_open_run_an_unknown_run_and_unknown_or_merged_tasks() -> None:
    log = Log()
    for effect in log.plan([spec("a")]):
        log.settle(effect)
    assert "has not ended" in _rejection(log.command(RetryRun(run_id="r"), "c1"))
    assert "no run 'nope'" in _rejection(log.command(RetryRun(run_id="nope"), "c2"))
    log = _failed_run()
    reason = _rejection(log.command(RetryRun(run_id="r", task_ids=("b", "x", "y")), "c3"))
    assert "no task 'x', 'y'" in reason
    reason = _rejection(log.command(RetryRun(run_id="r", task_ids=("a",)), "c4"))
    assert "'a' merged already" in reason
    assert _run_state(log) is RunState.COMPLETED  # refusals change nothing
