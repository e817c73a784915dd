"""Properties of the projections: incremental application with snapshots and redeliveries
equals one full replay; the tasks projection follows the lifecycle table and fences attempts.
"""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from claudecluster.events.envelope import EventEnvelope, StoredEvent
from claudecluster.projections import ClusterView, apply, from_snapshot, replay, to_snapshot
from claudecluster.projections.costs import COSTS_READS, apply_costs
from claudecluster.projections.runs import RUNS_READS, apply_runs
from claudecluster.projections.tasks import TASKS_READS, apply_tasks
from claudecluster.projections.workers import WORKERS_READS, apply_workers
from tests.fixtures.sample_runs import conflict_and_rollback, failover, happy_path
from tests.strategies import Lifecycle, envelopes, lifecycle_logs, stored_logs


def _incrementally(events: list[StoredEvent], cuts: list[int], redeliver: list[int]) -> ClusterView:
    """Apply events as a live subscriber would: in chunks, snapshotting to JSON and back
    between chunks, and receiving some events again (at-least-once delivery)."""
    view = ClusterView()
    start = 0
    for cut in sorted({min(c, len(events)) for c in cuts} | {len(events)}):
        for stored in events[start:cut]:
            view = apply(view, stored)
        for index in redeliver:
            if index < cut:
                view = apply(view, events[index])
        encoded = msgspec.json.encode(to_snapshot(view))
        view = from_snapshot(msgspec.json.decode(encoded))
        start = cut
    return view


@settings(max_examples=150, deadline=None)
@given(
    stored_logs(),
    st.lists(st.integers(0, 60), max_size=4),
    st.lists(st.integers(0, 59), max_size=8),
)
def test_incremental_projection_with_snapshots_and_duplicates_equals_full_replay(
    events: list[StoredEvent], cuts: list[int], redeliver: list[int]
) -> None:
    assert _incrementally(events, cuts, redeliver) == replay(events)


@settings(max_examples=150, deadline=None)
@given(
    lifecycle_logs(),
    st.lists(st.integers(0, 90), max_size=4),
    st.lists(st.integers(0, 89), max_size=8),
)
def test_plausible_histories_project_the_same_incrementally_and_in_full(
    log: tuple[list[StoredEvent], Lifecycle], cuts: list[int], redeliver: list[int]
) -> None:
    events, _ = log
    assert _incrementally(events, cuts, redeliver) == replay(events)


@settings(max_examples=200, deadline=None)
@given(lifecycle_logs())
def test_tasks_follow_the_lifecycle_table_and_only_the_live_attempt_moves_them(
    log: tuple[list[StoredEvent], Lifecycle],
) -> None:
    events, model = log
    view = replay(events)
    for task_id, state in model.states.items():
        task = view.tasks[f"r1/{task_id}"]
        assert task.state is state
        assert task.attempt == model.attempts[task_id]
    # Each late report of a superseded attempt is an anomaly; nothing else is.
    assert view.anomaly_count == model.stale


@given(stored_logs())
def test_a_snapshot_restores_an_equal_view(events: list[StoredEvent]) -> None:
    view = replay(events)
    assert from_snapshot(msgspec.json.decode(msgspec.json.encode(to_snapshot(view)))) == view


@given(stored_logs())
def test_replaying_the_log_twice_changes_nothing_the_second_time(
    events: list[StoredEvent],
) -> None:
    once = replay(events)
    assert replay(events, once) == once
    assert once.last_seq == (events[-1].seq if events else 0)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(stored_logs(), lifecycle_logs().map(lambda log: log[0])),
    envelopes(st.sampled_from(["r1", "r2", "t0", "t1", "a", "w0", "w1"])),
)
def test_each_projection_leaves_every_event_type_it_does_not_read_alone(
    events: list[StoredEvent], envelope: EventEnvelope
) -> None:
    # The cluster fold calls a projection only for the types in its READS set, so this
    # is what makes that the same fold as calling every projection for every event.
    _assert_unread_types_change_nothing(replay(events), envelope)


def test_no_event_of_the_sample_runs_changes_a_projection_that_does_not_read_its_type() -> None:
    # Every event of the recorded runs against every state those runs pass through: the
    # states where an event matters (a running run, a live attempt) are all here.
    logs = [happy_path().stored(), failover().stored(), conflict_and_rollback().stored()]
    envelopes = [stored.envelope for log in logs for stored in log]
    for log in logs:
        view = ClusterView()
        for stored in log:
            view = apply(view, stored)
            for envelope in envelopes:
                _assert_unread_types_change_nothing(view, envelope)


def _assert_unread_types_change_nothing(view: ClusterView, envelope: EventEnvelope) -> None:
    kind = type(envelope.payload)
    if kind not in RUNS_READS:
        assert apply_runs(view.runs, envelope) == (view.runs, None)
    if kind not in TASKS_READS:
        assert apply_tasks(view.tasks, envelope) == (view.tasks, None)
    if kind not in WORKERS_READS:
        assert apply_workers(view.workers, envelope) == (view.workers, None)
    if kind not in COSTS_READS:
        assert apply_costs(view.costs, envelope) == (view.costs, None)
