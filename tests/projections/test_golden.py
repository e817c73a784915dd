"""Golden replays: each recorded sample log projects to its reviewed snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claudecluster.events.codec import decode_stored_event
from claudecluster.projections import replay, to_snapshot
from tests.fixtures.record_samples import golden_snapshot, render_log
from tests.fixtures.sample_runs import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "events" / "samples").glob("*.jsonl"))


def test_every_scenario_has_a_recorded_log_and_a_golden_projection() -> None:
    names = {path.stem for path in SAMPLES}
    assert names == set(SCENARIOS)
    assert {p.stem for p in (ROOT / "projections" / "golden").glob("*.json")} == names


@pytest.mark.parametrize("log_path", SAMPLES, ids=lambda p: p.stem)
def test_replaying_a_recorded_log_gives_its_golden_projection(log_path: Path) -> None:
    events = [decode_stored_event(line) for line in log_path.read_text().splitlines()]
    golden = json.loads((ROOT / "projections" / "golden" / f"{log_path.stem}.json").read_text())
    assert json.loads(json.dumps(to_snapshot(replay(events)), default=str)) == golden


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_recorded_logs_are_what_the_scenarios_build(name: str) -> None:
    # A changed scenario must be re-recorded (make golden) and its golden diff reviewed.
    recorded = (ROOT / "events" / "samples" / f"{name}.jsonl").read_text()
    assert recorded == render_log(SCENARIOS[name]())
    golden = (ROOT / "projections" / "golden" / f"{name}.json").read_text()
    assert golden == golden_snapshot(recorded)


def test_the_failover_sample_fences_off_the_dead_workers_late_result() -> None:
    log = (ROOT / "events" / "samples" / "failover.jsonl").read_text().splitlines()
    view = replay(decode_stored_event(line) for line in log)
    index = view.tasks["sample-failover/index"]
    assert (index.state.value, index.attempt, index.worker_id) == ("merged", 2, "w2")
    assert view.anomaly_count == 1
    assert "live attempt is 2" in view.recent_anomalies[0].reason
    # The stale attempt still cost money: five attempts were billed.
    assert view.costs["sample-failover"].attempts_billed == 5
    assert view.tasks["sample-failover/report"].state.value == "skipped"
    assert view.workers["w1"].state == "lost"
    assert view.workers["w2"].state == "left"
    # The default policy skips what depends on the failed task; the run completes without it.
    assert view.runs["sample-failover"].state.value == "completed"


def test_the_legacy_log_replays_through_the_upcaster() -> None:
    log = (ROOT / "events" / "samples" / "legacy-v1-heartbeats.jsonl").read_text().splitlines()
    assert '"memory_mb"' in log[-1]
    view = replay(decode_stored_event(line) for line in log)
    assert view.workers["w-old"].memory_bytes == round(80.25 * 1024 * 1024)


def test_recording_the_samples_reproduces_the_committed_files(tmp_path: Path) -> None:
    from tests.fixtures.record_samples import main

    assert main(tmp_path) == 0
    for folder, pattern in (("events/samples", "*.jsonl"), ("projections/golden", "*.json")):
        for written in (tmp_path / folder).glob(pattern):
            assert written.read_text() == (ROOT / folder / written.name).read_text()
