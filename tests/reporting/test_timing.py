"""The summary's timing line names the parallelism as such and puts beside it an estimate
of the time one after another that contention does not inflate."""

from __future__ import annotations

from claudecluster.reporting.timing import timing_line


def test_the_issue_example_reads_as_parallelism_and_a_lower_speedup_bound() -> None:
    # 16 tasks of 2 turns at 3 s per model turn on 8 workers that slowed each other down:
    # 96 s of model time, 27 s of wall time, 186.6 s of task time (6.91x at once).
    line = timing_line(wall_time_s=27.0, task_time_s=186.6, parallelism=6.91, model_time_s=96.0)
    assert "parallelism 6.91x (186.6s of task time / wall time: tasks at once" in line
    assert "one after another: at least 96.0s" in line
    assert "speedup of at least 3.56x against one worker" in line
    assert "speedup 6.91" not in line


def test_without_model_time_it_says_there_is_no_estimate() -> None:
    line = timing_line(wall_time_s=2.0, task_time_s=4.0, parallelism=2.0, model_time_s=0.0)
    assert "parallelism 2.00x" in line
    assert "no model time measured" in line
    assert "speedup" not in line
