"""Autoscaling decisions for the embedded default's local pool."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from claudecluster.actors.scaling import ScalePolicy, decide_scale
from claudecluster.events import (
    RunPlanned,
    RunSubmitted,
    TaskAssigned,
    TaskQueued,
    TaskSpec,
    WorkerHeartbeat,
    WorkerJoined,
    wrap_event,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Event
from claudecluster.events.subjects import event_subject
from claudecluster.projections import replay
from claudecluster.projections.cluster import ClusterView

T0 = datetime(2026, 3, 1, tzinfo=UTC)
POLICY = ScalePolicy(min_workers=1, max_workers=4, idle_after_s=30, settle_s=2)


def _view(*events: Event) -> ClusterView:
    return replay(
        StoredEvent(seq=i, subject=event_subject(e),
                    envelope=wrap_event(e, event_id=f"e{i}", now=T0))
        for i, e in enumerate(events, 1)
    )  # fmt: skip


def _queued(n: int, busy_workers: int = 1) -> ClusterView:
    tasks = tuple(TaskSpec(task_id=f"t{i}", title="t", prompt="p") for i in range(n))
    events: list[Event] = [
        RunSubmitted(run_id="r", goal="g", repo="/r"),
        RunPlanned(run_id="r", tasks=tasks, base_commit="b", integration_branch="cc/r"),
        *(TaskQueued(run_id="r", task_id=f"t{i}") for i in range(n)),
    ]
    for w in range(busy_workers):
        events += [WorkerJoined(worker_id=f"w{w}"),
                   WorkerHeartbeat(worker_id=f"w{w}", slots_free=0)]  # fmt: skip
    return _view(*events)


def test_waiting_tasks_with_no_free_slot_start_workers_up_to_the_maximum() -> None:
    decision = decide_scale(_queued(6), "default", {"w0": None}, POLICY, T0, None)
    assert decision is not None
    assert decision.start == 3  # 6 waiting, but at most 4 workers
    assert decision.reason == "6 task(s) waiting for a worker and 0 free slot(s)"


def test_a_free_slot_is_counted_before_starting_anyone() -> None:
    view = _view(WorkerJoined(worker_id="w0", slots=2))
    assert decide_scale(view, "default", {"w0": T0}, POLICY, T0, None) is None


def test_a_slot_holding_an_attempt_is_not_free_without_any_heartbeat_in_the_log() -> None:
    # Liveness is not in the log: what a worker holds is (task.assigned), and that counts.
    tasks = tuple(TaskSpec(task_id=f"t{i}", title="t", prompt="p") for i in range(3))
    view = _view(
        RunSubmitted(run_id="r", goal="g", repo="/r"),
        RunPlanned(run_id="r", tasks=tasks, base_commit="b", integration_branch="cc/r"),
        WorkerJoined(worker_id="w0", slots=2),
        *(TaskQueued(run_id="r", task_id=f"t{i}") for i in range(3)),
        TaskAssigned(run_id="r", task_id="t0", attempt=1, worker_id="w0"),
    )
    decision = decide_scale(view, "default", {"w0": None}, POLICY, T0, None)
    assert decision is not None
    assert decision.reason == "2 task(s) waiting for a worker and 1 free slot(s)"
    assert decision.start == 1


def test_nothing_changes_while_the_last_change_settles() -> None:
    recent = T0 - timedelta(seconds=1)
    assert decide_scale(_queued(6), "default", {"w0": None}, POLICY, T0, recent) is None


def test_idle_workers_beyond_the_minimum_are_stopped_when_nothing_waits() -> None:
    mine = {"a": T0 - timedelta(seconds=40), "b": T0 - timedelta(seconds=31), "c": None}
    decision = decide_scale(ClusterView(), "default", mine, POLICY, T0, None)
    assert decision is not None
    assert decision.stop == ("a", "b")
    assert "idle for 30s" in decision.reason
    # Not yet idle long enough: nothing to do.
    fresh = {"a": T0 - timedelta(seconds=5), "b": None}
    assert decide_scale(ClusterView(), "default", fresh, POLICY, T0, None) is None


def test_the_minimum_is_kept() -> None:
    decision = decide_scale(ClusterView(), "default", {}, ScalePolicy(min_workers=2), T0, None)
    assert decision is not None
    assert (decision.start, decision.reason) == (2, "keeping the minimum of 2 worker(s)")
    one = {"a": T0 - timedelta(hours=1)}
    assert decide_scale(ClusterView(), "default", one, POLICY, T0, None) is None


def test_tasks_queued_for_another_pool_do_not_count() -> None:
    assert decide_scale(_queued(6), "gpu", {"w0": None}, POLICY, T0, None) is None
