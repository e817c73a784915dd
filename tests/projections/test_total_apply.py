"""The cluster view's fold is total: an event a projection fails on is an anomaly."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from claudecluster.events import RunSubmitted, wrap_event
from claudecluster.events.envelope import StoredEvent
from claudecluster.projections import cluster
from claudecluster.projections.cluster import ClusterView, apply


def test_an_event_a_projection_raises_on_is_counted_and_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: object) -> object:
        raise RuntimeError("a defect")

    monkeypatch.setattr(cluster, "apply_runs", broken)
    event = RunSubmitted(run_id="r", goal="g", repo="/repo")
    stored = StoredEvent(seq=7, subject="s",
                         envelope=wrap_event(event, event_id="e7",
                                             now=datetime(2026, 1, 1, tzinfo=UTC)))  # fmt: skip
    view = apply(ClusterView(), stored)
    assert view.last_seq == 7
    assert view.runs == ClusterView().runs
    assert view.anomaly_count == 1
    (anomaly,) = view.recent_anomalies
    assert anomaly.type == "run.submitted"
    assert "RuntimeError: a defect" in anomaly.reason
    assert apply(view, stored) is view  # applied once, like any other event
