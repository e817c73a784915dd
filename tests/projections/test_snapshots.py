"""View snapshots: at any cut, a snapshot plus the tail is the full replay; a snapshot of
another version is ignored, never trusted."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claudecluster.events.envelope import StoredEvent
from claudecluster.projections import replay
from claudecluster.projections import snapshots as snapshots_module
from claudecluster.projections.cluster import to_snapshot
from claudecluster.projections.snapshots import (
    decode_view_snapshot,
    encode_view_snapshot,
    view_from_msgpack,
    view_to_msgpack,
    view_version,
)
from tests.strategies import Lifecycle, lifecycle_logs, stored_logs


def snapshot_then_tail(events: list[StoredEvent], cut: int) -> object:
    head, tail = events[:cut], events[cut:]
    view = replay(head)
    last_id = head[-1].envelope.id if head else ""
    restored, why = decode_view_snapshot(encode_view_snapshot(view, last_id))
    assert restored is not None, why
    assert restored.last_id == last_id
    return replay(tail, restored.view)


@settings(max_examples=200, deadline=None)
@given(stored_logs(), st.integers(min_value=0, max_value=40))
def test_a_snapshot_at_any_cut_plus_the_tail_equals_a_full_replay(
    events: list[StoredEvent], cut: int
) -> None:
    assert snapshot_then_tail(events, min(cut, len(events))) == replay(events)


@settings(max_examples=100, deadline=None)
@given(lifecycle_logs(), st.integers(min_value=0, max_value=90))
def test_plausible_histories_snapshot_at_any_cut_as_a_full_replay(
    log: tuple[list[StoredEvent], Lifecycle], cut: int
) -> None:
    events, _ = log
    assert snapshot_then_tail(events, min(cut, len(events))) == replay(events)


@settings(max_examples=100, deadline=None)
@given(lifecycle_logs())
def test_the_struct_encoding_reads_back_as_the_builtins_one_does(
    log: tuple[list[StoredEvent], Lifecycle],
) -> None:
    # Snapshots are encoded from the structs directly (fast); ones written from
    # to_snapshot's builtins (the same layout) still read to the same view.
    view = replay(log[0])
    assert view_from_msgpack(view_to_msgpack(view)) == view
    assert view_from_msgpack(msgspec.msgpack.encode(to_snapshot(view))) == view


@given(stored_logs())
def test_a_snapshot_of_another_version_is_ignored_saying_why(
    events: list[StoredEvent],
) -> None:
    data = encode_view_snapshot(replay(events), "e")
    record = msgspec.msgpack.decode(data)
    record["version"] = "view-0-0000000000000000"
    restored, why = decode_view_snapshot(msgspec.msgpack.encode(record))
    assert restored is None
    assert f"this code reads {view_version()}" in why


@pytest.mark.parametrize("data", [b"", b"\x00garbage", msgspec.msgpack.encode({"version": 1})])
def test_bytes_that_are_not_a_snapshot_are_a_reason_to_rebuild_not_an_error(data: bytes) -> None:
    restored, why = decode_view_snapshot(data)
    assert restored is None
    assert why


def test_the_version_changes_with_the_fold_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    before = view_version()
    view_version.cache_clear()
    monkeypatch.setattr(snapshots_module, "_FOLD_REVISION", 2)
    try:
        assert view_version() != before
    finally:
        view_version.cache_clear()
