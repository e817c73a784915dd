"""Driver snapshots: at any cut, a snapshot plus the tail is the full replay; a snapshot of
another version, code or configuration is ignored and the state rebuilt, never trusted."""

from __future__ import annotations

import random
from datetime import timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claudecluster.actors import driver_snapshots as snapshots_module
from claudecluster.actors.driver import DriverConfig, DriverState, decide
from claudecluster.actors.driver_snapshots import (
    decode_driver_snapshot,
    driver_state_version,
    encode_driver_snapshot,
)
from claudecluster.events import RunPolicy
from claudecluster.events.envelope import StoredEvent
from claudecluster.projections.cluster import replay
from claudecluster.simulation.graphs import random_graph
from claudecluster.simulation.shells import ShellCluster, SimulatedRun
from tests.strategies import stored_logs

CODE = "code-digest"
CONFIG = DriverConfig(max_running=4, lost_after_s=15)


def recover(events: list[StoredEvent], state: DriverState | None = None) -> DriverState:
    """Feed ``events`` as a restarted driver does: decisions discarded, nothing in flight.

    Each event is decided at the time it was recorded (the shell uses its clock; any fixed
    clock makes the two sides of the comparison alike).
    """
    state = state or DriverState(config=CONFIG)
    for stored in events:
        decide(state, stored, stored.envelope.occurred_at + timedelta(seconds=1))
        state.pending.clear()
        state.starting.clear()
    return state


def snapshot_then_tail(events: list[StoredEvent], cut: int) -> DriverState:
    head, tail = events[:cut], events[cut:]
    state = recover(head)
    last_id = head[-1].envelope.id if head else ""
    restored, why = decode_driver_snapshot(
        encode_driver_snapshot(state, last_id, code=CODE), config=CONFIG, code=CODE
    )
    assert restored is not None, why
    assert (restored.seq, restored.last_id) == (state.view.last_seq, last_id)
    assert restored.state == state
    return recover(tail, restored.state)


def simulated_log(
    seed: int, runs: int, size: int, failures: float, deaths: float
) -> list[StoredEvent]:
    """A history the real driver and workers wrote: runs of random graphs, one after
    another, with failures, conflicts, retries and lost workers, on the simulated cluster."""
    cluster = ShellCluster(
        seed=seed, workers=3, config=CONFIG, failure_chance=failures,
        conflict_chance=failures, death_chance=deaths,
        settle_s=120,  # what follows the last run's end is history too
    )  # fmt: skip
    rng = random.Random(seed)
    submitted = []
    for n in range(runs):
        policy = RunPolicy(
            on_task_failure=rng.choice(["skip_dependents", "fail_run"]),
            backoff_base_s=1,
            rollback_on_failure=rng.random() < 0.3,
        )
        submitted.append(SimulatedRun(f"r{n}", random_graph(rng, size), policy))
    cluster.run_all(submitted, one_after_another=True)
    return list(cluster.history)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    runs=st.integers(1, 3),
    size=st.integers(1, 12),
    failures=st.sampled_from([0.0, 0.2]),
    deaths=st.sampled_from([0.0, 0.05]),
    cut=st.floats(0.0, 1.0),
)
def test_a_snapshot_at_any_cut_of_a_real_history_plus_the_tail_equals_a_full_replay(
    seed: int, runs: int, size: int, failures: float, deaths: float, cut: float
) -> None:
    events = simulated_log(seed, runs, size, failures, deaths)
    at = round(cut * len(events))
    assert snapshot_then_tail(events, at) == recover(events)


@settings(max_examples=100, deadline=None)
@given(stored_logs(), st.integers(min_value=0, max_value=40))
def test_a_snapshot_at_any_cut_of_a_random_log_plus_the_tail_equals_a_full_replay(
    events: list[StoredEvent], cut: int
) -> None:
    assert snapshot_then_tail(events, min(cut, len(events))) == recover(events)


def test_a_snapshot_holds_every_run_book_with_its_graph_finished_ones_encoded() -> None:
    events = simulated_log(3, 2, 8, 0.2, 0.0)
    state = recover(events)
    restored, _ = decode_driver_snapshot(
        encode_driver_snapshot(state, events[-1].envelope.id, code=CODE), config=CONFIG, code=CODE
    )
    assert restored is not None
    # Both runs ended: their books are no longer live objects, but still answered.
    assert restored.state.runs == {}
    assert set(restored.state.finished) == {"r0", "r1"}
    book, before = restored.state.book("r0"), state.book("r0")
    assert book is not None
    assert before is not None
    assert book.ended
    assert book.graph is not None
    assert book.graph == before.graph
    assert book.merged == before.merged


def test_a_run_leaves_the_live_books_when_it_ends_and_an_open_one_stays() -> None:
    events = simulated_log(5, 2, 4, 0.0, 0.0)
    second = next(
        n for n, e in enumerate(events) if getattr(e.envelope.payload, "run_id", "") == "r1"
    )
    state = recover(events[: second + 1])
    assert set(state.runs) == {"r1"}
    assert set(state.finished) == {"r0"}
    assert state.book("nope") is None


def _record_with(events: list[StoredEvent], **changes: object) -> bytes:
    state = recover(events)
    record = msgspec.msgpack.decode(encode_driver_snapshot(state, "e", code=CODE))
    record.update(changes)
    return msgspec.msgpack.encode(record)


def test_a_snapshot_of_another_version_is_ignored_saying_why() -> None:
    data = _record_with(simulated_log(1, 1, 4, 0.0, 0.0), version="driver-0-0000000000000000")
    restored, why = decode_driver_snapshot(data, config=CONFIG, code=CODE)
    assert restored is None
    assert f"this code reads {driver_state_version(CODE)}" in why


def test_a_snapshot_written_by_other_decision_code_is_ignored() -> None:
    data = encode_driver_snapshot(recover(simulated_log(1, 1, 4, 0.0, 0.0)), "e", code=CODE)
    restored, why = decode_driver_snapshot(data, config=CONFIG, code="another-digest")
    assert restored is None
    assert "this code reads" in why


def test_a_snapshot_decided_under_another_configuration_is_ignored() -> None:
    data = encode_driver_snapshot(recover(simulated_log(1, 1, 4, 0.0, 0.0)), "e", code=CODE)
    other = DriverConfig(max_running=5, lost_after_s=15)
    restored, why = decode_driver_snapshot(data, config=other, code=CODE)
    assert restored is None
    assert "decided under" in why


def test_a_snapshot_whose_sequence_disagrees_with_its_view_is_ignored() -> None:
    data = _record_with(simulated_log(1, 1, 4, 0.0, 0.0), seq=1)
    restored, why = decode_driver_snapshot(data, config=CONFIG, code=CODE)
    assert restored is None
    assert "covers 1" in why


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00garbage", msgspec.msgpack.encode({"version": 1})],
)
def test_bytes_that_are_not_a_snapshot_are_a_reason_to_rebuild_not_an_error(data: bytes) -> None:
    restored, why = decode_driver_snapshot(data, config=CONFIG, code=CODE)
    assert restored is None
    assert why


def test_a_state_whose_fields_do_not_decode_is_a_reason_to_rebuild() -> None:
    data = _record_with(simulated_log(1, 1, 4, 0.0, 0.0), state=b"\x91\x01")
    restored, why = decode_driver_snapshot(data, config=CONFIG, code=CODE)
    assert restored is None
    assert "does not decode" in why


def test_the_version_changes_with_the_state_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    before = driver_state_version(CODE)
    driver_state_version.cache_clear()
    monkeypatch.setattr(snapshots_module, "_STATE_REVISION", snapshots_module._STATE_REVISION + 1)
    try:
        assert driver_state_version(CODE) != before
    finally:
        driver_state_version.cache_clear()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    runs=st.integers(1, 3),
    size=st.integers(1, 10),
    failures=st.sampled_from([0.0, 0.2]),
)
def test_finished_runs_leave_the_view_and_come_back_as_the_full_fold_has_them(
    seed: int, runs: int, size: int, failures: float
) -> None:
    events = simulated_log(seed, runs, size, failures, 0.0)
    state = recover(events)
    full = replay(events)
    assert set(state.finished) == set(full.runs)
    # The live view holds no finished run, and every finished run's entries come back
    # exactly as a fold of the whole log has them.
    assert not state.view.runs
    assert not state.view.tasks
    assert not state.view.costs
    assert state.view.workers == full.workers
    for run_id in full.runs:
        view = state.view_of(run_id)
        assert view.runs[run_id] == full.runs[run_id]
        assert view.tasks_of(run_id) == full.tasks_of(run_id)
        assert view.costs.get(run_id) == full.costs.get(run_id)
