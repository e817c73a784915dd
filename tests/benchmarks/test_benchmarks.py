"""Each benchmark script runs in its --quick mode and writes a report of the right shape.

The scripts live outside the package (benchmarks/), so nothing else imports them: these
runs keep them from rotting. They assert what the figures mean (counts, orderings, sane
ranges), never how fast anything was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.nats  # each script starts its own nats-server

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_quick(name: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run ``bench_<name>.py --quick``; returns the JSON report it wrote."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    env["BENCH_RESULTS_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"bench_{name}.py"), "--quick", *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report: dict[str, Any] = json.loads((tmp_path / f"{name}.quick.json").read_text())
    assert report["benchmark"] == name
    assert report["quick"] is True
    assert report["machine"]["cpus"] >= 1
    assert len(report["machine"]["loadavg_1_5_15"]) == 3
    return report


def test_speedup_compares_worker_counts_and_the_naive_runner(tmp_path: Path) -> None:
    report = run_quick("speedup", tmp_path)
    rows = {row["workers"]: row for row in report["results"]}
    assert sorted(rows) == [1, 2]
    assert report["tasks"] == 3
    assert report["critical_path_tasks"] == 2
    assert rows[1]["speedup"] == 1.0
    assert rows[1]["critical_path_bound_speedup"] == 1.0
    assert rows[2]["critical_path_bound_speedup"] == 1.5
    assert rows[2]["efficiency"] == pytest.approx(rows[2]["speedup"] / 2, abs=0.01)
    assert rows[2]["naive_wall_s"] > 0
    assert rows[2]["ours_over_naive"] == pytest.approx(
        rows[2]["wall_s"] / rows[2]["naive_wall_s"], rel=0.02
    )
    assert all(row["task_time_s"] > 0 for row in rows.values())


def test_overhead_measures_the_whole_path_and_the_bare_round_trip(tmp_path: Path) -> None:
    results = run_quick("overhead", tmp_path)["results"]
    assert results["tasks_per_s"] > 0
    assert results["latency_tasks"] == 5
    assert 0 < results["added_latency_p50_ms"] <= results["added_latency_p99_ms"]
    assert results["bare_round_trips"] == 100
    assert 0 < results["bare_publish_ack_p50_ms"] <= results["bare_publish_ack_p99_ms"]


def test_latency_reports_submission_and_status_updates(tmp_path: Path) -> None:
    report = run_quick("latency", tmp_path)
    results = report["results"]
    assert results["submission_ack"]["count"] == 5
    assert results["submission_recorded_by_driver"]["count"] == 5
    assert results["status_update_projection"]["count"] == 20
    assert results["status_update_cli_status"]["count"] == 4
    for summary in results.values():
        assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    # the driver answered every submission before the next: it was recorded after the ack
    assert results["submission_recorded_by_driver"]["p50_ms"] >= results["submission_ack"]["p50_ms"]
    assert report["log_events_at_end"] > 20


def test_replay_rebuilds_the_same_view_from_jetstream_and_memory(tmp_path: Path) -> None:
    report = run_quick("replay", tmp_path)
    results = report["results"]
    assert report["events"] == 20_000
    assert results["jetstream_events_per_s"] > 0
    assert results["in_memory_events_per_s"] > 0
    # 3 joins, then 60 events per copy of the sample run
    assert results["view_runs"] == -(-(20_000 - 3) // 60)
    assert results["view_tasks"] == 6 * results["view_runs"]


def test_footprint_measures_real_processes(tmp_path: Path) -> None:
    results = run_quick("footprint", tmp_path)["results"]
    assert results["driver_run_completed"] is True
    assert results["driver_run_tasks_merged_in_window"] == results["driver_run_tasks"] == 20
    for key in ("idle_worker_mb", "driver_idle_mb", "claude_process_peak_mb"):
        assert 10 < results[key] < 4096, key
    assert results["driver_peak_mb"] >= results["driver_idle_mb"]


def test_merge_queue_compares_verify_each_with_batches_and_counts_collisions(
    tmp_path: Path,
) -> None:
    report = run_quick("merge_queue", tmp_path)
    each, batched = report["verify"]
    assert (each["queue"], batched["queue"]) == ("each_in_turn", "batched")
    for row in (each, batched):
        # The bad task is found and rejected; every other task merged.
        assert row["rejected"] == [report["bad_task"]]
        assert row["merged"] == report["tasks"] - 1
    assert each["verify_runs"] == report["tasks"]  # one per result, in turn
    assert batched["verify_runs"] < each["verify_runs"]
    assert batched["wall_over_each_in_turn"] == pytest.approx(
        batched["wall_s"] / each["wall_s"], rel=0.02
    )
    free, declared, live = report["collisions"]
    # A pair collides at merge when its two tasks ran at once (nearly always: they start
    # together and work for a second), and each collision took one resolution attempt.
    assert 1 <= free["conflicts"] <= report["pairs"]
    assert free["resolution_attempts"] == free["conflicts"]
    assert free["wasted_task_s"] > 0
    assert (declared["conflicts"], declared["wasted_task_s"]) == (0, 0)
    assert free["merged"] == declared["merged"] == 2 * report["pairs"]
    # Live prediction: workers reported the file while both ran, so every pair that
    # conflicted at merge was predicted first, and the settlements say so.
    assert live["prediction"] == "live_prediction"
    assert 1 <= live["conflicts"] <= live["predicted"] <= report["pairs"]
    assert live["came_true"] == live["conflicts"]
    assert free["predicted"] == declared["predicted"] == 0
    assert live["merged"] == 2 * report["pairs"]
