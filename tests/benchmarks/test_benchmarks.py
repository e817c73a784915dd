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

from tests.hosts.netns import require_netns

pytestmark = pytest.mark.nats  # each script starts its own nats-server

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# A --quick run takes seconds on a quiet machine; beside the rest of the suite on a loaded
# 2-core machine one was seen to take 115 s.
QUICK_RUN_WITHIN_S = 600


def run_quick(name: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run ``bench_<name>.py --quick``; returns the JSON report it wrote."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    env["BENCH_RESULTS_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"bench_{name}.py"), "--quick", *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=QUICK_RUN_WITHIN_S,
        check=False,
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
    free, declared, live, restart = report["collisions"]
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
    assert free["preempted"] == declared["preempted"] == live["preempted"] == 0
    # restart_later: the later attempt of a predicted pair is stopped and re-run on top
    # of the other's merge, so that pair does not conflict; a pair whose later attempt
    # finished before its preemption landed merges through a resolution as with let_both.
    assert restart["prediction"] == "restart_later"
    assert 1 <= restart["preempted"] <= restart["predicted"] <= report["pairs"]
    assert restart["conflicts"] + restart["preempted"] <= report["pairs"]
    assert restart["resolution_attempts"] == restart["conflicts"]
    assert restart["came_true"] == restart["conflicts"]
    assert restart["wasted_task_s"] > 0  # the stopped attempts' work, up to the stop
    assert restart["merged"] == 2 * report["pairs"]


def test_confinement_compares_every_variant_side_by_side(tmp_path: Path, sandbox: object) -> None:
    results = run_quick("confinement", tmp_path)["results"]
    variants = {(row["attempt"], row["variant"]) for row in results}
    assert variants == {
        (kind, name)
        for kind in ("shell", "agent")
        for name in ("reaper only", "cgroup", "bwrap + cgroup")
    }
    assert all(row["median_ms"] > 0 for row in results)
    baselines = [row for row in results if row["variant"] == "reaper only"]
    assert all(row["ratio"] == 1.0 for row in baselines)


def test_fuzz_counts_what_every_reader_refused_and_nothing_escaped(tmp_path: Path) -> None:
    report = run_quick("fuzz", tmp_path)
    assert report["messages"] >= 10_000
    assert 0 < report["rejected"] < report["messages"]
    assert report["core_defects"] == 0
    assert report["messages_per_s"] > 0


def test_log_growth_measures_each_size_side_by_side_and_an_idle_pool(tmp_path: Path) -> None:
    report = run_quick("log_growth", tmp_path)
    rows = report["results"]
    assert [row["events"] for row in rows] == report["sizes"] == [0, 2000]
    for row in rows:
        assert row["status_run_p50_ms"] > 0
        assert row["status_all_p50_ms"] > 0
        assert row["help_p50_ms"] > 0
        assert row["status_run_rss_mb"] > 0
        assert row["status_run_nocache_p50_ms"] > 0
        assert row["status_every_rss_mb"] > 0
    assert rows[0]["status_run_over_empty"] == 1.0
    floor = report["import_floor"]
    assert 0 < floor["interpreter_p50_ms"] < floor["p50_ms"]  # the imports cost something
    # The restart with a log behind it is from the snapshot the full replay wrote.
    assert rows[1]["driver_snapshot_mb"] > 0
    assert rows[1]["driver_tail_events"] == 1000
    assert rows[1]["driver_restart_no_snapshot_s"] > 0
    idle = report["idle_cluster"]
    assert idle["events_at_join"] == idle["workers"]  # one worker.joined each
    assert idle["events_during_window"] == 0  # liveness goes to the registry, not the log
    assert idle["registry_entries"] >= idle["workers"]


def test_repo_size_compares_the_cluster_with_plain_git_on_a_generated_repository(
    tmp_path: Path,
) -> None:
    report = run_quick("repo_size", tmp_path)
    assert report["workers"] == 4
    [row] = report["results"]
    assert row["size"] == "2MB"
    assert row["pack_mb"] > 1.5  # random blobs: the pack did not compress away
    assert row["history_moved_mb"] >= row["pack_mb"] * 0.5  # the history crossed once...
    assert row["history_moved_mb"] < row["pack_mb"] * 2  # ...not once per task or worker
    for tasks in report["task_counts"]:
        assert row[f"prepare_p50_s_{tasks}"] > 0
        assert row[f"naive_runner_{tasks}_s"] > 0
        assert row["ratios"][f"wall_over_naive_{tasks}"] > 0
    assert row["clone_mirror_no_local_s"] > 0
    assert row["rss_peak_mb_first_run"] > 0
    overhead = row["overhead"]
    assert overhead["tasks_per_s"] > 0
    assert overhead["process_starts_per_task"] >= 3  # reset, the command, the status at least
    assert set(overhead["latency_stage_p50_ms"]) == {
        "to TaskAssigned", "to TaskStarted", "to TaskSucceeded", "to TaskMerged",
    }  # fmt: skip


@pytest.mark.hosts
def test_multi_host_runs_both_layouts_and_a_driver_failover_on_namespace_hosts(
    tmp_path: Path,
) -> None:
    require_netns()
    report = run_quick("multi_host", tmp_path)
    assert report["workers"] == 2
    layouts = sorted(row["layout"] for row in report["rounds"])
    assert layouts == ["one host", "two hosts"]
    assert all(row["tasks_succeeded"] == report["tasks"] for row in report["rounds"])
    assert report["wall_ratio"] == pytest.approx(
        report["wall_median_s"]["two hosts"] / report["wall_median_s"]["one host"], rel=0.01
    )
    [failover] = report["failover_s"]
    assert failover > 0
    assert report["chaos"] is None  # the quick size leaves the chaos run to tests/hosts/
