"""Behaviour of each projection on histories that fit, and on ones that do not."""

from __future__ import annotations

from datetime import timedelta

import pytest

from claudecluster.domain import RunState, TaskState
from claudecluster.errors import AmbiguousTaskError, UnknownEntityError
from claudecluster.events import (
    RunCancelled,
    RunCompleted,
    RunPlanned,
    RunSubmitted,
    TaskFailed,
    TaskProgress,
    TaskQueued,
    TaskRetryScheduled,
    TaskSpec,
    TaskStarted,
    TokenUsage,
    WorkerHeartbeat,
    WorkerJoined,
    WorkerLeft,
    WorkerLost,
)
from claudecluster.events.liveness import WorkerLiveness
from claudecluster.projections import ClusterView, replay
from claudecluster.projections.cluster import RECENT_ANOMALIES, find_task
from claudecluster.projections.tasks import PROGRESS_PREVIEW_CHARS
from claudecluster.projections.workers import with_liveness
from tests.fixtures.sample_runs import LogBuilder


def _planned(*task_ids: str) -> LogBuilder:
    log = LogBuilder()
    log.emit(RunSubmitted(run_id="r1", goal="goal", repo="/repo", budget_usd=2.0))
    specs = tuple(TaskSpec(task_id=t, title=t.upper(), prompt="p") for t in task_ids)
    log.emit(RunPlanned(run_id="r1", tasks=specs, base_commit="b0", integration_branch="cc/r1"))
    return log


def _view(log: LogBuilder) -> ClusterView:
    return replay(log.stored())


def test_a_planned_run_lists_its_tasks_pending_in_plan_order() -> None:
    view = _view(_planned("b", "a"))
    run = view.runs["r1"]
    assert (run.state, run.task_ids, run.head_commit) == (RunState.PLANNED, ("b", "a"), "b0")
    assert [t.task_id for t in view.tasks_of("r1")] == ["b", "a"]
    assert all(t.state is TaskState.PENDING for t in view.tasks_of("r1"))
    assert view.tasks_of("nope") == []


def test_the_first_queued_task_starts_the_run() -> None:
    log = _planned("a")
    log.emit(TaskQueued(run_id="r1", task_id="a"))
    assert _view(log).runs["r1"].state is RunState.RUNNING


def test_events_for_unknown_runs_and_tasks_are_anomalies_that_change_nothing() -> None:
    log = _planned("a")
    log.emit(TaskQueued(run_id="r1", task_id="ghost"))
    log.emit(RunCompleted(run_id="r9", head_commit="x", tasks_succeeded=0))
    log.emit(RunSubmitted(run_id="r1", goal="again", repo="/repo"))
    view = _view(log)
    reasons = [a.reason for a in view.recent_anomalies]
    assert reasons == [
        "task 'r1/ghost' is not in any recorded plan",
        "run 'r9' was never submitted",
        "run 'r1' was already submitted",
    ]
    assert view.runs["r1"].goal == "goal"
    assert "r9" not in view.runs


def test_a_run_cannot_complete_twice_or_be_planned_twice() -> None:
    log = _planned("a")
    log.emit(RunCancelled(run_id="r1", reason="user"))
    log.emit(RunCompleted(run_id="r1", head_commit="x", tasks_succeeded=1))
    specs = (TaskSpec(task_id="a", title="a", prompt="p"),)
    log.emit(RunPlanned(run_id="r1", tasks=specs, base_commit="b", integration_branch="x"))
    view = _view(log)
    assert view.runs["r1"].state is RunState.CANCELLED
    assert view.runs["r1"].reason == "user"
    assert view.anomaly_count == 2


def test_a_task_planned_twice_is_an_anomaly() -> None:
    log = _planned("a")
    log.emit(RunSubmitted(run_id="r2", goal="g", repo="/r"))
    specs = (
        TaskSpec(task_id="x", title="x", prompt="p"),
        TaskSpec(task_id="x", title="y", prompt="p"),
    )
    log.emit(RunPlanned(run_id="r2", tasks=specs, base_commit="b", integration_branch="i"))
    view = _view(log)
    assert "already planned" in view.recent_anomalies[-1].reason
    assert "r2/x" not in view.tasks


def test_progress_keeps_a_short_preview_and_counts_live_tokens() -> None:
    log = _planned("a")
    log.emit(TaskQueued(run_id="r1", task_id="a"))
    log.emit(TaskStarted(run_id="r1", task_id="a", attempt=1, worker_id="w1"))
    log.emit(TaskProgress(run_id="r1", task_id="a", attempt=1, kind="text", text="x" * 500))
    usage = TokenUsage(input_tokens=10, output_tokens=2)
    log.emit(TaskProgress(run_id="r1", task_id="a", attempt=1, kind="usage", usage=usage))
    task = _view(log).tasks["r1/a"]
    assert task.progress_events == 2
    assert task.last_progress == "x" * PROGRESS_PREVIEW_CHARS
    assert task.usage == usage


def test_a_new_attempt_clears_the_failure_but_keeps_the_cost() -> None:
    log = _planned("a")
    log.emit(TaskQueued(run_id="r1", task_id="a"))
    log.emit(TaskStarted(run_id="r1", task_id="a", attempt=1, worker_id="w1"))
    log.emit(TaskFailed(run_id="r1", task_id="a", attempt=1, reason="boom", cost_usd=0.5))
    failed = _view(log).tasks["r1/a"]
    assert (failed.state, failed.failure, failed.cost_usd) == (TaskState.FAILED, "boom", 0.5)
    log.emit(TaskQueued(run_id="r1", task_id="a", attempt=2))
    # A retry is always an explicit decision recorded first (its delay may be zero).
    assert "cannot take 'task.queued' while failed" in _view(log).recent_anomalies[-1].reason
    log.emit(TaskRetryScheduled(run_id="r1", task_id="a", next_attempt=2, delay_s=0))
    log.emit(TaskQueued(run_id="r1", task_id="a", attempt=2))
    task = _view(log).tasks["r1/a"]
    assert (task.state, task.attempt, task.failure, task.cost_usd) == (
        TaskState.QUEUED,
        2,
        None,
        0.5,
    )
    assert _view(log).costs["r1"].cost_usd == 0.5


def test_worker_lifecycle_and_its_anomalies() -> None:
    log = LogBuilder()
    log.emit(WorkerHeartbeat(worker_id="early", cpu_percent=5.0))  # joined before the log began
    log.emit(WorkerJoined(worker_id="w1", slots=4, pool="gpu"))
    log.emit(WorkerHeartbeat(worker_id="w1", running_tasks=("r1/a",), slots_free=3))
    log.emit(WorkerLost(worker_id="w1"))
    log.emit(WorkerHeartbeat(worker_id="w1"))
    log.emit(WorkerLeft(worker_id="w1"))
    log.emit(WorkerLeft(worker_id="never"))
    view = _view(log)
    assert view.workers["early"].cpu_percent == 5.0
    w1 = view.workers["w1"]
    assert (w1.state, w1.pool, w1.slots, w1.running_tasks) == ("lost", "gpu", 4, ())
    assert [a.reason for a in view.recent_anomalies] == [
        "heartbeat from worker 'w1' that is lost",
        "worker 'w1' is already lost",
        "worker 'never' never joined",
    ]
    log.emit(WorkerJoined(worker_id="w1"))
    assert _view(log).workers["w1"].state == "active"


def test_only_the_latest_anomalies_are_kept_but_all_are_counted() -> None:
    log = LogBuilder()
    for _ in range(RECENT_ANOMALIES + 5):
        log.emit(WorkerLeft(worker_id="ghost"))
    view = _view(log)
    assert view.anomaly_count == RECENT_ANOMALIES + 5
    assert len(view.recent_anomalies) == RECENT_ANOMALIES
    assert view.recent_anomalies[-1].seq == RECENT_ANOMALIES + 5


def test_an_event_that_does_not_fit_changes_no_projection_at_all() -> None:
    log = LogBuilder()
    # A plan for a run nobody submitted creates no tasks.
    specs = (TaskSpec(task_id="a", title="a", prompt="p"),)
    log.emit(RunPlanned(run_id="r0", tasks=specs, base_commit="b", integration_branch="i"))
    view = _view(log)
    assert len(view.tasks) == 0
    # A queued event with the wrong attempt does not start the run either.
    log = _planned("a")
    log.emit(TaskQueued(run_id="r1", task_id="a", attempt=3))
    view = _view(log)
    assert view.runs["r1"].state is RunState.PLANNED
    assert view.anomaly_count == 1
    # A result for a task nobody planned bills nothing.
    log.emit(TaskFailed(run_id="r9", task_id="x", attempt=1, reason="?", cost_usd=1.0))
    assert "r9" not in _view(log).costs


def test_live_registry_entries_overlay_active_workers_only_and_never_go_back_in_time() -> None:
    log = LogBuilder()
    log.emit(WorkerJoined(worker_id="w1", slots=2))
    log.emit(WorkerJoined(worker_id="w2"))
    log.emit(WorkerLost(worker_id="w2"))
    view = _view(log)
    joined_at = view.workers["w1"].last_seen_at
    assert joined_at is not None
    later = joined_at + timedelta(seconds=5)
    live = [
        WorkerLiveness(worker_id="w1", at=later, slots=2, slots_free=1,
                       running_tasks=("r1/a",), cpu_percent=40.0),
        WorkerLiveness(worker_id="w2", at=later),  # lost: an entry does not revive it
        WorkerLiveness(worker_id="w9", at=later),  # never joined: not made up
    ]  # fmt: skip
    workers = with_liveness(view.workers, live)
    w1 = workers["w1"]
    assert (w1.last_seen_at, w1.slots_free, w1.running_tasks, w1.cpu_percent) == (
        later, 1, ("r1/a",), 40.0,
    )  # fmt: skip
    assert workers["w2"] == view.workers["w2"]
    assert "w9" not in workers
    stale = [WorkerLiveness(worker_id="w1", at=joined_at - timedelta(seconds=1))]
    assert with_liveness(view.workers, stale)["w1"] == view.workers["w1"]


def test_later_queued_tasks_keep_a_running_run_running_and_a_submitted_one_is_unmoved() -> None:
    log = _planned("a", "b")
    log.emit(TaskQueued(run_id="r1", task_id="a"))
    log.emit(TaskQueued(run_id="r1", task_id="b"))
    view = _view(log)
    assert view.runs["r1"].state is RunState.RUNNING
    assert view.anomaly_count == 0
    early = LogBuilder()
    early.emit(RunSubmitted(run_id="r2", goal="goal", repo="/repo"))
    early.emit(TaskQueued(run_id="r2", task_id="a"))
    # Not the run's to report (the tasks projection names the unknown task), and unmoved.
    assert _view(early).runs["r2"].state is RunState.SUBMITTED


def test_a_task_id_two_runs_have_is_ambiguous_and_says_which_runs() -> None:
    log = _planned("a", "b")
    log.emit(RunSubmitted(run_id="r2", goal="goal", repo="/repo"))
    specs = (TaskSpec(task_id="a", title="A", prompt="p"),)
    log.emit(RunPlanned(run_id="r2", tasks=specs, base_commit="b0", integration_branch="cc/r2"))
    view = _view(log)
    assert find_task(view, "b").run_id == "r1"
    assert find_task(view, "r2/a").run_id == "r2"
    with pytest.raises(AmbiguousTaskError) as raised:
        find_task(view, "a")
    assert (raised.value.task_id, raised.value.run_ids) == ("a", ("r1", "r2"))
    assert "r1, r2" in str(raised.value)
    assert "RUN/TASK" in str(raised.value)
    with pytest.raises(UnknownEntityError):
        find_task(view, "c")
